"""Corpus assets: ``section_chunks``, ``quality_samples`` (per pair), ``eval_sets`` and
``training_mixture`` (over all pairs)."""

from enum import Enum
from pathlib import Path

import dagster as dg
from pydantic import Field

from spark_pipeline.config import write_resolved
from spark_pipeline.corpus import checks
from spark_pipeline.corpus.evalsets import evaluation_sets
from spark_pipeline.corpus.mixture import assemble, general_samples, write_mixture
from spark_pipeline.corpus.parquet import (
    CHUNK_SCHEMA,
    DUPLICATE_SCHEMA,
    EVAL_SCHEMA,
    REJECTION_SCHEMA,
    SAMPLE_SCHEMA,
    SPEC_ITEM_SCHEMA,
    read_rows,
    write_table,
)
from spark_pipeline.corpus.settings import CorpusSettings
from spark_pipeline.corpus.specitems import spec_conditioned_items
from spark_pipeline.corpus.stages import (
    CorpusInputError,
    check_pairs_manifest,
    chunk_rows,
    current_samples,
    reason_counts,
    sample_rows,
)
from spark_pipeline.defs.pairs import PAIR_PARTITIONS_NOTE, pairs_partitions
from spark_pipeline.defs.resources import (
    AFTER_UPSTREAM,
    SparkConfig,
    SparkStorage,
    parquet_table_metadata,
    stage_asset,
)
from spark_pipeline.plots import bar_chart, embed_png, histogram
from spark_pipeline.records import atomic_write_json, read_json
from spark_pipeline.settings import SAMPLE_DIR
from spark_pipeline.specmap.pairs import PairError, current_registry, record_path, record_version


def _settings(config: SparkConfig) -> CorpusSettings:
    return CorpusSettings.load(config.name())


def _check_pair(storage: SparkStorage, pair_id: str) -> None:
    """The pair's manifest entry is the one its record was made from (a held-out flag or a
    category changed since fails here, naming what to materialize again)."""
    try:
        current_registry(storage.path(), pair_id)
    except PairError as exc:
        raise dg.Failure(str(exc)) from exc


def _ordered_samples(storage: SparkStorage, log) -> tuple[dict, list[dict], list[dict], dict, dict]:
    try:
        current = current_samples(storage.path())
    except (PairError, CorpusInputError) as exc:
        raise dg.Failure(str(exc)) from exc
    for pair_id, reason in current[4].items():
        log.warning(f"pair {pair_id!r} left out: {reason}")
    return current


@stage_asset(
    "corpus",
    kinds={'parquet'},
    partitions_def=pairs_partitions,
    deps=["specmap_mappings"],
    code_version="1",
    description="Stage 2 (§3.2): the pair's mapping file split at its section separators; large "
    "sections at // File: markers, then function, then statement boundaries. {storage}/corpus/chunks/{pair}.parquet" + PAIR_PARTITIONS_NOTE,
)
def section_chunks(context: dg.AssetExecutionContext, storage: SparkStorage, spark_config: SparkConfig):
    pair_id = context.partition_key
    _check_pair(storage, pair_id)
    settings = _settings(spark_config)
    mapping = storage.path("specmap", pair_id, "mapping.txt")
    sidecar = read_json(storage.path("specmap", pair_id, "mapping.json"))
    record = read_json(record_path(storage.path(), pair_id))
    if not mapping.exists() or not record:
        raise dg.Failure(f"pair {pair_id!r} has no mapping file at {mapping}: materialize specmap_mappings "
                         f"for this partition first")
    rows, rejected = chunk_rows(mapping, pair_id, record["domain_category"], settings)
    out = storage.path("corpus", "chunks")
    lineage = {"specmap_mappings": sidecar.get("mapping_sha256", "")[:16], "pair_revision": record["revision"],
               "pair_version": record_version(record)}
    digest = write_table(out / f"{pair_id}.parquet", rows, CHUNK_SCHEMA, lineage)
    write_table(out / f"{pair_id}.rejections.parquet", rejected, REJECTION_SCHEMA, lineage)
    boundaries = {b: sum(r["boundary"] == b for r in rows) for b in ("section", "file", "function", "statement")}
    return dg.MaterializeResult(
        metadata={"sections_in": len(sidecar.get("sections", [])), "chunks": len(rows),
                  "rejected": len(rejected), "rejections_by_reason": dg.MetadataValue.json(reason_counts(rejected)),
                  "boundaries": dg.MetadataValue.json(boundaries),
                  "characters": sum(len(r["text"]) for r in rows),
                  "workers": settings.chunking.workers_for(mapping.stat().st_size),
                  "path": dg.MetadataValue.path(str(out / f"{pair_id}.parquet")),
                  "lineage": dg.MetadataValue.json(lineage), **parquet_table_metadata(out / f"{pair_id}.parquet")},
        data_version=dg.DataVersion(digest[:16]),
    )


