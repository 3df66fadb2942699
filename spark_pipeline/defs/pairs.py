"""``repo_datasheet_pairs``: the pairs manifest, one dynamic partition per pair."""

from collections import Counter
from pathlib import Path

import dagster as dg
from pydantic import Field

from spark_pipeline import settings
from spark_pipeline.defs.resources import SparkStorage, stage_asset
from spark_pipeline.specmap.pairs import ManifestError, prepare_pairs, read_manifest, record_path

pairs_partitions = dg.DynamicPartitionsDefinition(name="pairs")
PAIR_PARTITIONS_NOTE = (" Partitions: the pairs `repo_datasheet_pairs` registered; materialize it first (Dagster refuses a "
                        "pair that is not registered before this code runs; `python -m spark_pipeline pairs` lists them).")


class PairsConfig(dg.Config):
    manifest: str | None = Field(default=None, description="Pairs manifest (YAML); unset: "
                                 "$SPARK_PAIRS_MANIFEST or the bundled sample")


def manifest_path(config: PairsConfig) -> Path:
    return Path(config.manifest).expanduser().resolve() if config.manifest else settings.default_manifest()


@stage_asset(
    "specmap",
    kinds={'git', 'yaml'},
    description="Reads the pairs manifest, checks out every repository at its pinned revision, "
    "records each pair under {storage}/pairs/{id}/ and registers one `pairs` partition per pair.",
    code_version="1",
)
def repo_datasheet_pairs(context: dg.AssetExecutionContext, config: PairsConfig,
                         storage: SparkStorage) -> dg.MaterializeResult:
    manifest = manifest_path(config)
    try:
        registry = prepare_pairs(manifest, storage.path(), log=context.log)
    except ManifestError as exc:
        raise dg.Failure(description=str(exc)) from exc
    if not registry.records:
        raise dg.Failure(description=f"no pair of {manifest} could be prepared:\n"
                         + "\n".join(f.message for f in registry.failures))
    existing = set(context.instance.get_dynamic_partitions(pairs_partitions.name))
    new = [pid for pid in registry.records if pid not in existing]
    if new:
        context.instance.add_dynamic_partitions(pairs_partitions.name, new)
        context.log.info(f"registered {len(new)} new pair partition(s): {', '.join(new)}")
    stale = sorted(existing - set(registry.records) - {f.input for f in registry.failures})
    categories = Counter(r["domain_category"] for r in registry.records.values())
    rows = ["| pair | category | revision | held out |", "| --- | --- | --- | --- |"]
    rows += [f"| {pid} | {r['domain_category']} | `{r['revision'][:18]}` | {'yes' if r['held_out'] else ''} |"
             for pid, r in registry.records.items()]
    metadata = {
        "manifest": dg.MetadataValue.path(str(manifest)),
        "pairs": len(registry.records),
        "new_partitions": dg.MetadataValue.json(new),
        "failed_pairs": len(registry.failures),
        "held_out_pairs": sum(r["held_out"] for r in registry.records.values()),
        "categories": dg.MetadataValue.json(dict(sorted(categories.items()))),
        "pairs_table": dg.MetadataValue.md("\n".join(rows)),
        "pair_versions": dg.MetadataValue.json(registry.versions),
    }
    if registry.failures:
        metadata["failures"] = dg.MetadataValue.md("\n".join(f"- **{f.input}**: {f.message}"
                                                             for f in registry.failures))
    if stale:
        metadata["partitions_not_in_manifest"] = dg.MetadataValue.json(stale)
    import hashlib
    import json

    version = hashlib.sha256(json.dumps(registry.versions, sort_keys=True).encode()).hexdigest()[:16]
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))


def _manifest_in_use(instance: dg.DagsterInstance) -> tuple[Path, dict]:
    """The manifest the pairs were last registered from (a manifest given in the launch config
    stays the one watched), else $SPARK_PAIRS_MANIFEST or the bundled sample; and the run
    config that reads it again."""
    event = instance.get_latest_materialization_event(dg.AssetKey("repo_datasheet_pairs"))
    entry = event.asset_materialization.metadata.get("manifest") if event and event.asset_materialization else None
    manifest = Path(entry.value) if entry is not None else settings.default_manifest()
    config = {"ops": {"repo_datasheet_pairs": {"config": {"manifest": str(manifest)}}}}
    return manifest, config


PER_PAIR = ["specmap_mappings", "section_chunks", "quality_samples"]


@dg.sensor(
    name="new_pairs_sensor",
    description="Watches the pairs manifest (the one the pairs were last registered from): registers new pairs, "
    "then requests SpecMap, chunks and quality samples for every registered pair that has no samples yet. "
    "With automation on (spark_automation_sensor), the evaluation sets and the mixture follow.",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    asset_selection=["repo_datasheet_pairs", *PER_PAIR],
)
def new_pairs_sensor(context: dg.SensorEvaluationContext):
    manifest, run_config = _manifest_in_use(context.instance)
    try:
        wanted = [p.id for p in read_manifest(manifest)[0]]  # bad entries are repo_datasheet_pairs' to report
    except ManifestError as exc:
        return dg.SkipReason(f"{manifest}: {exc}")
    registered = set(context.instance.get_dynamic_partitions(pairs_partitions.name))
    missing = [pid for pid in wanted if pid not in registered]
    if missing:
        return dg.RunRequest(run_key=f"pairs:{manifest}:{','.join(missing)}", run_config=run_config,
                             asset_selection=[dg.AssetKey("repo_datasheet_pairs")])
    storage = settings.storage_root()
    done = context.instance.get_materialized_partitions(dg.AssetKey("quality_samples"))
    requests, unprepared = [], []
    for pid in wanted:
        if not record_path(storage, pid).exists():
            unprepared.append(pid)
        elif pid not in done:
            requests.append(dg.RunRequest(run_key=f"pair:{pid}", partition_key=pid,
                                          asset_selection=[dg.AssetKey(a) for a in PER_PAIR]))
    if requests:
        return requests
    if unprepared:
        return dg.SkipReason(f"{len(unprepared)} pair(s) of {manifest} have no record (their preparation failed; "
                             f"see repo_datasheet_pairs' metadata): {', '.join(unprepared)}")
    return dg.SkipReason(f"every pair of {manifest} is registered, mapped and sampled")


spark_automation_sensor = dg.AutomationConditionSensorDefinition(
    "spark_automation_sensor", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.STOPPED,
    description="Declarative automation: eval_sets and training_mixture after new quality samples, "
    "evaluation_report after new checkpoint tables. Switch it on with the two sensors for hands-free runs.")
