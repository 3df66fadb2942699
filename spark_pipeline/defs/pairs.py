"""``repo_datasheet_pairs``: the pairs manifest, one dynamic partition per pair."""

from collections import Counter
from pathlib import Path

import dagster as dg
from pydantic import Field

from spark_pipeline import settings
from spark_pipeline.defs.resources import SparkStorage
from spark_pipeline.specmap.pairs import ManifestError, prepare_pairs, read_manifest, record_path

pairs_partitions = dg.DynamicPartitionsDefinition(name="pairs")


class PairsConfig(dg.Config):
    manifest: str = Field(default="", description="Pairs manifest (YAML); empty means "
                          "$SPARK_PAIRS_MANIFEST or the bundled sample")


def manifest_path(config: PairsConfig) -> Path:
    return Path(config.manifest).expanduser().resolve() if config.manifest else settings.default_manifest()


@dg.asset(
    group_name="specmap",
    description="Reads the pairs manifest, checks out every repository at its pinned revision, "
    "records each pair under <storage>/pairs/<id>/ and registers one `pairs` partition per pair.",
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


@dg.sensor(
    name="new_pairs_sensor",
    description="Watches the pairs manifest: registers new pairs, then requests SpecMap for every "
    "pair partition that has a record but no mapping yet. Nothing else is re-run.",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    asset_selection=["repo_datasheet_pairs", "specmap_mappings"],
)
def new_pairs_sensor(context: dg.SensorEvaluationContext):
    manifest = settings.default_manifest()
    try:
        wanted = [p.id for p in read_manifest(manifest)[0]]  # bad entries are repo_datasheet_pairs' to report
    except ManifestError as exc:
        return dg.SkipReason(str(exc))
    registered = set(context.instance.get_dynamic_partitions(pairs_partitions.name))
    missing = [pid for pid in wanted if pid not in registered]
    if missing:
        return dg.RunRequest(run_key=f"pairs:{','.join(missing)}", asset_selection=[dg.AssetKey("repo_datasheet_pairs")])
    storage = settings.storage_root()
    done = context.instance.get_materialized_partitions(dg.AssetKey("specmap_mappings"))
    requests = []
    for pid in wanted:
        if not record_path(storage, pid).exists():
            continue
        if pid not in done:
            requests.append(dg.RunRequest(run_key=f"specmap:{pid}", partition_key=pid,
                                          asset_selection=[dg.AssetKey("specmap_mappings")]))
    return requests or dg.SkipReason("every pair in the manifest is registered and mapped")
