"""The Dagster instance of a cluster deployment, on a real PostgreSQL server (deploy/dagster.yaml
uses the same storage): the demo's first assets run through it, and what they record lives in
the database, readable by a second instance object."""

import dagster as dg
import pytest
import yaml

from spark_pipeline.definitions import defs
from spark_pipeline_tests.conftest import dagster_resources, sample_entry, write_manifest
from spark_pipeline_tests.postgres_server import PostgresServer, bindir


@pytest.fixture
def postgres():
    if bindir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; make setup installs it)")
    with PostgresServer() as server:
        yield server


def test_the_demo_assets_run_on_a_postgres_backed_instance(postgres, storage, tmp_path):
    import psycopg2

    home = tmp_path / "pg_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({
        "telemetry": {"enabled": False},
        "storage": {"postgres": {"postgres_db": {"username": postgres.user, "password": "", "hostname": "127.0.0.1",
                                                 "db_name": postgres.db, "port": postgres.port,
                                                 # SQLAlchemy 2.1 defaults to psycopg 3; dagster-postgres ships psycopg2
                                                 "scheme": "postgresql+psycopg2"}}}}))
    manifest = write_manifest(tmp_path / "pairs.yaml", [sample_entry("skm6_imu_i2c"), sample_entry("cm4_startup_asm")])
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        pairs = dg.materialize(list(defs.assets), selection=["repo_datasheet_pairs"], instance=instance,
                               resources=dagster_resources(storage),
                               run_config={"ops": {"repo_datasheet_pairs": {"config": {"manifest": str(manifest)}}}})
        assert pairs.success
        mapped = dg.materialize(list(defs.assets), selection=["specmap_mappings"], partition_key="cm4_startup_asm",
                                instance=instance, resources=dagster_resources(storage))
        assert mapped.success
    finally:
        instance.dispose()

    with psycopg2.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, dbname=postgres.db) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT run_id, status FROM runs")
            runs = dict(cur.fetchall())
            cur.execute("SELECT count(*) FROM event_logs WHERE run_id = %s", (mapped.run_id,))
            (events,) = cur.fetchone()
    assert runs == {pairs.run_id: "SUCCESS", mapped.run_id: "SUCCESS"}
    assert events > 10, "the run's events are rows in PostgreSQL"

    again = dg.DagsterInstance.from_config(str(home))  # a second process would see the same
    try:
        assert sorted(again.get_dynamic_partitions("pairs")) == ["cm4_startup_asm", "skm6_imu_i2c"]
        record = again.get_latest_materialization_event(dg.AssetKey("specmap_mappings"))
        assert record is not None and record.run_id == mapped.run_id
        checks = again.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("specmap_mappings"), "every_section_has_status"), limit=5)
        assert [c.status.value for c in checks] == ["SUCCEEDED"]
    finally:
        again.dispose()
