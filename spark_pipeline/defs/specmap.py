"""``specmap_mappings``: SpecMap M1–M4 for one pair partition, with its asset checks."""


import dagster as dg

from spark_pipeline.defs.pairs import PAIR_PARTITIONS_NOTE, pairs_partitions
from spark_pipeline.defs.resources import SparkStorage, SpecMapJudge, stage_asset
from spark_pipeline.specmap.ctags import CtagsError
from spark_pipeline.specmap.judge import STATUSES, JudgeError
from spark_pipeline.specmap.mapping_file import check_mapping, write_mapping
from spark_pipeline.specmap.pairs import PairError, files_at_revision, load_resolved, tree_hash
from spark_pipeline.specmap.pipeline import SpecMapConfig, run_specmap
from spark_pipeline.specmap.report import markdown_preview, status_plot
from spark_pipeline.specmap.semantic import SemanticError

CHECK_STATUS = "every_section_has_status"
CHECK_PATHS = "file_paths_exist_at_revision"


class SpecMapRunConfig(dg.Config):
    chunk_words: int = 350
    max_folders: int = 4
    max_files: int | None = None
    """At most this many files per section; unset: the file model's fitted cap."""
    max_symbols: int = 8
    max_excerpt_lines: int = 150


@stage_asset(
    "specmap",
    kinds={'python'},
    partitions_def=pairs_partitions,
    pool="specmap_llm",  # the judge's endpoint: `dagster instance concurrency set specmap_llm N` (docs/deploy.md)
    deps=["repo_datasheet_pairs"],
    description="SpecMap (paper §3.2 stage 1) for one pair: M1 folders, M2 files, M3 Universal Ctags "
    "symbols, M4 sequential validation. Writes {storage}/specmap/{pair}/mapping.txt and mapping.json." + PAIR_PARTITIONS_NOTE,
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(CHECK_STATUS, asset="specmap_mappings",
                          description="Every datasheet section has a status: implemented, partial, not_implemented or "
                                      "not_applicable."),
        dg.AssetCheckSpec(CHECK_PATHS, asset="specmap_mappings",
                          description="Every `// File:` path in the mapping file exists in the repository at the pinned revision."),
    ],
)
def specmap_mappings(context: dg.AssetExecutionContext, config: SpecMapRunConfig, storage: SparkStorage,
                     judge: SpecMapJudge):
    pair_id = context.partition_key
    root = storage.path()
    try:
        model = judge.build_model()
    except (ValueError, OSError) as exc:
        raise dg.Failure(description=f"SpecMap's file model could not be loaded: {exc}") from exc
    try:
        resolved = load_resolved(root, pair_id)
        if not resolved.is_git and tree_hash(resolved.repo_root) != resolved.revision.removeprefix("tree:"):
            raise PairError(f"pair {pair_id!r}: {resolved.repo_root} changed since it was registered; "
                            "materialize repo_datasheet_pairs again")
        judge_impl = judge.build(root / "cache" / "judge")
        cfg = SpecMapConfig(chunk_words=config.chunk_words, max_folders=config.max_folders,
                            max_files=config.max_files, max_symbols=config.max_symbols,
                            max_excerpt_lines=config.max_excerpt_lines)
        step = {"next": 0.1}

        def progress(done: int, total: int) -> None:
            if done / total >= step["next"] or done == total:
                context.log.info(f"{pair_id}: {done}/{total} sections mapped")
                step["next"] = done / total + 0.1

        result = run_specmap(resolved, judge_impl, cfg, progress, cache_dir=root / "cache" / "specmap_index",
                             semantic=judge.build_semantic(), model=model)
    except (PairError, CtagsError, JudgeError, SemanticError) as exc:
        # An earlier mapping of this pair is no longer current: remove it, so that the corpus
        # stages leave the pair out instead of training on what the failed run replaced.
        for name in ("mapping.json", "mapping.txt"):
            stale = root / "specmap" / pair_id / name
            if stale.exists():
                stale.unlink()
                context.log.warning(f"{pair_id}: removed the earlier {name}; the pair is left out of the corpus "
                                    "until SpecMap succeeds for it")
        raise dg.Failure(description=str(exc)) from exc

    out_dir = root / "specmap" / pair_id
    meta = write_mapping(result, out_dir, cfg.max_excerpt_lines, cfg.context_lines)
    for rejection in result.rejections:
        context.log.warning(rejection.message)
    for warning in result.warnings:
        context.log.warning(f"sectioning: {warning}")
    mapping_text = (out_dir / "mapping.txt").read_text(encoding="utf-8")

    checks = check_mapping(mapping_text, meta["sections"], files_at_revision(resolved))
    stats = meta["stats"]
    plot = status_plot(meta, out_dir / "status.png")
    yield dg.MaterializeResult(
        metadata={
            "sections": stats["sections"],
            "mapped_folders": stats["mapped_folders"],
            "mapped_files": stats["mapped_files"],
            "mapped_symbols": stats["mapped_symbols"],
            "coverage": dg.MetadataValue.float(stats["coverage"]),
            "status_counts": dg.MetadataValue.json({k: stats[k] for k in STATUSES}),
            "sectioning_warnings": dg.MetadataValue.json(meta["warnings"]),
            "index_seconds": stats["index_seconds"],
            "index_cached": stats["index_cached"],
            "judge": meta["judge"],
            "judge_tokens": meta["judge_usage"]["tokens"],
            "judge_usage": dg.MetadataValue.json(meta["judge_usage"]),
            "rejected_files": len(result.rejections),
            "rejections": dg.MetadataValue.json([r.to_dict() for r in result.rejections][:50]),
            "revision": resolved.revision,
            "mapping_file": dg.MetadataValue.path(str(out_dir / "mapping.txt")),
            "sidecar": dg.MetadataValue.path(str(out_dir / "mapping.json")),
            "mapping_sha256": meta["mapping_sha256"],
            "seconds": stats["seconds"],
            "preview": dg.MetadataValue.md(markdown_preview(meta, mapping_text, plot)),
        },
        data_version=dg.DataVersion(meta["mapping_sha256"][:16]),
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_STATUS, passed=checks["status_ok"], description=f"pair {context.partition_key}",
                metadata={"partition": context.partition_key, "sections": checks["sections"],
                          "without_status": dg.MetadataValue.json(checks["without_status"][:20])}),
            dg.AssetCheckResult(
                check_name=CHECK_PATHS, passed=checks["paths_ok"], description=f"pair {context.partition_key}",
                metadata={"partition": context.partition_key, "file_markers": checks["file_markers"],
                          "missing": dg.MetadataValue.json(checks["missing_paths"][:50])}),
        ],
    )