@stage_asset(
    "corpus",
    kinds={'parquet'},
    partitions_def=pairs_partitions,
    deps=["section_chunks"],
    code_version="1",
    description="Stage 3 (§3.2): garbage cleaning and the quality filter; every rejection kept with its "
    "reason. {storage}/corpus/samples/{pair}.parquet and corpus/rejections/{pair}.parquet" + PAIR_PARTITIONS_NOTE,
    check_specs=[dg.AssetCheckSpec("samples_within_length_bounds", asset="quality_samples",
                                   description="Every kept sample has 50..7,500 characters (the profile's bounds).")],
)
def quality_samples(context: dg.AssetExecutionContext, storage: SparkStorage, spark_config: SparkConfig):
    pair_id = context.partition_key
    _check_pair(storage, pair_id)
    settings = _settings(spark_config)
    chunks_path = storage.path("corpus", "chunks", f"{pair_id}.parquet")
    if not chunks_path.exists():
        raise dg.Failure(f"pair {pair_id!r} has no chunks at {chunks_path}: materialize section_chunks first")
    chunks = read_rows(chunks_path)
    kept, rejected = sample_rows(chunks, settings)
    carried = read_rows(storage.path("corpus", "chunks", f"{pair_id}.rejections.parquet"))
    all_rejected = carried + rejected
    from spark_pipeline.corpus.parquet import read_lineage
    from spark_pipeline.records import sha256_file

    lineage = {"section_chunks": sha256_file(chunks_path)[:16], **read_lineage(chunks_path)}
    digest = write_table(storage.path("corpus", "samples", f"{pair_id}.parquet"), kept, SAMPLE_SCHEMA, lineage)
    write_table(storage.path("corpus", "rejections", f"{pair_id}.parquet"), all_rejected, REJECTION_SCHEMA, lineage)
    lengths = [len(r["text"]) for r in kept]
    plot = histogram(storage.path("corpus", "plots", f"{pair_id}_lengths.png"), lengths,
                     f"{pair_id}: {len(kept)} kept samples", "characters")
    ok, bad = checks.samples_within_bounds(kept, settings.chunking.min_chars, settings.chunking.max_chars)
    categories: dict[str, int] = {}
    rules: dict[str, int] = {}
    for r in kept:
        categories[r["category"]] = categories.get(r["category"], 0) + 1
        rules[f"{r['category']} by {r['category_rule']}"] = rules.get(f"{r['category']} by {r['category_rule']}", 0) + 1
    yield dg.MaterializeResult(
        metadata={**parquet_table_metadata(storage.path("corpus", "samples", f"{pair_id}.parquet")),
                  "chunks_in": len(chunks), "kept": len(kept), "rejected": len(rejected),
                  "rejected_in_chunking": len(carried),
                  "rejections_by_reason": dg.MetadataValue.json(reason_counts(all_rejected)),
                  "categories": dg.MetadataValue.json(dict(sorted(categories.items()))),
                  "category_rules": dg.MetadataValue.json(dict(sorted(rules.items()))),
                  "control_chars_removed": sum(r.get("control_chars_removed", 0) for r in kept),
                  "characters_kept": sum(lengths),
                  "length_histogram": dg.MetadataValue.md(embed_png(plot, "kept sample lengths")),
                  "path": dg.MetadataValue.path(str(storage.path("corpus", "samples", f"{pair_id}.parquet"))),
                  "lineage": dg.MetadataValue.json(lineage)},
        data_version=dg.DataVersion(digest[:16]),
        check_results=[dg.AssetCheckResult(check_name="samples_within_length_bounds", passed=ok,
                                           description=f"pair {pair_id}",
                                           metadata={"partition": pair_id, "outside": dg.MetadataValue.json(bad[:20])})],
    )


