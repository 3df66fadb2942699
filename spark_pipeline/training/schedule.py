"""The learning-rate schedule (paper §4.2): linear warm-up over ``warmup_ratio`` of the
horizon, then cosine decay to zero at the horizon, and zero after it.

Built from PyTorch's own schedulers (``LinearLR`` then ``CosineAnnealingLR``, then a
``ConstantLR`` at factor 0 for anything past the horizon, chained by ``SequentialLR``) rather
than a hand-written multiplier; ``CosineAnnealingLR`` alone would rise again past its
``T_max``. The multiplier at step ``s`` with ``w = round(horizon * warmup_ratio)`` warm-up
steps is ``(s + 1) / w`` during the warm-up and ``0.5 * (1 + cos(pi * (s - w) / (horizon - w)))``
after it; ``max_steps`` only stops the run, it never bends the curve (docs/training.md).
The schedulers are chainable: each step's rate is computed from the last, so a resumed run
continues from the rate the optimizer's state restores, bit for bit.
"""

from __future__ import annotations

from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

_FOREVER = 2**62  # ConstantLR's factor holds for this many steps: past any horizon


def warmup_steps(horizon: int, warmup_ratio: float) -> int:
    return max(1, int(round(horizon * warmup_ratio)))


def warmup_cosine(optimizer, horizon: int, warmup_ratio: float) -> LRScheduler:
    """Every parameter group follows the same multiplier of its own initial rate."""
    warmup = warmup_steps(horizon, warmup_ratio)
    return SequentialLR(optimizer, [
        LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=max(1, warmup - 1)),
        CosineAnnealingLR(optimizer, T_max=max(1, horizon - warmup), eta_min=0.0),
        ConstantLR(optimizer, factor=0.0, total_iters=_FOREVER),
    ], milestones=[warmup, max(warmup + 1, horizon)])


def schedule_horizon(settings, rows: int, rows_per_step: int) -> int:
    """Steps the cosine spans: one epoch of the packed rows (``schedule_horizon: epoch``, the
    default), or the number of steps given."""
    if settings.schedule_horizon == "epoch":
        return max(1, rows // max(1, rows_per_step))
    return int(settings.schedule_horizon)
