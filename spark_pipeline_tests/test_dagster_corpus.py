"""The corpus assets through a real Dagster instance, on three sample pairs (one held out)."""

import json
import math
from pathlib import Path

import dagster as dg
import pytest

from spark_pipeline.corpus.parquet import read_lineage, read_rows
from spark_pipeline.definitions import defs
from spark_pipeline.defs.resources import SparkConfig
from spark_pipeline_tests.conftest import dagster_resources, sample_entry, write_manifest

ASSETS = list(defs.assets)
PAIRS = ["skm6_imu_i2c", "spk32_gpio_uart_hal", "aes128_accelerator"]


@pytest.fixture
def built(storage, tmp_path):
    with dg.instance_for_test() as instance:
        resources = dagster_resources(storage)
        manifest = write_manifest(tmp_path / "pairs.yaml", [sample_entry(p) for p in PAIRS])

        def run(selection, partition=None, run_config=None):
            return dg.materialize(ASSETS, selection=selection, partition_key=partition, instance=instance,
                                  resources=resources, run_config=run_config or {}, raise_on_error=False)

        assert run(["repo_datasheet_pairs"],
                   run_config={"ops": {"repo_datasheet_pairs": {"config": {"manifest": str(manifest)}}}}).success
        results = {p: run(["specmap_mappings", "section_chunks", "quality_samples"], p) for p in PAIRS}
        assert all(r.success for r in results.values())
        ev = run(["eval_sets"])
        mix = run(["training_mixture"])
        yield {"run": run, "results": results, "eval": ev, "mix": mix, "storage": storage, "instance": instance}


def _checks(result):
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_corpus_assets_materialize_with_checks_and_metadata(built):
    storage = built["storage"]
    quality = built["results"]["skm6_imu_i2c"]
    assert _checks(quality) == {"samples_within_length_bounds": True, "every_section_has_status": True,
                               "file_paths_exist_at_revision": True}
    for pair, result in built["results"].items():  # each check result names its pair partition
        assert {e.metadata["partition"].value for e in result.get_asset_check_evaluations()} == {pair}
        assert all(e.description == f"pair {pair}" for e in result.get_asset_check_evaluations())
    q_meta = quality.asset_materializations_for_node("quality_samples")[0].metadata
    assert q_meta["kept"].value > 0 and "data:image/png;base64," in q_meta["length_histogram"].value
    c_meta = quality.asset_materializations_for_node("section_chunks")[0].metadata
    assert c_meta["chunks"].value >= q_meta["kept"].value

    assert built["mix"].success and _checks(built["mix"]) == {
        "rows_end_with_eos": True, "seq_strictly_increasing": True, "no_eval_sample_in_training": True,
        "no_duplicate_rows": True, "manifest_counts_are_true": True}
    manifest = json.loads((storage / "corpus" / "mixture" / "manifest.json").read_text())
    rows = [r for s in manifest["shards"] for r in read_rows(storage / "corpus" / "mixture" / s["file"])]
    assert rows and [r["seq"] for r in rows] == list(range(len(rows)))
    assert {r["pair_id"] for r in rows} == {"skm6_imu_i2c", "spk32_gpio_uart_hal"}, "held-out pair never trained on"
    order = [PAIRS.index(r["pair_id"]) for r in rows]
    assert order == sorted(order), "pair order of the manifest"

    held = read_rows(storage / "corpus" / "eval" / "held_out.parquet")
    assert held and {r["pair_id"] for r in held} == {"aes128_accelerator"}
    in_domain = read_rows(storage / "corpus" / "eval" / "in_domain.parquet")
    train_hashes = {r["sample_hash"] for r in rows}
    assert in_domain and not train_hashes & {r["sample_hash"] for r in in_domain}
    m_meta = built["mix"].asset_materializations_for_node("training_mixture")[0].metadata
    assert m_meta["samples"].value == len(rows) and m_meta["mixture_hash"].value == manifest["mixture_hash"]
    assert m_meta["dagster/row_count"].value == len(rows), "the UI's row count"
    assert "text" in {c.name for c in m_meta["dagster/column_schema"].schema.columns}
    from spark_pipeline.definitions import defs as all_defs

    for asset in all_defs.assets:  # what a person sees on the asset pages
        spec = asset.specs_by_key[asset.key]
        assert spec.kinds and spec.owners and "<" not in (spec.description or ""), asset.key


def test_lineage_and_byte_identical_rematerialization(built):
    storage = built["storage"]
    sidecar = json.loads((storage / "specmap" / "skm6_imu_i2c" / "mapping.json").read_text())
    chunks = storage / "corpus" / "chunks" / "skm6_imu_i2c.parquet"
    samples = storage / "corpus" / "samples" / "skm6_imu_i2c.parquet"
    assert read_lineage(chunks)["specmap_mappings"] == sidecar["mapping_sha256"][:16]
    assert read_lineage(samples)["specmap_mappings"] == sidecar["mapping_sha256"][:16]
    manifest = json.loads((storage / "corpus" / "mixture" / "manifest.json").read_text())
    assert set(manifest["lineage"]["quality_samples"]) == {"skm6_imu_i2c", "spk32_gpio_uart_hal", "aes128_accelerator"}

    before = {p: p.read_bytes() for p in (storage / "corpus").rglob("*.parquet")}
    version = built["mix"].asset_materializations_for_node("training_mixture")[0]
    again = built["run"](["section_chunks", "quality_samples"], "skm6_imu_i2c")
    assert again.success
    assert built["run"](["eval_sets"]).success
    mix2 = built["run"](["training_mixture"])
    after = {p: p.read_bytes() for p in (storage / "corpus").rglob("*.parquet")}
    assert after == before, "same inputs give byte-identical Parquet"
    record = built["instance"].get_latest_data_version_record(dg.AssetKey("training_mixture"))
    assert record is not None
    assert mix2.asset_materializations_for_node("training_mixture")[0].metadata["mixture_hash"] == \
        version.metadata["mixture_hash"]