@stage_asset(
    "corpus",
    kinds={'parquet'},
    deps=["quality_samples"],
    automation_condition=AFTER_UPSTREAM,
    code_version="3",
    description="§3.4: the in-domain set (stratified per category from the tail of each category's "
    "shards, kept out of training) and the held-out set (pairs flagged held_out, without the text a "
    "training pair also produced: the two sets are disjoint); beyond the paper, the spec-conditioned split "
    "(held-out pairs' mapped sections: datasheet text, code prefix, reference code). {storage}/corpus/eval/",
)
def eval_sets(context: dg.AssetExecutionContext, storage: SparkStorage, spark_config: SparkConfig):
    settings = _settings(spark_config)
    registry, domain, held_out, versions, skipped = _ordered_samples(storage, context.log)
    sets = evaluation_sets(domain, held_out, settings.eval)
    in_dups, out_dups, shared = sets.in_domain_duplicates, sets.held_out_duplicates, sets.held_out_shared
    out = storage.path("corpus", "eval")
    lineage = {"quality_samples": versions, "pairs_manifest": registry["entries_digest"]}
    rows_in = [{"split": "in_domain", **{k: r[k] for k in EVAL_SCHEMA.names if k != "split"}} for r in sets.in_domain]
    rows_out = [{"split": "held_out", **{k: r[k] for k in EVAL_SCHEMA.names if k != "split"}} for r in sets.held_out]
    h_in = write_table(out / "in_domain.parquet", rows_in, EVAL_SCHEMA, lineage)
    h_out = write_table(out / "held_out.parquet", rows_out, EVAL_SCHEMA, lineage)
    spec = spec_conditioned_items(_held_out_mappings(storage, registry, versions), domain,
                                  settings.eval.spec_conditioned, settings.cleaning, settings.eval.minhash_threshold,
                                  settings.eval.minhash_permutations)
    h_spec = write_table(out / "spec_conditioned.parquet", spec.items, SPEC_ITEM_SCHEMA, lineage)
    if not spec.items:
        context.log.warning("the spec-conditioned split is empty: no held-out pair has a section with datasheet text "
                            "and enough mapped code (spec-conditioned completion will not be evaluated)")
    write_table(out / "duplicates.parquet", [d.to_row("in_domain") for d in in_dups]
                + [d.to_row("held_out") for d in out_dups] + [d.to_row("held_out_shared") for d in shared]
                + [d.to_row("spec_conditioned") for d in spec.duplicates]
                + [d.to_row("spec_conditioned_shared") for d in spec.shared],
                DUPLICATE_SCHEMA, lineage)
    shared_by_kind = {kind: sum(d.kind == kind for d in shared) for kind in ("exact", "near", "contained")}
    per_category: dict[str, dict[str, int]] = {}
    for split, rows in (("in_domain", rows_in), ("held_out", rows_out)):
        for r in rows:
            per_category.setdefault(r["category"], {"in_domain": 0, "held_out": 0})[split] += 1
    spec_summary = {"items": len(spec.items), "per_pair": {p: sum(r["pair_id"] == p for r in spec.items)
                                                           for p in registry["held_out"] if p in versions},
                    "duplicates_dropped": len(spec.duplicates), "shared_with_training_pairs": len(spec.shared),
                    "capped": spec.capped}
    summary = {"pairs_manifest": registry["entries_digest"], "in_domain": len(rows_in), "held_out": len(rows_out),
               "spec_conditioned": spec_summary,
               "sha256": {"in_domain": h_in, "held_out": h_out, "spec_conditioned": h_spec},
               "duplicates_dropped": {"in_domain": len(in_dups), "held_out": len(out_dups)},
               "held_out_shared_with_training_pairs": {"dropped": len(shared), **shared_by_kind,
                                                       "cases": "duplicates.parquet (scope held_out_shared)"},
               "skipped_pairs": skipped, "per_category": dict(sorted(per_category.items())), "lineage": lineage}
    atomic_write_json(out / "eval.json", summary)
    write_resolved(out, spark_config.name())
    return dg.MaterializeResult(
        metadata={**parquet_table_metadata(out / "in_domain.parquet", out / "held_out.parquet"),
                  "in_domain_samples": len(rows_in), "held_out_samples": len(rows_out),
                  "spec_conditioned_items": len(spec.items),
                  "spec_conditioned": dg.MetadataValue.json(spec_summary),
                  "duplicates_dropped": dg.MetadataValue.json(summary["duplicates_dropped"]),
                  "held_out_shared_with_training_pairs": len(shared),
                  "held_out_shared_by_kind": dg.MetadataValue.json(shared_by_kind),
                  "skipped_pairs": dg.MetadataValue.json(skipped),
                  "per_category": dg.MetadataValue.json(summary["per_category"]),
                  "path": dg.MetadataValue.path(str(out)), "lineage": dg.MetadataValue.json(lineage)},
        data_version=dg.DataVersion(h_in[:8] + h_out[:8] + h_spec[:8]),
    )


