"""Training health (paper §4.9): NaN/Inf losses, loss and grad-norm spikes, weights that blow up.

NaN is never hidden: a non-finite loss is counted and logged with a preview of the batch,
the optimizer step is skipped so the weights stay finite, and ``nan_limit`` (3) in a row
stop the run. Spikes are flagged against the mean of the last 20 values (loss above 1.5×,
grad norm above 2×). A step can wreck the weights with a finite loss (a huge learning rate):
the adapters' parameter norm is checked after every update, and a norm that is not finite
or ``param_norm_factor`` times the previous step's stops the run too. ``last_healthy_step``
is the last step after which the weights were sound: checkpoints after it are unhealthy.
Every anomaly is kept in a log.
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
    param_norm_factor: float = 2.0
    nan_count: int = 0
    nan_streak: int = 0
    anomalies: list = field(default_factory=list)
    last_norm: float | None = None
    last_healthy_step: int = 0
    diverged: str = ""

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
            emergency = self.nan_streak >= self.nan_limit
            if emergency:
                self.diverged = f"{self.nan_streak} non-finite losses in a row up to step {step}"
            return {"skip_step": True, "emergency": emergency, "events": events}
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

    def baseline(self, norm: float) -> None:
        """The adapters' norm before the first update of this run (kept on resume)."""
        if self.last_norm is None:
            self.last_norm = norm

    def check_params(self, step: int, norm: float) -> dict:
        """After an update: {"emergency": bool, "events": [...]} for the adapters' norm."""
        events = []
        if not math.isfinite(norm) or (self.last_norm and norm > self.param_norm_factor * self.last_norm):
            events.append({"step": step, "kind": "param_norm_jump", "norm": norm, "previous": self.last_norm})
            self.anomalies.extend(events)
            self.diverged = f"adapter norm {norm:.4g} after step {step} (previous {self.last_norm})"
            return {"emergency": True, "events": events}
        self.last_norm = norm
        if self.nan_streak == 0:
            self.last_healthy_step = step
        return {"emergency": False, "events": events}

    @property
    def anomaly_count(self) -> int:
        return len(self.anomalies)

    def state(self) -> dict:
        return {"losses": list(self.losses), "grads": list(self.grads), "nan_count": self.nan_count,
                "nan_streak": self.nan_streak, "anomalies": self.anomalies[-500:], "last_norm": self.last_norm,
                "last_healthy_step": self.last_healthy_step}

    def load_state(self, state: dict) -> None:
        self.losses = deque(state["losses"], maxlen=self.window)
        self.grads = deque(state["grads"], maxlen=self.window)
        self.nan_count = state["nan_count"]
        self.nan_streak = state["nan_streak"]
        self.anomalies = list(state["anomalies"])
        self.last_norm = state.get("last_norm")
        self.last_healthy_step = state.get("last_healthy_step", 0)