def test_domain_general_recipe_from_run_config(built):
    result = built["run"](["training_mixture"], run_config={
        "ops": {"training_mixture": {"config": {"recipe": "domain_general", "general_fraction": 0.2}}}})
    assert result.success
    meta = result.asset_materializations_for_node("training_mixture")[0].metadata
    recipe = meta["recipe"].value
    assert recipe["name"] == "domain_general" and 0 < recipe["general_fraction_achieved"] <= 0.2 + 0.02


def test_a_pair_added_to_the_manifest_ends_in_a_new_mixture_with_automation_on(built, tmp_path):
    """The sensor registers the new pair from the manifest the pairs came from and requests
    its whole chain; declarative automation then brings eval_sets and training_mixture up to
    date, once. (Old behaviour: the sensor requested SpecMap only, and nothing followed.)"""
    from spark_pipeline.defs.pairs import new_pairs_sensor

    instance, storage = built["instance"], built["storage"]
    # the automation sensor ticks all along: a first evaluation on the built corpus requests nothing
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert baseline.total_requested == 0
    write_manifest(tmp_path / "pairs.yaml", [sample_entry(p) for p in [*PAIRS, "sx8_gpio_expander_dt"]])

    def run_request(request):
        result = dg.materialize(ASSETS, selection=request.asset_selection, partition_key=request.partition_key,
                                instance=instance, resources=dagster_resources(storage),
                                run_config=request.run_config or {})
        assert result.success

    register = new_pairs_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(register, dg.RunRequest)
    run_request(register)
    [chain] = new_pairs_sensor(dg.build_sensor_context(instance=instance))
    assert chain.partition_key == "sx8_gpio_expander_dt"
    run_request(chain)

    evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
    requested = {a for a in ("eval_sets", "training_mixture", "tokenized_cache", "train_hero", "evaluation_report")
                 if evaluation.get_num_requested(dg.AssetKey(a))}
    assert requested == {"eval_sets", "training_mixture"}, requested
    assert evaluation.total_requested == 2, "nothing else runs by itself (no training, no SpecMap)"
    result = dg.materialize(ASSETS, selection=["eval_sets", "training_mixture"], instance=instance,
                            resources=dagster_resources(storage))
    assert result.success
    manifest = json.loads((storage / "corpus" / "mixture" / "manifest.json").read_text())
    assert "sx8_gpio_expander_dt" in manifest["pairs"]
    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=evaluation.cursor)
    assert again.total_requested == 0, "up to date: nothing requested again"


def test_a_manifest_edited_after_the_corpus_was_built_stops_every_consumer_until_rebuilt(built, tmp_path):
    """Flipping ``held_out`` in the manifest used to pass unnoticed: eval_sets and
    training_mixture read the registry that only repo_datasheet_pairs rewrites, and kept training
    on the pair the manifest now holds out."""
    from spark_pipeline.training.launch import LaunchError, current_inputs
    from spark_pipeline.training.settings import TrainingSettings

    run, storage = built["run"], built["storage"]
    flipped = {"spk32_gpio_uart_hal": True, "aes128_accelerator": False}
    manifest = write_manifest(tmp_path / "pairs.yaml",
                              [sample_entry(p, **({"held_out": flipped[p]} if p in flipped else {})) for p in PAIRS])

    def error(result):
        return next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message

    for asset in ("eval_sets", "training_mixture"):
        result = run([asset])
        assert not result.success, f"{asset} ran on the stale registry"
        text = error(result)
        assert "pair 'spk32_gpio_uart_hal': held_out False -> True" in text, text
        assert "pair 'aes128_accelerator': held_out True -> False" in text and "Materialize repo_datasheet_pairs" in text
    for stage in ("specmap_mappings", "section_chunks", "quality_samples"):
        changed = run([stage], "spk32_gpio_uart_hal")
        assert not changed.success and "pair 'spk32_gpio_uart_hal': held_out False -> True" in error(changed), stage
    assert run(["specmap_mappings"], "skm6_imu_i2c").success, "an unchanged pair's own stages go on"
    with pytest.raises(LaunchError, match="changed since repo_datasheet_pairs last read it"):
        current_inputs(storage, TrainingSettings.load("demo"))

    config = {"ops": {"repo_datasheet_pairs": {"config": {"manifest": str(manifest)}}}}
    assert run(["repo_datasheet_pairs"], run_config=config).success
    with pytest.raises(LaunchError, match="the training mixture was built from an earlier pairs manifest"):
        current_inputs(storage, TrainingSettings.load("demo"))
    assert not run(["training_mixture"]).success, "the evaluation sets are from the earlier manifest"
    for pair in flipped:
        assert run(["specmap_mappings", "section_chunks", "quality_samples"], pair).success
    assert run(["eval_sets"]).success and run(["training_mixture"]).success
    mixture = json.loads((storage / "corpus" / "mixture" / "manifest.json").read_text())
    assert "spk32_gpio_uart_hal" not in mixture["pairs"] and "aes128_accelerator" in mixture["pairs"]
    held = read_rows(storage / "corpus" / "eval" / "held_out.parquet")
    assert held and {r["pair_id"] for r in held} == {"spk32_gpio_uart_hal"}
    for folder in ("eval", "mixture"):  # the configuration each was built with, beside it
        resolved = json.loads((storage / "corpus" / folder / "config.json").read_text())
        assert resolved["profile"] == "demo" and resolved["config"]["corpus"]["mixture"]["recipe"] == "domain_only"


