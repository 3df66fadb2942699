"""A run whose process was killed is marked failed and gives its pool slot back: the next run
of the pool would otherwise wait for it forever."""

import os
import signal
import subprocess
import sys
import time

import dagster as dg

from spark_pipeline.defs.monitoring import dead_runs_sensor, reclaim_dead_runs

_SLOW_RUN = """
import time, dagster as dg
@dg.asset(pool="gpu")
def slow():
    time.sleep(600)
dg.materialize([slow], instance=dg.DagsterInstance.get())
"""


def test_a_killed_run_launched_without_spark_tags_is_failed_and_its_slot_freed_by_the_sensor(isolated_env):
    """As a run launched from the UI: no spark tag, known by the pid of its RUN_START event."""
    home = os.environ["DAGSTER_HOME"]
    with open(os.path.join(home, "dagster.yaml"), "a") as f:
        f.write("concurrency:\n  pools:\n    default_limit: 1\n")
    worker = subprocess.Popen([sys.executable, "-c", _SLOW_RUN], env=dict(os.environ))
    instance = dg.DagsterInstance.get()
    try:
        deadline = time.monotonic() + 240
        while not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots:
            assert worker.poll() is None and time.monotonic() < deadline, "the run never took its slot"
            time.sleep(0.5)
        assert reclaim_dead_runs(instance) == [], "a live run is left alone"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=60)
    [run] = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.STARTED, "a killed run stays STARTED by itself"
    result = dead_runs_sensor(dg.build_sensor_context(instance=instance))
    assert "is gone" in result.skip_message and "pool slot(s) freed: gpu" in result.skip_message
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
    assert reclaim_dead_runs(instance) == [], "once"
