"""The Dagster instance of a cluster deployment, on a real PostgreSQL server (deploy/dagster.yaml
uses the same storage): the demo's first assets run through it, and what they record (runs,
events, dynamic partitions, check results) lives in the database, readable by a second
instance object opened from the same dagster.yaml."""

import dagster as dg
import pytest
import yaml

from spark_pipeline.definitions import defs
from spark_pipeline_tests.conftest import dagster_resources, sample_entry, write_manifest
from spark_pipeline_tests.postgres_server import PostgresServer, unavailable_reason

ASSETS = list(defs.assets)
PAIRS = ["skm6_imu_i2c", "cm4_startup_asm"]
MAPPED = "cm4_startup_asm"


@pytest.fixture
def postgres():
    """A fresh PostgreSQL cluster for one test, stopped and deleted after it."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_home(postgres, tmp_path):
    """A DAGSTER_HOME whose dagster.yaml keeps runs, events and schedules in the server's database."""
    home = tmp_path / "pg_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({
        "telemetry": {"enabled": False},
        "storage": {"postgres": {"postgres_db": {
            "username": postgres.user, "password": postgres.password, "hostname": "127.0.0.1",
            "db_name": postgres.db, "port": postgres.port,
            # SQLAlchemy 2.1 defaults to psycopg 3; dagster-postgres ships psycopg2
            "scheme": "postgresql+psycopg2"}}}}))
    return home


def _open(home) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home))


def test_the_demo_assets_run_on_a_postgres_backed_instance(postgres, pg_home, storage, tmp_path):
    manifest = write_manifest(tmp_path / "pairs.yaml", [sample_entry(p) for p in PAIRS])
    instance = _open(pg_home)
    try:
        for part in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
            assert type(part).__module__.startswith("dagster_postgres"), type(part)
        pairs = dg.materialize(ASSETS, selection=["repo_datasheet_pairs"], instance=instance,
                               resources=dagster_resources(storage),
                               run_config={"ops": {"repo_datasheet_pairs": {"config": {"manifest": str(manifest)}}}})
        assert pairs.success
        assert sorted(instance.get_dynamic_partitions("pairs")) == sorted(PAIRS)
        mapped = dg.materialize(ASSETS, selection=["specmap_mappings"], partition_key=MAPPED, instance=instance,
                                resources=dagster_resources(storage))
        assert mapped.success
        checks = {e.check_name: e.passed for e in mapped.get_asset_check_evaluations()}
        assert checks == {"every_section_has_status": True, "file_paths_exist_at_revision": True}
    finally:
        instance.dispose()

    # Straight from the database, not through Dagster.
    conn = postgres.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs")
            assert cur.fetchone() == (2,)
            cur.execute("SELECT run_id, status FROM runs")
            assert dict(cur.fetchall()) == {pairs.run_id: "SUCCESS", mapped.run_id: "SUCCESS"}
            cur.execute("SELECT dagster_event_type, count(*) FROM event_logs WHERE run_id = %s "
                        "GROUP BY dagster_event_type", (mapped.run_id,))
            events = dict(cur.fetchall())
            kinds = dg.DagsterEventType  # stored by value: RUN_SUCCESS is still "PIPELINE_SUCCESS" in the table
            assert events.get(kinds.ASSET_MATERIALIZATION.value) == 1, events
            assert events.get(kinds.ASSET_CHECK_EVALUATION.value) == 2, events
            assert events.get(kinds.RUN_SUCCESS.value) == 1, events
            assert sum(events.values()) > 10, events
            cur.execute("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = 'pairs'")
            assert sorted(r[0] for r in cur.fetchall()) == sorted(PAIRS)
            cur.execute("SELECT check_name, execution_status FROM asset_check_executions WHERE run_id = %s",
                        (mapped.run_id,))
            assert dict(cur.fetchall()) == {"every_section_has_status": "SUCCEEDED",
                                            "file_paths_exist_at_revision": "SUCCEEDED"}
    finally:
        conn.close()

    again = _open(pg_home)  # a fresh instance object, as another process (webserver, daemon) would open
    try:
        assert again.get_run_by_id(mapped.run_id).status == dg.DagsterRunStatus.SUCCESS
        assert sorted(again.get_dynamic_partitions("pairs")) == sorted(PAIRS)
        record = again.get_latest_materialization_event(dg.AssetKey("specmap_mappings"))
        assert record is not None and record.run_id == mapped.run_id
        assert record.asset_materialization.partition == MAPPED
        assert again.get_materialized_partitions(dg.AssetKey("specmap_mappings")) == {MAPPED}
        history = again.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("specmap_mappings"), "every_section_has_status"), limit=5)
        assert [(c.run_id, c.status.value) for c in history] == [(mapped.run_id, "SUCCEEDED")]
    finally:
        again.dispose()


def test_the_sweep_study_lives_in_the_instance_postgres_in_its_own_schema(postgres, pg_home, storage, monkeypatch):
    """With a Postgres-backed instance the Optuna study goes to the same server, in the schema
    spark_sweep: Optuna and Dagster each keep an alembic_version table, which must stay apart."""
    from optuna.trial import TrialState

    from spark_pipeline.sweep.settings import SweepSettings
    from spark_pipeline.sweep.study import open_study, run_study, storage_url

    monkeypatch.delenv("SPARK_SWEEP_STORAGE", raising=False)
    instance = _open(pg_home)
    try:
        url = storage_url(storage, instance)
    finally:
        instance.dispose()
    assert url.startswith("postgresql") and "search_path%3Dspark_sweep" in url
    settings = SweepSettings.load("demo")
    run_study(open_study(settings, url), settings,
              lambda params, seed, n: {"seed": seed, "final_loss": 1.0 / params["lora_r"], "min_loss": 0.1},
              max_trials=2)
    again = open_study(settings, url)  # another worker opening the same study
    assert [t.state for t in again.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    conn = postgres.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_schema, count(*) FROM information_schema.tables WHERE table_name IN "
                        "('studies', 'trials', 'alembic_version') GROUP BY table_schema")
            tables = dict(cur.fetchall())
            cur.execute("SELECT count(*) FROM spark_sweep.trials")
            assert cur.fetchone() == (2,)
    finally:
        conn.close()
    assert tables.get("spark_sweep") == 3, tables
    assert tables.get("public", 0) <= 1, "only Dagster's alembic_version in the public schema"
