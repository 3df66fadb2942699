"""What a training run reports and where: ``metrics.jsonl`` in the run folder (rank 0, one line
per optimizer step, the run's own record whatever the loggers do), W&B (offline unless a key is
configured; training never dies for its logger) and Dagster Pipes messages when Dagster launched
the run. Only rank 0 reports, so a run hears each thing once."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from spark_pipeline.training.settings import TrainingSettings

METRICS_FILE = "metrics.jsonl"  # one line of metrics per optimizer step, written by rank 0


def read_metrics(run_dir: Path) -> list[dict]:
    """A run's per-step metrics; a resumed step's later line wins."""
    path = Path(run_dir) / METRICS_FILE
    by_step = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip():
            row = json.loads(line)
            by_step[row["step"]] = row
    return [by_step[k] for k in sorted(by_step)]


class Reporter:
    """W&B (offline unless a key is configured) on every rank 0 step, and Dagster Pipes
    messages when launched by Dagster; only rank 0 reports, so a run hears each thing once."""

    def __init__(self, rank: int, run_dir: Path, settings: TrainingSettings, run_id: str | None):
        self.rank = rank
        self.pipes = None
        self.wandb = None
        self.run_id = run_id
        self.metrics_file = run_dir / METRICS_FILE
        if rank != 0:
            return
        if os.environ.get("DAGSTER_PIPES_CONTEXT"):
            from dagster_pipes import open_dagster_pipes

            self._pipes_cm = open_dagster_pipes()
            self.pipes = self._pipes_cm.__enter__()
        if os.environ.get("WANDB_DISABLED", "").lower() not in ("1", "true"):
            # a new run's W&B id is its run id (the folder's name); a resumed run keeps its own
            self.run_id = run_id or run_dir.name.replace(".", "-") or __import__("uuid").uuid4().hex[:8]
            self.wandb = self._start_wandb(run_dir, settings)

    def _start_wandb(self, run_dir: Path, settings: TrainingSettings):
        """W&B as configured; training never dies for its logger: a failed online start (a bad
        key, no network) falls back to an offline run, a failed offline start to none."""
        try:
            import wandb
        except ImportError:
            self.warn("wandb is not installed: metrics go to the log only")
            return None
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        common = {"project": os.environ.get("WANDB_PROJECT", "spark-pipeline"), "id": self.run_id, "resume": "allow",
                  "dir": str(run_dir), "config": settings.to_dict()}
        timeout = float(os.environ.get("SPARK_WANDB_INIT_TIMEOUT", "60"))
        for attempt_mode in ([mode] if mode == "offline" else [mode, "offline"]):
            try:
                return wandb.init(mode=attempt_mode, settings=wandb.Settings(init_timeout=timeout), **common)
            except Exception as exc:  # noqa: BLE001 - any failure of the logger
                self.warn(f"W&B could not start in {attempt_mode} mode ({type(exc).__name__}: {str(exc)[:200]})"
                          + ("; logging offline instead" if attempt_mode != "offline" else "; no W&B logging"))
        return None

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)
        if self.pipes:
            self.pipes.log.warning(message)

    def log(self, message: str) -> None:
        if self.rank == 0:
            print(message, flush=True)
            if self.pipes:
                self.pipes.log.info(message)

    def step(self, metrics: dict, step: int) -> None:
        if self.rank != 0:
            return
        with open(self.metrics_file, "a") as f:  # the run's own record, whatever the loggers do
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.wandb:
            try:
                self.wandb.log(metrics, step=step)
            except Exception as exc:  # noqa: BLE001 - the logger never stops training
                self.warn(f"W&B logging failed ({type(exc).__name__}: {str(exc)[:200]}); it is switched off")
                self.wandb = None
        if self.pipes:
            self.pipes.report_custom_message({"kind": "step", "step": step, **metrics})

    def finish(self, metadata: dict) -> None:
        if self.rank != 0:
            return
        if self.wandb:
            try:
                self.wandb.finish()
            except Exception as exc:  # noqa: BLE001
                self.warn(f"W&B finish failed ({type(exc).__name__}); the run's metrics are in result.json")
        if self.pipes:
            if metadata.get("exit") != "diverged":  # a diverged run is a failure, not a materialization
                self.pipes.report_asset_materialization(metadata=metadata,
                                                        data_version=metadata.get("final_checkpoint_sha"))
            self._pipes_cm.__exit__(None, None, None)
