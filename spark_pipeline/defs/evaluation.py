"""Evaluation: ``checkpoints`` (one dynamic partition per checkpoint), ``checkpoint_eval``
(tables per checkpoint), ``evaluation_report`` (across checkpoints), the sensor that
registers new checkpoints and requests their evaluation, and the re-evaluation schedule."""

import json
from pathlib import Path

import dagster as dg

from spark_pipeline.config import write_resolved
from spark_pipeline.defs.resources import (
    AFTER_UPSTREAM,
    SparkConfig,
    SparkStorage,
    parquet_table_metadata,
    stage_asset,
    table_metadata,
)
from spark_pipeline.evaluation import stats
from spark_pipeline.evaluation.evaluate import EvalSettings, EvaluationError, evaluate_checkpoint
from spark_pipeline.evaluation.report import (
    COLUMN_DESCRIPTIONS,
    TABLE_COLUMNS,
    ReportError,
    build_report,
    examples_markdown,
    plotted_metrics,
    table_cells,
    withdraw,
    write_tables,
)
from spark_pipeline.plots import embed_png, sparkline_markdown
from spark_pipeline.records import sha256_file
from spark_pipeline.training.launch import base_model_folder, tokenizer_name
from spark_pipeline.training.runs import bucket_checkpoints, checkpoint_folder, discover, healthy
from spark_pipeline.training.settings import TrainingSettings

checkpoint_partitions = dg.DynamicPartitionsDefinition(name="checkpoints")
EVAL_CODE_VERSION = "3"


def discover_checkpoints(runs: Path) -> dict[str, Path]:
    """Complete, healthy checkpoints under ``<storage>/runs``, by partition key
    ``<name>.<run id>--checkpoint-<step>`` (:mod:`spark_pipeline.training.runs`)."""
    return discover(Path(runs).parent)


def _checkpoint_path(storage: SparkStorage, key: str) -> Path:
    """The checkpoint's local folder; a checkpoint that lives only in the bucket
    (``$SPARK_CHECKPOINT_URL``) is downloaded and verified first. Unhealthy ones are refused."""
    import os

    try:
        path = checkpoint_folder(storage.path(), key)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    if (path / "lineage.json").exists():
        if not healthy(path):
            raise dg.Failure(f"checkpoint {key!r} is marked UNHEALTHY ({(path / 'UNHEALTHY').read_text().strip()}); "
                             "it is not evaluated")
        return path
    url = os.environ.get("SPARK_CHECKPOINT_URL", "")
    if url:
        from spark_pipeline.training.gcs import download_checkpoint

        remote = bucket_checkpoints(url).get(key)
        if remote:
            return download_checkpoint(remote, path.parent.parent / "downloaded" / path.name)
    raise dg.Failure(f"checkpoint {key!r} not found at {path}" + (f" nor (healthy) under {url}" if url else ""))


@stage_asset(
    "evaluation",
    kinds={'pytorch'},
    partitions_def=checkpoint_partitions,
    deps=["train_hero"],
    code_version="1",
    description="One partition per healthy checkpoint, keyed {name}.{run id}--checkpoint-{step}, found under "
    "{storage}/runs/{name}/{run id}/checkpoints/ or in the bucket: its step, lineage and adapter hash.",
)
def checkpoints(context: dg.AssetExecutionContext, storage: SparkStorage):
    path = _checkpoint_path(storage, context.partition_key)
    lineage = json.loads((path / "lineage.json").read_text())
    state = json.loads((path / "trainer_state.json").read_text())
    digest = sha256_file(path / "adapter_model.safetensors")
    return dg.MaterializeResult(
        metadata={"step": state["step"], "path": dg.MetadataValue.path(str(path)), "adapter_sha256": digest,
                  "lineage": dg.MetadataValue.json(lineage), "mixture_hash": lineage.get("mixture_hash", ""),
                  "tokenized_cache": lineage.get("tokenized_cache", "")},
        data_version=dg.DataVersion(digest[:16]),
    )


def _code_context(storage: SparkStorage, lineage: dict) -> dict:
    """Header folders per pair (compile check) and the training mixture's n-grams (memorization)."""
    from spark_pipeline.evaluation.codecheck import NgramIndex, header_dirs
    from spark_pipeline.tokens.cache import open_cache

    include = {}
    for record in storage.path("pairs").glob("*/pair.json"):
        data = json.loads(record.read_text())
        include[data["id"]] = header_dirs(Path(data["repo_root"]))
    context = {"include_dirs": include}
    cache = storage.path("tokens", lineage.get("tokenized_cache", "-"))
    if (cache / ".done").exists():
        table = open_cache(cache)
        context["ngrams"] = NgramIndex(table.column("input_ids").to_pylist())
        context["ngram_key"] = lineage["tokenized_cache"]
    return context


