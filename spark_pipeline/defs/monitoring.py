"""Runs that die cleanly: a Dagster run whose process was killed (SIGKILL, a crash, a closed
terminal) stays STARTED and keeps its pool slots, and the next run of the same pool waits for
it forever. ``reclaim_dead_runs`` marks such runs failed and frees their slots; ``spark demo``
and ``spark sweep`` call it before they start, and ``dead_runs_sensor`` does it every minute
for runs launched from the UI. Only runs whose process is known to be gone are touched: runs
of this machine, by their process id and start time (docs/architecture.md, runs that die).
Runs of the Kubernetes launcher are left to Dagster's run monitoring (deploy/dagster.yaml)."""

from __future__ import annotations

import json
import socket

import dagster as dg

from spark_pipeline.liveness import dead_here

PROCESS_TAG = "spark/process"


def _local(instance: dg.DagsterInstance) -> bool:
    return "sqlite" in type(instance.run_storage).__module__


def run_process(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict | None:
    """Who runs ``run``: the process the CLI recorded in its tags, or, on a local instance,
    the process that started it (its RUN_START event's pid)."""
    from dagster._core.events import DagsterEventType

    if PROCESS_TAG in run.tags:
        return json.loads(run.tags[PROCESS_TAG])
    if not _local(instance):
        return None
    starts = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_START)
    if not starts or starts[0].dagster_event is None or not starts[0].dagster_event.pid:
        return None
    return {"host": socket.gethostname(), "pid": starts[0].dagster_event.pid, "not_after": starts[0].timestamp}


def reclaim_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark every STARTED run whose process is gone failed and free its pool slots; returns a
    line for each."""
    said = []
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    for record in records:
        run = record.dagster_run
        process = run_process(instance, run)
        if process is None or not dead_here(process):
            continue
        reason = (f"its process (pid {process['pid']}) is gone: it was killed or crashed without finishing; "
                  "marked failed by spark so that its pool slots are free")
        instance.report_run_failed(run, reason)
        held = []
        events = instance.event_log_storage
        if events.supports_global_concurrency_limits:
            held = [pool for pool in sorted(events.get_concurrency_keys())
                    for slot in events.get_concurrency_info(pool).claimed_slots if slot.run_id == run.run_id]
            events.free_concurrency_slots_for_run(run.run_id)
        said.append(f"run {run.run_id} ({run.job_name}) {reason}"
                    + (f"; its pool slot(s) freed: {', '.join(held)}" if held else ""))
    return said


@dg.sensor(name="dead_runs_sensor", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Marks runs whose process died (killed, crashed) failed and frees their pool slots, so that "
           "the next training or sweep run does not wait for a slot nobody will give back.")
def dead_runs_sensor(context: dg.SensorEvaluationContext):
    said = reclaim_dead_runs(context.instance)
    for line in said:
        context.log.warning(line)
    return dg.SkipReason("; ".join(said) if said else "no run has lost its process")