def test_mixture_before_eval_sets_says_what_to_do(storage):
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, selection=["training_mixture"], instance=instance,
                                resources=dagster_resources(storage), raise_on_error=False)
        error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
        assert "materialize repo_datasheet_pairs first" in error
    # what `spark demo` prints for it: the stage, then the first line of its error
    from types import SimpleNamespace

    from spark_pipeline.cli import failure_lines

    lines = failure_lines(result.all_events)
    assert lines and lines[0].startswith("training_mixture: ") and "materialize repo_datasheet_pairs first" in lines[0]
    bare = SimpleNamespace(is_step_failure=True, step_key="train_hero", step_failure_data=SimpleNamespace(error=None))
    assert failure_lines([bare]) == ["train_hero: (no message; see the run in the Dagster UI)"]


def test_train_hero_through_pipes_new_runs_never_touch_earlier_ones_and_a_diverged_run_fails(built, monkeypatch,
                                                                                            tmp_path):
    """tokenized_cache, then train_hero through Pipes with its lineage. Re-materializing
    train_hero starts a new run (own id, own folder): the first run's
    checkpoints stay byte for byte, and the sensor's keys for the new run are new. A run whose
    weights blow up fails the asset, naming the divergence, and its checkpoints are never
    offered for evaluation."""
    import yaml

    from spark_pipeline.config import CONFIG_DIR
    from spark_pipeline.training.runs import discover, run_folders

    monkeypatch.setenv("WANDB_MODE", "disabled")  # its offline service costs seconds per run
    storage = built["storage"]
    tok = built["run"](["tokenized_cache"])
    assert tok.success
    meta = tok.asset_materializations_for_node("tokenized_cache")[0].metadata
    assert meta["samples"].value > 0 and 0 < meta["packing_efficiency"].value <= 1
    key = meta["cache_key"].value
    assert (storage / "tokens" / key / ".done").exists()

    two_steps = {"ops": {"train_hero": {"config": {"max_steps": 2}}}}
    train = built["run"](["train_hero"], run_config=two_steps)
    assert train.success
    md = train.asset_materializations_for_node("train_hero")[0].metadata
    assert md["steps"].value == 2 and md["exit"].value == "finished"
    assert md["trainable_parameters"].value > 0 and "data:image/png;base64," in md["loss_curve"].value
    inline = md["loss_inline"].value
    assert "data:image/svg+xml;base64," in inline and len(inline) < 1000, "short enough for the UI to show inline"
    final = Path(md["final_checkpoint"].value)
    lineage = json.loads((final / "lineage.json").read_text())
    manifest = json.loads((storage / "corpus" / "mixture" / "manifest.json").read_text())
    registry = json.loads((storage / "pairs" / "registry.json").read_text())
    assert lineage["mixture_hash"] == manifest["mixture_hash"] and lineage["tokenized_cache"] == key
    assert lineage["pairs"] == {p: registry["versions"][p] for p in ("skm6_imu_i2c", "spk32_gpio_uart_hal")}, \
        "the held-out pair is not in the training data's lineage"
    assert lineage["dagster_run_id"] == train.run_id and lineage["base_model"]["weights_sha256"]
    events = built["instance"].get_records_for_run(train.run_id).records
    messages = [e.event_log_entry.user_message for e in events]
    assert any("trainable parameters" in m for m in messages), "rank 0's log reached Dagster through Pipes"

    [first] = run_folders(storage, "hero")
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file() and "checkpoints" in p.parts}
    assert before
    assert built["run"](["train_hero"], run_config=two_steps).success
    folders = run_folders(storage, "hero")
    assert len(folders) == 2 and folders[0] == first
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file() and "checkpoints" in p.parts} == before
    keys = sorted(discover(storage))
    assert keys == sorted(f"hero.{f.name}--checkpoint-2" for f in folders), keys

    profile = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    profile["training"]["optimizer"]["learning_rate"] = 1.0e3
    profile["training"]["save_every_steps"] = 1
    (tmp_path / "diverging.yaml").write_text(yaml.safe_dump(profile))
    resources = {**dagster_resources(storage), "spark_config": SparkConfig(profile=str(tmp_path / "diverging.yaml"))}
    result = dg.materialize(ASSETS, selection=["train_hero"], instance=built["instance"], resources=resources,
                            run_config={"ops": {"train_hero": {"config": {"max_steps": 4}}}}, raise_on_error=False)
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "training diverged" in error and "UNHEALTHY" in error, error
    diverged = run_folders(storage, "hero")[-1]
    assert (diverged / "checkpoints" / "checkpoint-1" / "UNHEALTHY").exists()
    assert sorted(discover(storage)) == keys, "no checkpoint of the diverged run is offered for evaluation"


def test_train_hero_resume_latest_continues_its_run_in_its_folder_and_other_settings_are_refused(built, monkeypatch,
                                                                                              tmp_path):
    """``resume: latest`` launches into the run's own folder: its settings.json is kept, the
    launch records its own Dagster run id, and the run goes on from its checkpoint. The same
    with another profile's settings is refused before anything is launched or written."""
    import yaml

    from spark_pipeline.config import CONFIG_DIR
    from spark_pipeline.training.runs import run_folders

    monkeypatch.setenv("WANDB_MODE", "disabled")
    storage = built["storage"]
    assert built["run"](["tokenized_cache"]).success
    assert built["run"](["train_hero"], run_config={"ops": {"train_hero": {"config": {"max_steps": 1}}}}).success
    [folder] = run_folders(storage, "hero")
    settings_before = (folder / "settings.json").read_bytes()
    assert json.loads((folder / "config.json").read_text())["profile"] == "demo", "the run's whole profile beside it"
    latest = {"ops": {"train_hero": {"config": {"max_steps": 2, "resume": "latest"}}}}
    resumed = built["run"](["train_hero"], run_config=latest)
    assert resumed.success
    md = resumed.asset_materializations_for_node("train_hero")[0].metadata
    assert run_folders(storage, "hero") == [folder] and md["run_id"].value == folder.name
    assert md["steps"].value == 2 and Path(md["final_checkpoint"].value) == folder / "checkpoints" / "checkpoint-2"
    assert (folder / "settings.json").read_bytes() == settings_before
    assert json.loads((folder / "lineage_input.json").read_text())["dagster_run_id"] == resumed.run_id
    assert json.loads((folder / "checkpoints" / "checkpoint-2" / "lineage.json").read_text())["dagster_run_id"] == \
        resumed.run_id

    profile = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    profile["training"]["optimizer"]["learning_rate"] = 1.0e-3
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(profile))
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    resources = {**dagster_resources(storage), "spark_config": SparkConfig(profile=str(tmp_path / "other.yaml"))}
    result = dg.materialize(ASSETS, selection=["train_hero"], instance=built["instance"], resources=resources,
                            run_config={"ops": {"train_hero": {"config": {"max_steps": 3, "resume": "latest"}}}},
                            raise_on_error=False)
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert f"run folder {folder} holds another run: its settings.json differs" in error and "learning_rate" in error
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == before