def _table_metadata(rows: list[dict]) -> dg.MetadataValue:
    """The same table as a Dagster table, which the asset page shows inline (Markdown this
    long only opens behind a button)."""
    return table_metadata(table_cells(rows), TABLE_COLUMNS, COLUMN_DESCRIPTIONS)


def _spec_metadata(spec_rows: list[dict]) -> dict:
    """Spec-conditioned completion on the asset page: its table (gains with paired intervals)
    and the overall gains as plain numbers, which the Plots tab draws per checkpoint."""
    from spark_pipeline.evaluation import speccond

    if not spec_rows:
        return {"spec_conditioned": dg.MetadataValue.md("no spec-conditioned items: the held-out pairs gave none")}
    out = {"spec_conditioned": table_metadata(speccond.cells(spec_rows), speccond.TABLE_COLUMNS,
                                              speccond.COLUMN_DESCRIPTIONS),
           "spec_conditioned_note": dg.MetadataValue.md(speccond.NOTE)}
    for r in spec_rows:
        if r["category"] == "all":
            who = "base" if r["model"] == "base" else "adapter"
            for metric in speccond.METRICS:
                value = r.get(f"{metric}_gain")
                if isinstance(value, float) and value == value:
                    out[f"spec_conditioned/{who}/{metric}_gain"] = value
    return out


def _current_eval_sets(storage: SparkStorage) -> Path:
    """The evaluation sets' folder, when they were built from the pairs manifest in use."""
    from spark_pipeline.corpus.stages import check_pairs_manifest
    from spark_pipeline.records import read_json
    from spark_pipeline.specmap.pairs import PairError

    eval_dir = storage.path("corpus", "eval")
    try:
        check_pairs_manifest(storage.path(), read_json(eval_dir / "eval.json").get("pairs_manifest"),
                             f"the evaluation sets at {eval_dir}", "eval_sets")
    except PairError as exc:
        raise dg.Failure(str(exc)) from exc
    return eval_dir


