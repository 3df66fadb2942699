"""SpecMap through a real Dagster instance: partitions, runs, metadata, checks, failures."""

import dagster as dg
import pytest

from spark_pipeline.definitions import defs
from spark_pipeline.defs.pairs import pairs_partitions
from spark_pipeline.specmap.mapping_file import SEPARATOR, check_mapping
from spark_pipeline_tests.conftest import dagster_resources, sample_entry, write_manifest

ASSETS = list(defs.assets)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _resources(storage):
    return dagster_resources(storage)


def _register(instance, storage, manifest):
    return dg.materialize(ASSETS, selection=["repo_datasheet_pairs"], instance=instance, resources=_resources(storage),
                          run_config={"ops": {"repo_datasheet_pairs": {"config": {"manifest": str(manifest)}}}},
                          raise_on_error=False)


def _specmap(instance, storage, key):
    return dg.materialize(ASSETS, selection=["specmap_mappings"], partition_key=key, instance=instance,
                          resources=_resources(storage), raise_on_error=False)


def test_pairs_register_partitions_and_specmap_runs_per_pair(instance, storage, tmp_path):
    bad_pdf = tmp_path / "corrupt.pdf"
    bad_pdf.write_bytes(b"%PDF-1.7\n not really")
    empty = tmp_path / "empty_repo"
    empty.mkdir()
    manifest = write_manifest(tmp_path / "pairs.yaml", [
        sample_entry("skm6_imu_i2c"),
        sample_entry("spk32_gpio_uart_hal"),
        sample_entry("skm6_imu_i2c", id="corrupt_sheet", datasheets=[str(bad_pdf)]),
        sample_entry("skm6_imu_i2c", id="empty_repo", repository={"path": str(empty)}),
    ])
    result = _register(instance, storage, manifest)
    assert result.success
    assert set(instance.get_dynamic_partitions("pairs")) == {"skm6_imu_i2c", "spk32_gpio_uart_hal",
                                                            "corrupt_sheet", "empty_repo"}
    meta = result.asset_materializations_for_node("repo_datasheet_pairs")[0].metadata
    assert meta["pairs"].value == 4 and meta["failed_pairs"].value == 0

    good = _specmap(instance, storage, "skm6_imu_i2c")
    assert good.success
    mat = good.asset_materializations_for_node("specmap_mappings")[0]
    assert mat.partition == "skm6_imu_i2c"
    md = mat.metadata
    assert md["sections"].value == 15 and md["mapped_files"].value >= 2 and md["mapped_symbols"].value > 0
    assert 0 < md["coverage"].value < 1 and md["judge_tokens"].value == 0
    assert "| 3.8 |" in md["preview"].value and "data:image/png;base64," in md["preview"].value
    checks = {e.check_name: e.passed for e in good.get_asset_check_evaluations()}
    assert checks == {"every_section_has_status": True, "file_paths_exist_at_revision": True}
    assert (storage / "specmap" / "skm6_imu_i2c" / "mapping.txt").read_text().startswith(SEPARATOR)

    for key, message in [("corrupt_sheet", "corrupt.pdf"), ("empty_repo", "no usable source files")]:
        failed = _specmap(instance, storage, key)
        assert not failed.success
        errors = [e.step_failure_data.error.message for e in failed.all_events if e.is_step_failure]
        assert message in errors[0]
        assert not (storage / "specmap" / key / "mapping.txt").exists(), "nothing half-written"

    # the good pair's result is untouched by the failures
    assert _specmap(instance, storage, "spk32_gpio_uart_hal").success
    assert instance.get_materialized_partitions(dg.AssetKey("specmap_mappings")) == {"skm6_imu_i2c",
                                                                                    "spk32_gpio_uart_hal"}


def test_adding_a_pair_adds_a_partition_and_reruns_nothing(instance, storage, tmp_path):
    manifest = write_manifest(tmp_path / "pairs.yaml", [sample_entry("skm6_imu_i2c")])
    assert _register(instance, storage, manifest).success
    assert _specmap(instance, storage, "skm6_imu_i2c").success
    record = storage / "pairs" / "skm6_imu_i2c" / "pair.json"
    before_mtime = record.stat().st_mtime_ns
    runs_before = len(instance.get_run_records())

    write_manifest(manifest, [sample_entry("skm6_imu_i2c"), sample_entry("cm4_startup_asm")])
    result = _register(instance, storage, manifest)
    assert result.success
    assert result.asset_materializations_for_node("repo_datasheet_pairs")[0].metadata["new_partitions"].value == [
        "cm4_startup_asm"]
    assert instance.get_dynamic_partitions("pairs") == ["skm6_imu_i2c", "cm4_startup_asm"]
    assert len(instance.get_run_records()) == runs_before + 1, "only the registry ran"
    assert record.stat().st_mtime_ns == before_mtime, "the existing pair's record is unchanged"