def test_train_hero_says_what_to_materialize_first(storage):
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS, selection=["train_hero"], instance=instance,
                                resources=dagster_resources(storage), raise_on_error=False)
        error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
        assert "materialize" in error and "tokenized_cache" in error


def test_checkpoints_sensor_evaluation_tables_report_and_sanity(built, monkeypatch):
    from spark_pipeline.defs.evaluation import new_checkpoints_sensor, reevaluation_schedule

    monkeypatch.setenv("WANDB_MODE", "disabled")  # its offline service costs seconds per run
    monkeypatch.setenv("SPARK_STORAGE", str(built["storage"]))
    storage, instance = built["storage"], built["instance"]
    assert built["run"](["tokenized_cache"]).success
    assert built["run"](["train_hero"], run_config={"ops": {"train_hero": {"config": {"max_steps": 2}}}}).success

    from spark_pipeline.training.runs import discover

    [key] = discover(storage)
    assert key.startswith("hero.") and key.endswith("--checkpoint-2")
    result = new_checkpoints_sensor(dg.build_sensor_context(instance=instance))
    assert [r.partition_key for r in result.run_requests] == [key]
    assert set(result.run_requests[0].asset_selection) == {dg.AssetKey("checkpoints"), dg.AssetKey("checkpoint_eval"),
                                                           dg.AssetKey("code_regression")}
    instance.add_dynamic_partitions("checkpoints", [key])  # what the daemon does with the request
    assert isinstance(new_checkpoints_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
    run_id = key.split(".", 1)[1].split("--")[0]
    folder = storage / "runs" / "hero" / run_id / "checkpoints" / "checkpoint-2"

    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # the automation sensor ticking
    ev = built["run"](["checkpoints", "checkpoint_eval"], key)
    assert ev.success
    checks = {e.check_name: e.passed for e in ev.get_asset_check_evaluations()}
    assert checks == {"adapter_loaded": True}
    rows = read_rows(storage / "evaluation" / key / "table.parquet")
    models = {r["model"] for r in rows}
    assert models == {"base", f"adapter:{key}"}
    assert {r["split"] for r in rows} == {"in_domain", "held_out"}
    lineage_sha = rows[0]["lineage_sha256"]
    from spark_pipeline.records import sha256_file

    assert lineage_sha == sha256_file(folder / "lineage.json")
    overall = [r for r in rows if r["category"] == "all"]
    assert all(r["perplexity"] > 1 and 0 <= r["tf_top5"] <= 1 and r["gen_samples"] > 0 for r in overall)
    for r in overall:
        base = next(b for b in overall if b["model"] == "base" and b["split"] == r["split"])
        assert r["ppl_reduction_vs_base"] == pytest.approx((base["perplexity"] - r["perplexity"]) / base["perplexity"])
    assert all(0 <= r["compile_rate"] <= 1 and r["memorized_longest_max"] >= 0 for r in overall), \
        "compile check and memorization report ran"
    assert all(r["perplexity_lo"] <= r["perplexity"] <= r["perplexity_hi"] for r in overall), "95% intervals"
    assert "[" in (storage / "evaluation" / key / "table.md").read_text(), "the Markdown shows the intervals"
    assert all(r["base_model_sha256"] == json.loads((folder / "lineage.json").read_text())["base_model"]["weights_sha256"]
               for r in rows), "the table names the base model it was computed on, the one trained on"

    # every generation is stored: anyone can recompute token accuracy and BLEU-4 from it
    import sacrebleu

    from spark_pipeline.evaluation.metrics import token_accuracy

    generations = read_rows(storage / "evaluation" / key / "generations.parquet")
    adapter_gens = [g for g in generations if g["model"] == f"adapter:{key}" and g["split"] == "in_domain"]
    adapter_all = next(r for r in overall if r["model"] == f"adapter:{key}" and r["split"] == "in_domain")
    assert len(adapter_gens) == adapter_all["gen_samples"] > 0
    assert all(g["prompt_sha256"] and g["reference"] is not None and g["generation"] is not None for g in generations)
    accuracy = [token_accuracy(g["generation_ids"], g["reference_ids"]) for g in adapter_gens]
    assert adapter_all["gen_token_accuracy"] == pytest.approx(sum(accuracy) / len(accuracy))
    from spark_pipeline.tokens.tokenizer import load_tokenizer

    tok = load_tokenizer(json.loads((folder / "lineage.json").read_text())["tokenizer"])
    hyps = [tok.decode(g["generation_ids"][: len(g["reference_ids"])]) for g in adapter_gens]
    assert adapter_all["bleu4"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [[g["reference"] for g in adapter_gens]]).score)
    meta = ev.asset_materializations_for_node("checkpoint_eval")[0].metadata
    table = meta["table"].value  # a table metadata value: the asset page shows it inline
    assert isinstance(table, dg.TableMetadataValue) and len(table.records) == len(rows)
    assert {c.name for c in table.schema.columns} >= {"model", "split", "perplexity", "bleu4"}
    assert meta["in_domain/perplexity"].value == pytest.approx(
        next(r["perplexity"] for r in overall if r["model"] != "base" and r["split"] == "in_domain")), \
        "plain numbers per checkpoint partition, which the UI's Plots tab draws"
    assert "generation:" in meta["examples"].value and "reference:" in meta["examples"].value
    # spec-conditioned completion: items of the held-out pair, generated with and without their section
    spec = read_rows(storage / "evaluation" / key / "spec_conditioned.parquet")
    items = read_rows(storage / "corpus" / "eval" / "spec_conditioned.parquet")
    assert items and {r["model"] for r in spec} == {"base", f"adapter:{key}"}
    for r in spec:
        for metric in ("token_accuracy", "ident_match"):
            assert r[f"{metric}_gain"] == pytest.approx(r[f"{metric}_with"] - r[f"{metric}_without"])
            assert r[f"{metric}_gain_lo"] <= r[f"{metric}_gain"] + 1e-12 <= r[f"{metric}_gain_hi"] + 2e-12
    spec_gens = read_rows(storage / "evaluation" / key / "spec_conditioned_generations.parquet")
    n_items = next(r["items"] for r in spec if r["model"] == "base" and r["category"] == "all")
    assert len(spec_gens) == 2 * 2 * n_items and {g["condition"] for g in spec_gens} == {"with_section", "without_section"}
    assert {g["pair_id"] for g in spec_gens} <= set(json.loads((storage / "pairs" / "registry.json").read_text())["held_out"])
    assert isinstance(meta["spec_conditioned"].value, dg.TableMetadataValue)
    assert "Spec-conditioned completion" in (storage / "evaluation" / key / "table.md").read_text()
    logs = [e.event_log_entry.user_message for e in instance.get_records_for_run(ev.run_id).records]
    assert any("scored" in m and "s left" in m for m in logs) and any("generated" in m and "s left" in m for m in logs), \
        "progress per batch with the time left"

    code = built["run"](["code_regression"], key)
    assert code.success
    code_rows = read_rows(storage / "evaluation" / key / "code_regression.parquet")
    assert {r["model"] for r in code_rows} == {"base", f"adapter:{key}"}
    assert {r["difficulty"] for r in code_rows} == {"all", "easy", "medium", "hard"}
    assert all(0 <= r["pass_rate"] <= r["compile_rate"] <= 1 for r in code_rows)

    automation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
    assert automation.get_num_requested(dg.AssetKey("evaluation_report")) == 1, "a new table updates the report"
    report = built["run"](["evaluation_report"])
    assert report.success
    meta = report.asset_materializations_for_node("evaluation_report")[0].metadata
    assert "data:image/png;base64," in meta["perplexity_over_checkpoints"].value
    assert len(meta["perplexity_inline"].value) < 1000 and "svg" in meta["perplexity_inline"].value
    columns = {c.name: c.description for c in meta["latest_vs_base"].value.schema.columns}
    assert "bootstrap" in columns["perplexity"] and "Wilson" in columns["exact_match"], "the UI says what each is"
    latest_rows = meta["latest_vs_base"].value.records
    assert {r.data["model"] for r in latest_rows} == {"base", f"adapter:{key}"} and len(latest_rows) == 4
    assert (storage / "evaluation" / "report" / "report.md").exists()
    assert isinstance(meta["latest_spec_conditioned"].value, dg.TableMetadataValue)
    assert "## Spec-conditioned completion" in (storage / "evaluation" / "report" / "report.md").read_text()
    assert (storage / "evaluation" / "report" / "spec_conditioned.parquet").exists()
    assert "data:image/png;base64," in meta["grounding_gain"].value

    _check_release(built, key, folder, monkeypatch)

    schedule_requests = reevaluation_schedule(dg.build_schedule_context(instance=instance))
    assert [r.partition_key for r in schedule_requests] == [key]
    assert schedule_requests[0].run_key.startswith(f"reeval:{key}:")

    # an adapter whose config was changed (rsLoRA off: other numbers from the same weights) is
    # refused, and the checkpoint's earlier table is withdrawn, not left to read as current
    config_file = folder / "adapter_config.json"
    original = config_file.read_text()
    tampered = json.loads(original)
    assert tampered["use_rslora"] is True
    config_file.write_text(json.dumps({**tampered, "use_rslora": False}))
    bad = built["run"](["checkpoint_eval"], key)
    assert not bad.success
    error = next(e for e in bad.all_events if e.is_step_failure).step_failure_data.error.message
    assert "did not load as trained" in error and "config or weights" in error
    assert not (storage / "evaluation" / key / "table.parquet").exists()
    assert (storage / "evaluation" / key / "BLOCKED").exists()
    assert list((storage / "evaluation" / key).glob("withdrawn-*/table.parquet"))
    # its published release says so too (it used to stay published)
    from spark_pipeline.release.build import verify_sums

    released = storage / "releases" / key
    assert f"its release {released} is marked WITHDRAWN" in error
    assert "**WITHDRAWN**" in (released / "README.md").read_text() and (released / "WITHDRAWN").exists()
    assert json.loads((released / "lineage.json").read_text())["withdrawn"]["reason"].startswith(f"checkpoint {key}")
    assert verify_sums(released) == []
    again = built["run"](["release"], key)
    assert not again.success and "evaluation is blocked" in \
        next(e for e in again.all_events if e.is_step_failure).step_failure_data.error.message
    report = built["run"](["evaluation_report"])
    assert not report.success, "no table is left to report"
    config_file.write_text(original)

    # and so are weights that are not the trained ones
    adapter = folder / "adapter_model.safetensors"
    from safetensors.torch import load_file, save_file

    weights = {k: v * 0.5 for k, v in load_file(str(adapter)).items()}
    save_file(weights, str(adapter))
    bad = built["run"](["checkpoint_eval"], key)
    assert not bad.success
    error = next(e for e in bad.all_events if e.is_step_failure).step_failure_data.error.message
    assert "did not load as trained" in error