@stage_asset(
    "evaluation",
    kinds={'pytorch', 'parquet'},
    partitions_def=checkpoint_partitions,
    deps=["checkpoints", "eval_sets"],
    code_version=EVAL_CODE_VERSION,
    description="§6.4-6.6 for one checkpoint: base and base+adapter on the in-domain and held-out sets — "
    "perplexity, teacher-forced suffix loss/top-1/top-5, generative token accuracy, BLEU-4, exact match, each "
    "with its 95% interval, and paired differences from the base. {storage}/evaluation/{checkpoint}/table.parquet "
    "and table.md; every sample's scores in samples.parquet, every generation in generations.parquet",
    check_specs=[dg.AssetCheckSpec("adapter_loaded", asset="checkpoint_eval", blocking=True,
                                   description="The adapter's config and weights match the digest in the "
                                   "checkpoint's lineage, the base model is the one it was trained on, and the "
                                   "adapter changes the logits; otherwise the evaluation fails, the checkpoint's "
                                   "earlier tables are withdrawn and nothing downstream runs.")],
)
def checkpoint_eval(context: dg.AssetExecutionContext, storage: SparkStorage, spark_config: SparkConfig):
    key = context.partition_key
    eval_dir = _current_eval_sets(storage)
    path = _checkpoint_path(storage, key)
    settings = TrainingSettings.load(spark_config.name())
    ev = EvalSettings.load(spark_config.name())
    lineage = json.loads((path / "lineage.json").read_text())
    tokenizer = lineage.get("tokenizer", settings.tokenizer)
    code_context = _code_context(storage, lineage)
    out = storage.path("evaluation", key)
    try:
        rows, records, sanity, (spec_rows, spec_records) = evaluate_checkpoint(
            path, base_model_folder(settings, storage.path()), eval_dir, tokenizer,
            settings.max_length, ev, key, cache_dir=storage.path("evaluation", "_base"), context=code_context,
            dtype=settings.dtype, progress=context.log.info)
    except EvaluationError as exc:
        raise dg.Failure(str(exc)) from exc
    if not sanity["passed"]:
        from spark_pipeline.release.build import withdraw_release

        withdrawn = withdraw(out, sanity)
        reason = f"the adapter did not load as trained ({'; '.join(sanity['reasons'])})"
        released = withdraw_release(storage.path("releases", key), f"checkpoint {key}: {reason}")
        raise dg.Failure(f"checkpoint {key}: {reason}; no numbers are reported"
                         + (f"; its earlier tables were withdrawn to {withdrawn}" if withdrawn else "")
                         + (f"; its release {storage.path('releases', key)} is marked WITHDRAWN"
                            + (f" ({released['bucket']})" if released.get("bucket") else "") if released else ""),
                         metadata={"sanity": dg.MetadataValue.json(sanity)})
    write_tables(out, rows, records, spec_rows, spec_records)
    write_resolved(out, spark_config.name())
    overall = {r["model"].split(":")[0] + "/" + r["split"]: round(r["perplexity"], 4) for r in rows
               if r["category"] == "all"}
    regressions = [f"{r['split']}/{r['category']}" for r in rows if r["flag"] == "regression"]
    few = sorted({r["category"] for r in rows if r["few_samples"] and r["category"] != "all"})
    if regressions:
        context.log.warning(f"{key}: worse than the base beyond the 95% interval on {regressions}")
    adapter_records = [r for r in records if r["model"] != "base"]
    return dg.MaterializeResult(
        metadata={**parquet_table_metadata(out / "table.parquet", descriptions=COLUMN_DESCRIPTIONS),
                  "rows": len(rows), "perplexity_overall": dg.MetadataValue.json(overall),
                  "table": _table_metadata(rows), **plotted_metrics(rows),
                  "path": dg.MetadataValue.path(str(out)),
                  "generations": dg.MetadataValue.path(str(out / "generations.parquet")),
                  "examples": dg.MetadataValue.md(examples_markdown(adapter_records)),
                  "regressions_vs_base": dg.MetadataValue.json(regressions),
                  "categories_with_few_samples": dg.MetadataValue.json(
                      {"below": ev.min_samples_per_category, "categories": few}),
                  "base_model": dg.MetadataValue.json(sanity["base_model"]), "dtype": settings.dtype,
                  "lineage_sha256": rows[0]["lineage_sha256"], "sanity": dg.MetadataValue.json(sanity),
                  "bleu4_signature": stats.bleu_signature(), **_spec_metadata(spec_rows)},
        check_results=[dg.AssetCheckResult(check_name="adapter_loaded", passed=True, description=f"checkpoint {key}",
                                           metadata={"partition": key,
                                                     "max_logit_difference": sanity["max_logit_difference"],
                                                     "adapter_digest": sanity["adapter_digest_actual"]})],
    )