def _held_out_mappings(storage: SparkStorage, registry: dict, versions: dict) -> dict[str, tuple[bytes, str]]:
    """The mapping file and category of every held-out pair whose samples are current (so its
    mapping is the one they were built from), in pipeline order."""
    from spark_pipeline.records import sha256_bytes

    found = {}
    for pair_id in registry["order"]:
        if pair_id not in registry["held_out"] or pair_id not in versions:
            continue
        data = storage.path("specmap", pair_id, "mapping.txt").read_bytes()
        expected = read_json(storage.path("specmap", pair_id, "mapping.json")).get("mapping_sha256")
        if expected and sha256_bytes(data) != expected:
            raise dg.Failure(f"pair {pair_id!r}: mapping.txt does not match the sha256 its sidecar records: "
                             "materialize specmap_mappings for it again")
        found[pair_id] = (data, registry["entries"][pair_id]["domain_category"])
    return found


class Recipe(Enum):
    domain_only = "domain_only"
    domain_general = "domain_general"


class MixtureConfig(dg.Config):
    recipe: Recipe | None = Field(default=None, description="domain_only | domain_general; unset: the profile's")
    general_fraction: float | None = Field(default=None, ge=0.0, le=1.0, description="share of general C (0.1-0.5 "
                                           "in the paper's sweep); unset: the profile's")
    general_pool: str | None = Field(default=None, description="folder of general C; unset: the bundled sample pool")