def test_a_pair_whose_specmap_failed_is_left_out_not_served_stale(storage, tmp_path):
    """SpecMap fails on a re-run of one pair (its folder changed since registration): its old
    mapping is removed, and eval_sets and training_mixture leave the pair out and say so,
    instead of using the samples the failed run should have replaced."""
    import shutil

    from spark_pipeline.settings import SAMPLE_DIR

    repo = tmp_path / "imu_copy"
    shutil.copytree(SAMPLE_DIR / "repos" / "imu_driver", repo)
    with dg.instance_for_test() as instance:
        resources = dagster_resources(storage)
        manifest = write_manifest(tmp_path / "pairs.yaml", [
            sample_entry("skm6_imu_i2c", repository={"path": str(repo)}), sample_entry("spk32_gpio_uart_hal")])

        def run(selection, partition=None, run_config=None):
            return dg.materialize(ASSETS, selection=selection, partition_key=partition, instance=instance,
                                  resources=resources, run_config=run_config or {}, raise_on_error=False)

        assert run(["repo_datasheet_pairs"],
                   run_config={"ops": {"repo_datasheet_pairs": {"config": {"manifest": str(manifest)}}}}).success
        for pair in ("skm6_imu_i2c", "spk32_gpio_uart_hal"):
            assert run(["specmap_mappings", "section_chunks", "quality_samples"], pair).success
        (repo / "src" / "added_later.c").write_text("int added_later;\n")
        assert not run(["specmap_mappings"], "skm6_imu_i2c").success
        assert not (storage / "specmap" / "skm6_imu_i2c" / "mapping.json").exists()
        assert (storage / "corpus" / "samples" / "skm6_imu_i2c.parquet").exists(), "the stale samples are still on disk"
        ev = run(["eval_sets"])
        mix = run(["training_mixture"])
        assert ev.success and mix.success
        skipped = mix.asset_materializations_for_node("training_mixture")[0].metadata["skipped_pairs"].value
        assert list(skipped) == ["skm6_imu_i2c"] and "last run failed" in skipped["skm6_imu_i2c"]
        manifest_json = json.loads((storage / "corpus" / "mixture" / "manifest.json").read_text())
        rows = [r for s in manifest_json["shards"] for r in read_rows(storage / "corpus" / "mixture" / s["file"])]
        assert rows and {r["pair_id"] for r in rows} == {"spk32_gpio_uart_hal"}
        assert "skm6_imu_i2c" not in manifest_json["lineage"]["quality_samples"]