@stage_asset(
    "evaluation",
    kinds={'parquet'},
    deps=["checkpoint_eval", "code_regression", "external_baselines"],
    code_version=EVAL_CODE_VERSION,
    automation_condition=AFTER_UPSTREAM,
    description="Every checkpoint's tables (and the external baselines') gathered: report.parquet, report.md and the plots (perplexity over "
    "checkpoints, per category, the improvement heatmap, token accuracy and BLEU-4), every number with its 95% "
    "interval; outlier checkpoints marked and left out of trends and winners; winners only outside the interval. "
    "{storage}/evaluation/report/",
    check_specs=[dg.AssetCheckSpec("no_perplexity_outliers", asset="evaluation_report", blocking=True,
                                   description="No checkpoint's in-domain perplexity departs from its run's robust "
                                   "trend (running median over the checkpoints by step) by more than outlier_factor "
                                   "and outlier_z robust SDs while its generative scores (else its training loss) "
                                   "stayed on theirs: the artifact signature. Outliers are marked in every table and "
                                   "plot and left out of winners; each names the evidence that fired."),
                 dg.AssetCheckSpec("no_regression_vs_base", asset="evaluation_report",
                                   description="The latest checkpoint's in-domain perplexity is not worse than the "
                                   "base model's beyond the 95% paired interval.")],
)
def evaluation_report(context: dg.AssetExecutionContext, storage: SparkStorage, spark_config: SparkConfig):
    try:
        report = build_report(storage.path(), EvalSettings.load(spark_config.name()))
    except ReportError as exc:
        raise dg.Failure(str(exc)) from exc
    if report.blocked:
        context.log.warning(f"left out, their last evaluation was blocked: {report.blocked}")
    if report.outliers:
        context.log.warning("perplexity artifacts (marked, left out of trends and winners): "
                            + "; ".join(f"{o['checkpoint']}: {o['evidence']}" for o in report.outliers))
    if report.corroborated:
        context.log.info("perplexity jumps that independent metrics moved with (not flagged): "
                         + "; ".join(f"{o['checkpoint']}: {o['evidence']}" for o in report.corroborated))
    newest = report.newest[0] if report.newest else "-"
    return dg.MaterializeResult(
        metadata={**parquet_table_metadata(report.out / "report.parquet", descriptions=COLUMN_DESCRIPTIONS),
                  "checkpoints": report.checkpoints, "rows": len(report.rows),
                  "bleu4_signature": stats.bleu_signature(),
                  "path": dg.MetadataValue.path(str(report.out)),
                  "perplexity_inline": dg.MetadataValue.md(sparkline_markdown(
                      report.perplexity_series, f"in-domain perplexity over the checkpoints of {newest}")),
                  "latest_vs_base": _table_metadata(report.latest_rows()),
                  "blocked": dg.MetadataValue.json(report.blocked),
                  "notes": dg.MetadataValue.md("\n\n".join(report.notes) or "-"),
                  "code_regression": dg.MetadataValue.json([{k: r.get(k) for k in (
                      "checkpoint", "model", "difficulty", "compile_rate", "pass_rate", "pass_rate_lo", "pass_rate_hi",
                      "pass_rate_vs_base_lo", "pass_rate_vs_base_hi")} for r in report.code_rows
                      if r["difficulty"] == "all"]),
                  "winners": dg.MetadataValue.json({c: w["winner"] or ("none (degenerate interval)" if w.get("degenerate")
                                                                 else "tie") for c, w in report.winners.items()}),
                  **{f"latest_{k}" if k == "spec_conditioned" else k: v
                     for k, v in _spec_metadata(report.latest_spec_rows()).items() if "/" not in k},
                  **{name: dg.MetadataValue.md(embed_png(p, name)) for name, p in report.plots.items()}},
        check_results=[dg.AssetCheckResult(check_name="no_perplexity_outliers", passed=not report.outliers,
                                           metadata={"flagged": dg.MetadataValue.json(report.outliers),
                                                     "corroborated": dg.MetadataValue.json(report.corroborated),
                                                     "points": dg.MetadataValue.json(report.points)}),
                       dg.AssetCheckResult(check_name="no_regression_vs_base", passed=not report.regressions,
                                           severity=dg.AssetCheckSeverity.WARN,
                                           metadata={"regressions": dg.MetadataValue.json(report.regressions)})],
    )


@dg.sensor(
    name="new_checkpoints_sensor",
    description="Registers each new checkpoint — under {storage}/runs/, or uploaded under $SPARK_CHECKPOINT_URL "
    "(gs://) — as a `checkpoints` partition and requests its evaluation.",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    asset_selection=["checkpoints", "checkpoint_eval", "code_regression"],
)
def new_checkpoints_sensor(context: dg.SensorEvaluationContext):
    import os

    from spark_pipeline import settings

    found = dict(discover_checkpoints(settings.storage_root() / "runs"))
    if os.environ.get("SPARK_CHECKPOINT_URL"):
        for key, url in bucket_checkpoints(os.environ["SPARK_CHECKPOINT_URL"]).items():
            found.setdefault(key, url)
    known = set(context.instance.get_dynamic_partitions(checkpoint_partitions.name))
    new = [k for k in found if k not in known]
    if not new:
        return dg.SkipReason(f"{len(found)} checkpoint(s), none new")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"eval:{k}", partition_key=k,
                                    asset_selection=[dg.AssetKey("checkpoints"), dg.AssetKey("checkpoint_eval"),
                                                     dg.AssetKey("code_regression")])
                      for k in new],
        dynamic_partitions_requests=[checkpoint_partitions.build_add_request(new)],
    )


@dg.schedule(
    name="reevaluation_schedule",
    cron_schedule="0 3 * * *",
    description="Nightly: re-evaluates every checkpoint whose tables predate the current evaluation sets or "
    "evaluation code (the run key carries both, so nothing unchanged runs again).",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    target=dg.AssetSelection.assets("checkpoint_eval"),
)
def reevaluation_schedule(context: dg.ScheduleEvaluationContext):
    from spark_pipeline import settings

    eval_json = settings.storage_root() / "corpus" / "eval" / "eval.json"
    if not eval_json.exists():
        return dg.SkipReason("no evaluation sets yet")
    import hashlib

    # every split's hash (in-domain, held-out, spec-conditioned): a change to any is a new evaluation
    splits = json.loads(eval_json.read_text())["sha256"]
    eval_version = hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()[:12]
    keys = context.instance.get_dynamic_partitions(checkpoint_partitions.name)
    return [dg.RunRequest(run_key=f"reeval:{k}:{eval_version}:{EVAL_CODE_VERSION}", partition_key=k,
                          asset_selection=[dg.AssetKey("checkpoint_eval")]) for k in keys]


