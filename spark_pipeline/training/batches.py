"""The micro-batches of each training step, built one step ahead in a background thread.

Which packed rows a rank reads at a step is a pure function of ``rows_consumed`` (the rows all
ranks together have consumed before the step): micro-batch ``m`` of rank ``r`` takes rows
``rows_consumed + m * per_rank * world + r * per_rank + j`` (``j < per_rank``), modulo the
number of rows. Resuming at a checkpoint's ``rows_consumed`` therefore reads exactly the rows
the uninterrupted run would have read, and prefetching changes nothing but *when* they are
read: while the GPU runs step ``k``, the thread gathers step ``k + 1``'s rows from the
memory-mapped cache, stacks them and (on CUDA) pins them, so the step never waits on I/O.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch


class StepBatches:
    def __init__(self, data, per_rank: int, accumulation: int, world: int, rank: int, pin: bool = False):
        self.data = data
        self.per_rank = per_rank
        self.accumulation = accumulation
        self.world = world
        self.rank = rank
        self.pin = pin
        self.rows_per_step = per_rank * accumulation * world
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-prefetch")
        self._ahead: dict[int, Future] = {}

    def rows(self, rows_consumed: int, micro: int) -> list[int]:
        """The packed-row indices of one micro-batch of this rank."""
        base = rows_consumed + micro * self.per_rank * self.world + self.rank * self.per_rank
        return [(base + j) % len(self.data) for j in range(self.per_rank)]

    def build(self, rows_consumed: int) -> list[dict[str, torch.Tensor]]:
        """Every micro-batch of the step that starts after ``rows_consumed`` rows, on the CPU."""
        out = []
        for micro in range(self.accumulation):
            rows = [self.data[i] for i in self.rows(rows_consumed, micro)]
            batch = {k: torch.as_tensor(np.stack([r[k] for r in rows])) for k in rows[0]}
            out.append({k: v.pin_memory() for k, v in batch.items()} if self.pin else batch)
        return out

    def get(self, rows_consumed: int) -> list[dict[str, torch.Tensor]]:
        """The step's micro-batches (prefetched when the previous call asked for them), and the
        next step's start in the background."""
        ahead = self._ahead.pop(rows_consumed, None)
        batches = ahead.result() if ahead is not None else self.build(rows_consumed)
        for stale in self._ahead.values():
            stale.cancel()
        self._ahead = {rows_consumed + self.rows_per_step:
                       self._pool.submit(self.build, rows_consumed + self.rows_per_step)}
        return batches

    def close(self) -> None:
        for pending in self._ahead.values():
            pending.cancel()
        self._ahead = {}
        self._pool.shutdown(wait=True)