def test_sweep_on_the_embedded_default_runs_continues_and_ends_in_its_analysis(built, monkeypatch):
    """The demo's 2 x 2 grid of tiny trials through Dagster: a first materialization stops
    after two trials, the next continues with the other two (the first two neither trained
    again nor touched), and the analysis has its tables and plots."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    storage = built["storage"]
    assert built["run"](["tokenized_cache"]).success
    first = built["run"](["sweep_trials"], run_config={"ops": {"sweep_trials": {"config": {"max_trials": 2}}}})
    assert first.success
    meta = first.asset_materializations_for_node("sweep_trials")[0].metadata
    assert meta["trials_by_state"].value == {"COMPLETE": 2} and meta["study_finished"].value is False
    runs_dir = storage / "sweep" / "demo-sweep" / "runs"
    before = {p: p.read_bytes() for p in runs_dir.rglob("*") if p.is_file()}
    assert len({p.relative_to(runs_dir).parts[0] for p in before}) == 2
    lineage = json.loads(next(runs_dir.glob("*/checkpoints/checkpoint-2/lineage.json")).read_text())
    assert lineage["sweep"]["study"] == "demo-sweep" and lineage["mixture_hash"], "each trial has its lineage"
    settings = json.loads(next(runs_dir.glob("r4-attention-*/settings.json")).read_text())
    assert settings["lora_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"] and settings["lora_alpha"] == 8

    done = built["run"](["sweep_trials", "sweep_analysis"])
    assert done.success
    meta = done.asset_materializations_for_node("sweep_trials")[0].metadata
    assert meta["trials_by_state"].value == {"COMPLETE": 4} and meta["study_finished"].value is True
    assert len(meta["trials_this_run"].value) == 2
    assert {p: p.read_bytes() for p in before} == before, "the first two trials' runs were not touched"
    rows = read_rows(storage / "sweep" / "demo-sweep" / "runs.parquet")
    assert sorted(r["configuration"] for r in rows) == ["r4-attention-lr0.002-s0", "r4-full-lr0.002-s0",
                                                        "r8-attention-lr0.002-s0", "r8-full-lr0.002-s0"]
    assert all(r["final_loss"] > 0 and r["peak_grad_norm"] > 0 and r["steps"] == 2 for r in rows)
    analysis = done.asset_materializations_for_node("sweep_analysis")[0].metadata
    assert len(analysis["marginal_means"].value.records) == 5  # 2 ranks, 2 target sets, 1 learning rate
    assert {r.data["factor"] for r in analysis["matched_comparisons"].value.records} == {"lora_r", "targets"}
    for plot in ("objective_per_trial", "factors", "importance"):
        assert "data:image/png;base64," in analysis[plot].value
    assert "fanova" in analysis["importances"].value
    assert (storage / "sweep" / "demo-sweep" / "analysis.md").read_text().startswith("# Sweep analysis")
    assert [e.check_name for e in done.get_asset_check_evaluations()] == ["analysis_without_warnings"]


def _check_release(built, key: str, checkpoint: Path, monkeypatch):
    """The release of an evaluated checkpoint: a model card that parses and renders with its
    plots, merged weights that load without PEFT and match base + adapter, the adapter as
    trained and one without embedding layers (its cost measured), SHA256SUMS, lineage, and the
    upload to a bucket (the GCS emulator with the real client)."""
    import contextlib
    import io
    import re
    import subprocess
    import sys

    import markdown
    import torch
    import yaml
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from spark_pipeline.cli import main
    from spark_pipeline.release.build import ReleaseSettings, _adapted, compare_logits, merge, verify_sums
    from spark_pipeline.training.gcs import make_client
    from spark_pipeline.training.model import base_identity
    from spark_pipeline_tests.gcs_emulator import Emulator

    storage = built["storage"]
    emu = Emulator().start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.host)
        result = built["run"](["release"], key, run_config={"ops": {"release": {"config": {
            "upload": "gs://spark-test/releases"}}}})
        uploaded = sorted(b.name for b in make_client().list_blobs("spark-test", prefix="releases/"))
    finally:
        monkeypatch.delenv("STORAGE_EMULATOR_HOST")
        emu.stop()
    assert result.success
    out = storage / "releases" / key
    meta = result.asset_materializations_for_node("release")[0].metadata
    assert meta["uploaded_to"].value == f"gs://spark-test/releases/{key}"
    assert len(meta["headline"].value) < 1000 and "perplexity" in meta["headline"].value, "shown inline in the UI"
    assert "![" not in meta["model_card"].value, "no image links the UI cannot follow"
    assert f"releases/{key}/README.md" in uploaded and f"releases/{key}/SHA256SUMS" in uploaded
    assert any(n.startswith(f"releases/{key}/merged/model-") for n in uploaded)

    # the model card: Hugging Face front matter, then Markdown that renders with its tables and plots
    card = (out / "README.md").read_text()
    assert "### Spec-conditioned completion (held-out pairs)" in card and "identifier match gain" in card
    assert "grounding_gain.png" in card
    _, front, body = card.split("---\n", 2)
    front = yaml.safe_load(front)
    info = json.loads((out / "release.json").read_text())
    assert front["library_name"] == "peft" and front["license"] == "apache-2.0"
    assert front["base_model"] == base_identity(Path(info["base_model"]["path"]))["name"]
    assert front["spark_lineage"]["mixture_hash"] == json.loads((checkpoint / "lineage.json").read_text())["mixture_hash"]
    assert set(front["spark_lineage"]["pairs"]) == {"skm6_imu_i2c", "spk32_gpio_uart_hal"}
    html = markdown.markdown(body, extensions=["tables"])
    assert html.count("<table>") >= 4, "use, settings, data, pairs and evaluation tables render as tables"
    images = re.findall(r'<img alt="[^"]*" src="([^"]+)"', html)
    assert images and all((out / src).is_file() for src in images), images
    assert "[" in body and "95% intervals" in body, "the evaluation table with its intervals"
    mixture = json.loads((storage / "corpus" / "mixture" / "manifest.json").read_text())
    ratio = mixture["estimated_tokens"] / mixture["characters"]
    for cat, chars in mixture["category_characters"].items():  # from the manifest, no pass over the shards
        assert f"| {cat} | {mixture['categories'][cat]} | {int(chars * ratio):,} |" in body
    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as f:
        counted = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    trained = json.loads((checkpoint.parent.parent / "result.json").read_text())["trainable_parameters"]
    assert info["trainable_parameters"] == counted == trained and f"{trained:,}" in body

    # the merged folder loads with transformers alone (PEFT made unimportable) and matches base + adapter
    probe = [[100, 200, 300, 400, 500, 600, 700, 800]]
    code = ("import sys, json, torch; sys.modules['peft'] = None\n"
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(out / 'merged')!r}).eval()\n"
            "assert not any('lora' in n for n, _ in m.named_parameters())\n"
            f"print(json.dumps(m(input_ids=torch.tensor({probe})).logits.float().tolist()))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    merged_logits = torch.tensor(json.loads(loaded.stdout.strip().splitlines()[-1]))
    reference = _adapted(Path(info["base_model"]["path"]), out / "adapter", torch.float32)
    with torch.no_grad():
        ref_logits = reference(input_ids=torch.tensor(probe)).logits.float()
    scale = float(ref_logits.abs().max())
    assert float((merged_logits - ref_logits).abs().max()) <= 0.02 * scale, "bf16 merged: within 2% of the largest logit"
    verification = info["merged"]["verification"]
    # near ties of the demo model's nearly flat logits may flip under bf16; a clear lead may not
    assert verification["clear_positions"] >= 0.25 * verification["positions"]
    assert verification["top1_agreement_clear"] >= 0.99 and verification["top1_agreement"] >= 0.8
    assert len(list((out / "merged").glob("model-*.safetensors"))) >= 2, "sharded at max_shard_size"
    # the merge itself is exact: in float32 the merged model's logits equal base + adapter to 1e-4
    exact = merge(Path(info["base_model"]["path"]), out / "adapter", storage / "merged32",
                  ReleaseSettings(dtype="float32"), info["base_model"])
    assert "config.json" in exact["files"]
    merged32 = AutoModelForCausalLM.from_pretrained(str(storage / "merged32"), dtype=torch.float32).eval()
    assert compare_logits(reference, merged32, probe)["max_abs_logit_diff"] <= 1e-4

    # the serving adapter: no embedding-layer parts, and what that costs is in the card
    with safe_open(str(out / "adapter-serving" / "adapter_model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "embed_tokens" in k or "lm_head" in k]  # noqa: SIM118
    config = json.loads((out / "adapter-serving" / "adapter_config.json").read_text())
    assert "embed_tokens" not in config["target_modules"] and "q_proj" in config["target_modules"]
    cost = info["serving_adapter"]["cost"]
    assert cost["samples"] > 0 and math.isfinite(cost["perplexity_change"])
    assert f"{cost['perplexity_change']:+.2%}" in body

    # every file's sha256, and the walk from the release to the pairs
    assert verify_sums(out) == []
    assert (out / "lineage.json").read_bytes() == (checkpoint / "lineage.json").read_bytes()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["lineage", str(out)]) == 0
    assert "every file matches SHA256SUMS" in printed.getvalue() and "skm6_imu_i2c" in printed.getvalue()
    (out / "merged" / "config.json").write_text((out / "merged" / "config.json").read_text() + " ")
    assert verify_sums(out) == ["merged/config.json"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["lineage", str(out)]) == 1, "a changed file is reported"


def test_held_out_keeps_only_text_no_training_pair_produced(storage, tmp_path):
    """Two pairs share a datasheet: the SPK32 HAL (trained on) and a fork of it with its
    functions renamed (held out), as forks of a vendor HAL mapped to one datasheet are. Their
    sections carry the same datasheet text, so the fork's samples copy or nearly copy the
    HAL's. Held-out keeps only text no training pair produced (old behaviour: the in-domain
    and held-out sets shared samples, and the mixture dropped the HAL's own samples as
    contaminated by its fork)."""
    import shutil

    from spark_pipeline.corpus.integrity import EvalIndex, exact_key
    from spark_pipeline.settings import SAMPLE_DIR

    fork = tmp_path / "spk32_fork"
    shutil.copytree(SAMPLE_DIR / "repos" / "spk32_hal", fork)
    for source in fork.rglob("*.[ch]"):
        source.write_text(source.read_text().replace("hal_", "bsp_"))
    pairs = ["spk32_gpio_uart_hal", "spk32_bsp_fork", "aes128_accelerator"]
    entries = [sample_entry("spk32_gpio_uart_hal"),
               sample_entry("spk32_gpio_uart_hal", id="spk32_bsp_fork", repository={"path": str(fork)}, held_out=True),
               sample_entry("aes128_accelerator")]
    manifest = write_manifest(tmp_path / "pairs.yaml", entries)
    with dg.instance_for_test() as instance:
        def run(selection, partition=None, run_config=None):
            return dg.materialize(ASSETS, selection=selection, partition_key=partition, instance=instance,
                                  resources=dagster_resources(storage), run_config=run_config or {})

        run(["repo_datasheet_pairs"], run_config={"ops": {"repo_datasheet_pairs": {"config": {"manifest": str(manifest)}}}})
        for pair in pairs:
            run(["specmap_mappings", "section_chunks", "quality_samples"], pair)
        ev = run(["eval_sets"])
        mix = run(["training_mixture"])

    eval_dir = storage / "corpus" / "eval"
    in_domain, held = read_rows(eval_dir / "in_domain.parquet"), read_rows(eval_dir / "held_out.parquet")
    assert in_domain and held
    assert not {exact_key(r["text"]) for r in in_domain} & {exact_key(r["text"]) for r in held}, \
        "no text is in both evaluation sets"
    index = EvalIndex(held, 0.8)
    assert not [r["section_id"] for r in in_domain if index.matches(r)], "nor a near copy of one"

    fork_samples = read_rows(storage / "corpus" / "samples" / "spk32_bsp_fork.parquet")
    training_pair = read_rows(storage / "corpus" / "samples" / "spk32_gpio_uart_hal.parquet")

    def from_training_pair(sample):  # copied, nearly copied or contained by a sample of the HAL
        one = EvalIndex([sample], 0.8)
        return any(one.matches(t) for t in training_pair)

    shared_ids = {(r["section_id"], r["chunk_index"]) for r in fork_samples if from_training_pair(r)}
    assert shared_ids, "the fork's datasheet text is the HAL's"
    assert not shared_ids & {(r["section_id"], r["chunk_index"]) for r in held if r["pair_id"] == "spk32_bsp_fork"}
    assert any(r["pair_id"] == "aes128_accelerator" for r in held), "text no training pair produced stays held out"

    meta = ev.asset_materializations_for_node("eval_sets")[0].metadata
    summary = json.loads((eval_dir / "eval.json").read_text())
    cases = [d for d in read_rows(eval_dir / "duplicates.parquet") if d["scope"] == "held_out_shared"]
    assert meta["held_out_shared_with_training_pairs"].value == summary["held_out_shared_with_training_pairs"]["dropped"] \
        == len(cases) == len(shared_ids)
    by_kind = meta["held_out_shared_by_kind"].value
    assert by_kind == {k: summary["held_out_shared_with_training_pairs"][k] for k in ("exact", "near", "contained")}
    assert by_kind["exact"] > 0 and by_kind["near"] > 0 and sum(by_kind.values()) == len(cases)
    assert all(d["dropped"].startswith("spk32_bsp_fork:") and d["kept"].startswith("spk32_gpio_uart_hal:")
               for d in cases)
    held_dups = summary["duplicates_dropped"]["held_out"]
    assert len(held) + len(cases) + held_dups == len(fork_samples) + len(
        read_rows(storage / "corpus" / "samples" / "aes128_accelerator.parquet")), "every held-out sample accounted for"

    # the mixture: no held-out pair trains, and the HAL's samples no longer count as contaminated by its fork
    assert _checks(mix) == {"rows_end_with_eos": True, "seq_strictly_increasing": True,
                            "no_eval_sample_in_training": True, "no_duplicate_rows": True,
                            "manifest_counts_are_true": True}
    manifest_json = json.loads((storage / "corpus" / "mixture" / "manifest.json").read_text())
    rows = [r for s in manifest_json["shards"] for r in read_rows(storage / "corpus" / "mixture" / s["file"])]
    assert {r["pair_id"] for r in rows} == {"spk32_gpio_uart_hal"}
    assert not [c for c in read_rows(storage / "corpus" / "mixture" / "contamination.parquet")
                if c["eval_split"] == "held_out"]
