"""Training health (paper §4.9): NaN/Inf losses, loss and grad-norm spikes, throughput.

NaN is never hidden: a non-finite loss is counted and logged with a preview of the batch,
the optimizer step is skipped so the weights stay finite, and three in a row ask for an
emergency checkpoint. Spikes are flagged against the mean of the last 20 values (loss above
1.5×, grad norm above 2×). Every anomaly is kept in a log.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class HealthMonitor:
    window: int = 20
    loss_spike: float = 1.5
    grad_spike: float = 2.0
    nan_limit: int = 3
    losses: deque = field(default_factory=deque)
    grads: deque = field(default_factory=deque)
    nan_count: int = 0
    nan_streak: int = 0
    anomalies: list = field(default_factory=list)

    def __post_init__(self):
        self.losses = deque(self.losses, maxlen=self.window)
        self.grads = deque(self.grads, maxlen=self.window)

    def check(self, step: int, loss: float, grad_norm: float, preview: str = "") -> dict:
        """Returns {"skip_step": bool, "emergency": bool, "events": [...]}."""
        events = []
        if not math.isfinite(loss) or not math.isfinite(grad_norm):
            self.nan_count += 1
            self.nan_streak += 1
            events.append({"step": step, "kind": "non_finite", "loss": loss, "grad_norm": grad_norm,
                           "batch_preview": preview[:200]})
            self.anomalies.extend(events)
            return {"skip_step": True, "emergency": self.nan_streak >= self.nan_limit, "events": events}
        self.nan_streak = 0
        if len(self.losses) >= self.window and loss > self.loss_spike * (sum(self.losses) / len(self.losses)):
            events.append({"step": step, "kind": "loss_spike", "loss": loss,
                           "mean": sum(self.losses) / len(self.losses)})
        if len(self.grads) >= self.window and grad_norm > self.grad_spike * (sum(self.grads) / len(self.grads)):
            events.append({"step": step, "kind": "grad_norm_spike", "grad_norm": grad_norm,
                           "mean": sum(self.grads) / len(self.grads)})
        self.losses.append(loss)
        self.grads.append(grad_norm)
        self.anomalies.extend(events)
        return {"skip_step": False, "emergency": False, "events": events}

    @property
    def anomaly_count(self) -> int:
        return len(self.anomalies)

    def state(self) -> dict:
        return {"losses": list(self.losses), "grads": list(self.grads), "nan_count": self.nan_count,
                "nan_streak": self.nan_streak, "anomalies": self.anomalies[-500:]}

    def load_state(self, state: dict) -> None:
        self.losses = deque(state["losses"], maxlen=self.window)
        self.grads = deque(state["grads"], maxlen=self.window)
        self.nan_count = state["nan_count"]
        self.nan_streak = state["nan_streak"]
        self.anomalies = list(state["anomalies"])