def test_unusable_manifest_fails_with_its_problems(instance, storage, tmp_path):
    manifest = write_manifest(tmp_path / "pairs.yaml", [sample_entry(domain_category="toasters")])
    result = _register(instance, storage, manifest)
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "domain_category = 'toasters'" in error


def test_specmap_before_registration_says_what_to_do(instance, storage):
    instance.add_dynamic_partitions(pairs_partitions.name, ["ghost"])
    result = _specmap(instance, storage, "ghost")
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "materialize repo_datasheet_pairs first" in error


def test_checks_fail_on_a_bad_mapping():
    text = f"{SEPARATOR}\nSection 1: A\nStatus: implemented\n\n// File: src/real.c\nint a;\n" \
           f"{SEPARATOR}\nSection 2: B\nStatus: maybe\n\n// File: src/invented.c\nint b;\n"
    sidecar = [{"id": "1", "status": "implemented"}, {"id": "2", "status": "maybe"}]
    result = check_mapping(text, sidecar, {"src/real.c"})
    assert not result["status_ok"] and result["without_status"] == [1]
    assert not result["paths_ok"] and result["missing_paths"] == ["src/invented.c"]
    good = check_mapping(text.replace("maybe", "partial").replace("invented", "real"),
                         [{"id": "1", "status": "implemented"}, {"id": "2", "status": "partial"}], {"src/real.c"})
    assert good["status_ok"] and good["paths_ok"]


def test_sensor_registers_then_requests_specmap(instance, storage, monkeypatch, tmp_path):
    from spark_pipeline.defs.pairs import new_pairs_sensor

    manifest = write_manifest(tmp_path / "pairs.yaml", [sample_entry("skm6_imu_i2c")])
    monkeypatch.setenv("SPARK_PAIRS_MANIFEST", str(manifest))
    ctx = dg.build_sensor_context(instance=instance)
    first = new_pairs_sensor(ctx)
    assert isinstance(first, dg.RunRequest) and first.asset_selection == [dg.AssetKey("repo_datasheet_pairs")]
    assert _register(instance, storage, manifest).success
    second = new_pairs_sensor(dg.build_sensor_context(instance=instance))
    assert [r.partition_key for r in second] == ["skm6_imu_i2c"]
    assert set(second[0].asset_selection) == {dg.AssetKey(a) for a in ("specmap_mappings", "section_chunks",
                                                                        "quality_samples")}, "the whole pair chain"
    assert _specmap(instance, storage, "skm6_imu_i2c").success
    third = new_pairs_sensor(dg.build_sensor_context(instance=instance))
    assert [r.partition_key for r in third] == ["skm6_imu_i2c"], "mapped but not sampled: not done yet"
    done = dg.materialize(list(defs.assets), selection=["section_chunks", "quality_samples"], partition_key="skm6_imu_i2c",
                          instance=instance, resources=dagster_resources(storage))
    assert done.success
    fourth = new_pairs_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(fourth, dg.SkipReason) and "mapped and sampled" in fourth.skip_message


def test_sensor_watches_the_manifest_the_pairs_were_registered_from(instance, storage, monkeypatch, tmp_path):
    """Old behaviour: the sensor read $SPARK_PAIRS_MANIFEST (here: unset, the bundled sample)
    and ignored the manifest given in the launch config."""
    from spark_pipeline.defs.pairs import new_pairs_sensor

    manifest = write_manifest(tmp_path / "mine.yaml", [sample_entry("skm6_imu_i2c")])
    assert _register(instance, storage, manifest).success
    assert [r.partition_key for r in new_pairs_sensor(dg.build_sensor_context(instance=instance))] == ["skm6_imu_i2c"]
    write_manifest(manifest, [sample_entry("skm6_imu_i2c"), sample_entry("cm4_startup_asm")])
    request = new_pairs_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(request, dg.RunRequest)
    assert request.run_config["ops"]["repo_datasheet_pairs"]["config"]["manifest"] == str(manifest)


def test_a_stale_file_model_fails_the_pair_saying_how_to_refit(instance, storage, tmp_path):
    import json

    from spark_pipeline.defs.resources import SpecMapJudge
    from spark_pipeline.specmap.model import FEATURE_VERSION, load

    stale = json.loads(load().to_json())
    stale["feature_version"] = FEATURE_VERSION - 1
    path = tmp_path / "old_model.json"
    path.write_text(json.dumps(stale))
    assert _register(instance, storage, write_manifest(tmp_path / "pairs.yaml", [sample_entry()])).success
    result = dg.materialize(ASSETS, selection=["specmap_mappings"], partition_key="skm6_imu_i2c", instance=instance,
                            resources={**_resources(storage), "judge": SpecMapJudge(file_model=str(path))},
                            raise_on_error=False)
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "file model could not be loaded" in error and "--fit" in error