@stage_asset(
    "evaluation",
    kinds={'parquet'},
    deps=["eval_sets"],
    code_version=EVAL_CODE_VERSION,
    description="§6.6 baselines: external models (an OpenAI-compatible endpoint such as vLLM, or Anthropic's API) "
    "on generative completion, when configured in the profile's evaluation.external_models. Answers are cached. "
    "{storage}/evaluation/external/table.parquet",
)
def external_baselines(context: dg.AssetExecutionContext, storage: SparkStorage, spark_config: SparkConfig):
    from spark_pipeline.evaluation.evaluate import load_eval_samples
    from spark_pipeline.evaluation.external import evaluate_external
    from spark_pipeline.tokens.tokenizer import load_tokenizer

    ev = EvalSettings.load(spark_config.name())
    settings = TrainingSettings.load(spark_config.name())
    specs = list(ev.external_models)
    out = storage.path("evaluation", "external")
    if not specs:
        context.log.info("no external models configured (evaluation.external_models): nothing to evaluate")
        (out / "table.parquet").unlink(missing_ok=True)
        return dg.MaterializeResult(metadata={"models": 0})
    tokenizer = load_tokenizer(tokenizer_name(settings.tokenizer, settings, storage.path()))
    try:
        samples = load_eval_samples(_current_eval_sets(storage), tokenizer, settings.max_length,
                                    ev.max_samples_per_category)
    except EvaluationError as exc:
        raise dg.Failure(str(exc)) from exc
    rows, records, usage = [], [], {}
    for spec in specs:
        context.log.info(f"external model {spec.name}: up to {ev.generation_samples_per_category} samples per category")
        model_rows, model_records, usage[spec.name] = evaluate_external(
            spec, samples, tokenizer, ev.max_new_tokens, ev.generation_samples_per_category, ev.split_fraction,
            storage.path("cache", "external"), ev)
        rows.extend(model_rows)
        records.extend(model_records)
    for row in rows + records:
        row.update({"checkpoint": "", "step": -1, "lineage_sha256": ""})
    write_tables(out, rows, records)
    write_resolved(out, spark_config.name())
    return dg.MaterializeResult(metadata={"models": len(specs), "rows": len(rows), "usage": dg.MetadataValue.json(usage),
                                          "table": _table_metadata(rows)})


@stage_asset(
    "evaluation",
    kinds={'parquet'},
    partitions_def=checkpoint_partitions,
    deps=["checkpoints"],
    code_version=EVAL_CODE_VERSION,
    description="§6.8 general-code regression: base and base+adapter write C++ solutions to FullStackBench-format "
    "problems, compiled with g++ and run under time and memory limits; compile and pass rates overall and by "
    "difficulty. {storage}/evaluation/{checkpoint}/code_regression.parquet",
)
def code_regression(context: dg.AssetExecutionContext, storage: SparkStorage, spark_config: SparkConfig):
    from spark_pipeline.evaluation.fullstack import code_regression_rows, write_code_regression

    key = context.partition_key
    path = _checkpoint_path(storage, key)
    settings = TrainingSettings.load(spark_config.name())
    ev = EvalSettings.load(spark_config.name())
    rows, examples, problems = code_regression_rows(path, base_model_folder(settings, storage.path()), key, settings,
                                                    ev, progress=context.log.info)
    out = storage.path("evaluation", key)
    write_code_regression(out, rows)
    overall = {r["model"]: {"compile_rate": r["compile_rate"], "pass_rate": r["pass_rate"],
                            "pass_rate_95": [r["pass_rate_lo"], r["pass_rate_hi"]]}
               for r in rows if r["difficulty"] == "all"}
    return dg.MaterializeResult(metadata={"problems": problems, "overall": dg.MetadataValue.json(overall),
                                          "first_outcomes": dg.MetadataValue.json(examples),
                                          "path": dg.MetadataValue.path(str(out / "code_regression.parquet"))})