@stage_asset(
    "corpus",
    kinds={'parquet'},
    deps=["quality_samples", "eval_sets"],
    automation_condition=AFTER_UPSTREAM,
    code_version="1",
    description="Stage 4 (§3.2): samples in strict pipeline order (no shuffling, recorded as `seq`), cut "
    "to 2,048 tokens at 4 chars/token on a boundary, EOS appended, decontaminated against eval_sets, "
    "written as Parquet shards + manifest.json. {storage}/corpus/mixture/",
    check_specs=[
        dg.AssetCheckSpec("rows_end_with_eos", asset="training_mixture", description="Every row ends with the EOS text."),
        dg.AssetCheckSpec("seq_strictly_increasing", asset="training_mixture",
                          description="seq rises strictly across all shards in order."),
        dg.AssetCheckSpec("no_eval_sample_in_training", asset="training_mixture", blocking=True,
                          description="No training row is an evaluation sample (identity, hash or text)."),
        dg.AssetCheckSpec("no_duplicate_rows", asset="training_mixture", blocking=True,
                          description="No two training rows have the same normalised text."),
        dg.AssetCheckSpec("manifest_counts_are_true", asset="training_mixture", blocking=True,
                          description="The manifest's counts equal a recount of the written shards and case lists."),
    ],
)
def training_mixture(context: dg.AssetExecutionContext, config: MixtureConfig, storage: SparkStorage,
                     spark_config: SparkConfig):
    settings = _settings(spark_config)
    registry, domain, _, versions, skipped = _ordered_samples(storage, context.log)
    eval_dir = storage.path("corpus", "eval")
    if not (eval_dir / "eval.json").exists():
        raise dg.Failure(f"no evaluation sets at {eval_dir}: materialize eval_sets first")
    if not (eval_dir / "spec_conditioned.parquet").exists():
        raise dg.Failure(f"the evaluation sets at {eval_dir} predate the spec-conditioned split: materialize eval_sets")
    # every evaluation split takes part in the contamination check; a spec-conditioned item's text is its code
    eval_rows = [r for split in ("in_domain", "held_out", "spec_conditioned")
                 for r in read_rows(eval_dir / f"{split}.parquet")]
    recipe = config.recipe.value if config.recipe else settings.mixture.recipe
    fraction = settings.mixture.general_fraction if config.general_fraction is None else config.general_fraction
    general = []
    if recipe == "domain_general":
        pool = Path(config.general_pool) if config.general_pool else SAMPLE_DIR / "general_c"
        general = general_samples(pool, settings)
    try:
        result = assemble(domain, general, eval_rows, settings, recipe, fraction)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    eval_summary = read_json(eval_dir / "eval.json")
    try:
        check_pairs_manifest(storage.path(), eval_summary.get("pairs_manifest"), f"the evaluation sets at {eval_dir}",
                             "eval_sets")
    except PairError as exc:
        raise dg.Failure(str(exc)) from exc
    lineage = {"quality_samples": versions, "eval_sets": eval_summary.get("sha256", {}),
               "pairs_manifest": registry["entries_digest"]}
    manifest = write_mixture(storage.path("corpus", "mixture"), result, settings, lineage, recipe)
    write_resolved(storage.path("corpus", "mixture"), spark_config.name())
    if manifest["recipe"]["general_fraction_requested"] and \
            manifest["recipe"]["general_fraction_achieved"] < manifest["recipe"]["general_fraction_requested"] - 0.01:
        context.log.warning(f"general C pool too small: {manifest['recipe']['general_fraction_achieved']:.0%} "
                            f"achieved of {manifest['recipe']['general_fraction_requested']:.0%} requested")
    cats = manifest["categories"]
    plot = bar_chart(storage.path("corpus", "plots", "mixture_categories.png"), list(cats), list(cats.values()),
                     f"training mixture: {manifest['samples']} samples by category")
    eos = settings.mixture.eos
    seqs = [r["seq"] for r in result.rows]
    ok_eos, bad_eos = checks.rows_end_with_eos(result.rows, eos)
    ok_seq, bad_seq = checks.seq_strictly_increasing(seqs)
    ok_eval, bad_eval = checks.no_eval_in_training(result.rows, eval_rows, eos)
    ok_dup, bad_dup = checks.no_duplicates(result.rows, eos)
    mixture_dir = storage.path("corpus", "mixture")
    written = [r for shard in manifest["shards"] for r in read_rows(mixture_dir / shard["file"])]
    ok_counts, wrong = checks.manifest_matches_rows(manifest, written,
                                                    len(read_rows(mixture_dir / "duplicates.parquet")),
                                                    len(read_rows(mixture_dir / "contamination.parquet")))
    yield dg.MaterializeResult(
        metadata={**parquet_table_metadata(*(mixture_dir / shard["file"] for shard in manifest["shards"])),
                  "samples": manifest["samples"], "characters": manifest["characters"],
                  "estimated_tokens": manifest["estimated_tokens"], "shards": len(manifest["shards"]),
                  "recipe": dg.MetadataValue.json(manifest["recipe"]),
                  "categories": dg.MetadataValue.json(cats),
                  "category_plot": dg.MetadataValue.md(embed_png(plot, "samples per category")),
                  "contamination": dg.MetadataValue.json({k: v for k, v in manifest["contamination"].items()
                                                          if k != "cases"}),
                  "truncated": manifest["truncated"], "split_samples": manifest["split_samples"],
                  "duplicates": dg.MetadataValue.json({k: v for k, v in manifest["duplicates"].items() if k != "cases"}),
                  "evaluation_samples_removed": manifest["evaluation_samples_removed"],
                  "skipped_pairs": dg.MetadataValue.json(skipped),
                  "mixture_hash": manifest["mixture_hash"],
                  "manifest": dg.MetadataValue.path(str(storage.path("corpus", "mixture", "manifest.json"))),
                  "lineage": dg.MetadataValue.json(lineage)},
        data_version=dg.DataVersion(manifest["mixture_hash"][:16]),
        check_results=[
            dg.AssetCheckResult(check_name="rows_end_with_eos", passed=ok_eos,
                                metadata={"bad_seq": dg.MetadataValue.json(bad_eos[:20])}),
            dg.AssetCheckResult(check_name="seq_strictly_increasing", passed=ok_seq,
                                metadata={"bad_positions": dg.MetadataValue.json(bad_seq[:20])}),
            dg.AssetCheckResult(check_name="no_eval_sample_in_training", passed=ok_eval,
                                metadata={"bad_seq": dg.MetadataValue.json(bad_eval[:20])}),
            dg.AssetCheckResult(check_name="no_duplicate_rows", passed=ok_dup,
                                metadata={"bad_seq": dg.MetadataValue.json(bad_dup[:20])}),
            dg.AssetCheckResult(check_name="manifest_counts_are_true", passed=ok_counts,
                                metadata={"wrong": dg.MetadataValue.json(wrong)}),
        ],
    )
