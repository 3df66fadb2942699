"""Evaluation: ``checkpoints`` (one dynamic partition per checkpoint), ``checkpoint_eval``
(tables per checkpoint), ``evaluation_report`` (across checkpoints), the sensor that
registers new checkpoints and requests their evaluation, and the re-evaluation schedule."""

import json
import math
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from spark_pipeline.defs.resources import SparkConfig, SparkStorage
from spark_pipeline.evaluation.evaluate import (
    EvalSettings,
    EvaluationError,
    evaluate_checkpoint,
    perplexity_outliers,
)
from spark_pipeline.plots import _plt, embed_png, save
from spark_pipeline.records import atomic_write_text, sha256_file
from spark_pipeline.training.launch import base_model_folder, tokenizer_name
from spark_pipeline.training.runs import bucket_checkpoints, checkpoint_folder, discover, healthy
from spark_pipeline.training.settings import TrainingSettings

checkpoint_partitions = dg.DynamicPartitionsDefinition(name="checkpoints")
EVAL_CODE_VERSION = "1"


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


@dg.asset(
    group_name="evaluation",
    partitions_def=checkpoint_partitions,
    deps=["train_hero"],
    code_version="1",
    description="One partition per healthy checkpoint, keyed <name>.<run id>--checkpoint-<step>, found under "
    "<storage>/runs/<name>/<run id>/checkpoints/ or in the bucket: its step, lineage and adapter hash.",
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


def _table_markdown(rows: list[dict]) -> str:
    cols = ["model", "split", "category", "samples", "perplexity", "ppl_reduction_vs_base", "tf_loss", "tf_top1", "tf_top5",
            "gen_token_accuracy", "bleu4", "exact_match", "compile_rate", "memorized_longest_max"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(f"{r.get(c, float('nan')):.3f}" if isinstance(r.get(c, float("nan")), float)
                                     else str(r.get(c)) for c in cols) + " |")
    return "\n".join(out)


@dg.asset(
    group_name="evaluation",
    partitions_def=checkpoint_partitions,
    deps=["checkpoints", "eval_sets"],
    code_version=EVAL_CODE_VERSION,
    description="§6.4-6.6 for one checkpoint: base and base+adapter on the in-domain and held-out sets — "
    "perplexity, teacher-forced suffix loss/top-1/top-5, generative token accuracy, BLEU-4, exact match. "
    "<storage>/evaluation/<checkpoint>/table.parquet and table.md",
    check_specs=[dg.AssetCheckSpec("adapter_loaded", asset="checkpoint_eval", blocking=True,
                                   description="The adapter file matches the checkpoint's lineage and changes the "
                                   "logits; otherwise the evaluation fails and nothing downstream runs.")],
)
def checkpoint_eval(context: dg.AssetExecutionContext, storage: SparkStorage, spark_config: SparkConfig):
    key = context.partition_key
    path = _checkpoint_path(storage, key)
    settings = TrainingSettings.load(spark_config.name())
    ev = EvalSettings.load(spark_config.name())
    lineage = json.loads((path / "lineage.json").read_text())
    tokenizer = lineage.get("tokenizer", settings.tokenizer)
    context = _code_context(storage, lineage)
    try:
        rows, sanity = evaluate_checkpoint(path, base_model_folder(settings, storage.path()),
                                           storage.path("corpus", "eval"), tokenizer, settings.max_length, ev, key,
                                           cache_dir=storage.path("evaluation", "_base"), context=context)
    except EvaluationError as exc:
        raise dg.Failure(str(exc)) from exc
    if not sanity["passed"]:
        raise dg.Failure(f"checkpoint {key}: the adapter did not load as trained; no numbers are reported",
                         metadata={"sanity": dg.MetadataValue.json(sanity)})
    out = storage.path("evaluation", key)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "table.parquet")
    markdown = _table_markdown(rows)
    atomic_write_text(out / "table.md", markdown + "\n")
    overall = {r["model"].split(":")[0] + "/" + r["split"]: round(r["perplexity"], 4) for r in rows
               if r["category"] == "all"}
    return dg.MaterializeResult(
        metadata={"rows": len(rows), "perplexity_overall": dg.MetadataValue.json(overall),
                  "table": dg.MetadataValue.md(markdown), "path": dg.MetadataValue.path(str(out)),
                  "lineage_sha256": rows[0]["lineage_sha256"], "sanity": dg.MetadataValue.json(sanity)},
        check_results=[dg.AssetCheckResult(check_name="adapter_loaded", passed=True,
                                           metadata={"max_logit_difference": sanity["max_logit_difference"]})],
    )


def _plots(rows: list[dict], out: Path) -> dict[str, Path]:
    plt = _plt()
    plots = {}
    adapter = [r for r in rows if r["model"].startswith("adapter") and r["category"] == "all"]
    base = {r["split"]: r["perplexity"] for r in rows if r["model"] == "base" and r["category"] == "all"}
    fig, ax = plt.subplots(figsize=(5.5, 3), dpi=80)
    for split, colour in (("in_domain", "#1565c0"), ("held_out", "#c62828")):
        pts = sorted((r["step"], r["perplexity"]) for r in adapter if r["split"] == split)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour, label=f"{split} (adapter)")
        if split in base:
            ax.axhline(base[split], color=colour, linestyle=":", label=f"{split} (base)")
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("perplexity", fontsize=8)
    ax.set_title("perplexity over checkpoints", fontsize=9)
    ax.legend(fontsize=7)
    plots["perplexity_over_checkpoints"] = save(fig, out / "perplexity_over_checkpoints.png")

    latest = max((r["step"] for r in adapter), default=None)
    cats = sorted({r["category"] for r in rows if r["category"] != "all"})
    if latest is not None and cats:
        fig, ax = plt.subplots(figsize=(6, 3), dpi=80)
        width = 0.4
        for k, (model_filter, label) in enumerate(((lambda m: m == "base", "base"),
                                                   (lambda m: m.startswith("adapter"), f"adapter @ {latest}"))):
            vals = []
            for c in cats:
                match = [r["perplexity"] for r in rows if model_filter(r["model"]) and r["category"] == c
                         and r["split"] == "in_domain" and (r["step"] == latest or r["model"] == "base")]
                vals.append(match[0] if match else 0)
            ax.bar([i + k * width for i in range(len(cats))], vals, width, label=label)
        ax.set_xticks([i + width / 2 for i in range(len(cats))], cats, rotation=30, ha="right", fontsize=7)
        ax.set_title("in-domain perplexity per category", fontsize=9)
        ax.legend(fontsize=7)
        plots["perplexity_per_category"] = save(fig, out / "perplexity_per_category.png")

        steps = sorted({r["step"] for r in adapter})
        grid = []
        for c in cats:
            b = [r["perplexity"] for r in rows if r["model"] == "base" and r["category"] == c and r["split"] == "in_domain"]
            line = []
            for s in steps:
                a = [r["perplexity"] for r in rows if r["model"].startswith("adapter") and r["category"] == c
                     and r["split"] == "in_domain" and r["step"] == s]
                line.append((b[0] - a[0]) / b[0] * 100 if a and b and b[0] else float("nan"))
            grid.append(line)
        fig, ax = plt.subplots(figsize=(5.5, 0.35 * len(cats) + 1.2), dpi=80)
        im = ax.imshow(grid, aspect="auto", cmap="RdYlGn")
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=7)
        ax.set_yticks(range(len(cats)), cats, fontsize=7)
        ax.set_title("perplexity reduction vs base (%)", fontsize=9)
        fig.colorbar(im, ax=ax)
        plots["improvement_heatmap"] = save(fig, out / "improvement_heatmap.png")

        externals = sorted({r["model"] for r in rows if r["model"].startswith("external:")})
        series = [(lambda m: m == "base", "base"), (lambda m: m.startswith("adapter"), "adapter")] + \
            [((lambda m, e=e: m == e), e) for e in externals]
        bar = 0.8 / len(series)
        fig, axes = plt.subplots(1, 2, figsize=(7, 3), dpi=80)
        for ax, metric in zip(axes, ("gen_token_accuracy", "bleu4"), strict=True):
            for k, (model_filter, label) in enumerate(series):
                vals = []
                for c in cats:
                    match = [r[metric] for r in rows if model_filter(r["model"]) and r["category"] == c
                             and r["split"] == "in_domain" and (r["step"] == latest or r["model"] == "base")]
                    vals.append(0 if not match or math.isnan(match[0]) else match[0])
                ax.bar([i + k * bar for i in range(len(cats))], vals, bar, label=label)
            ax.set_xticks([i + 0.4 - bar / 2 for i in range(len(cats))], cats, rotation=30, ha="right", fontsize=6)
            ax.set_title(metric, fontsize=9)
            ax.legend(fontsize=6)
        plots["generation_per_category"] = save(fig, out / "generation_per_category.png")
    return plots


def category_winners(rows: list[dict]) -> dict[str, dict]:
    """Per in-domain category, the model with the highest generative token accuracy among the
    base, the latest checkpoint's adapter and the external models (§6.6 "winner")."""
    adapters = [r for r in rows if r["model"].startswith("adapter")]
    latest = max((r["step"] for r in adapters), default=None)
    contenders = [r for r in rows if r["split"] == "in_domain" and r["category"] != "all"
                  and (r["model"] == "base" or r["model"].startswith("external:")
                       or (r["model"].startswith("adapter") and r["step"] == latest))
                  and not math.isnan(r["gen_token_accuracy"])]
    winners: dict[str, dict] = {}
    for r in sorted(contenders, key=lambda r: r["model"]):
        best = winners.get(r["category"])
        if best is None or r["gen_token_accuracy"] > best["gen_token_accuracy"]:
            winners[r["category"]] = r
    return dict(sorted(winners.items()))


@dg.asset(
    group_name="evaluation",
    deps=["checkpoint_eval", "code_regression", "external_baselines"],
    code_version=EVAL_CODE_VERSION,
    description="Every checkpoint's tables (and the external baselines') gathered: report.parquet, report.md and the plots (perplexity over "
    "checkpoints, per category, the improvement heatmap, token accuracy and BLEU-4). <storage>/evaluation/report/",
    check_specs=[dg.AssetCheckSpec("no_perplexity_outliers", asset="evaluation_report",
                                   description="No checkpoint's perplexity departs from both neighbours' and from "
                                   "its training loss by more than the configured factor.")],
)
def evaluation_report(context: dg.AssetExecutionContext, storage: SparkStorage, spark_config: SparkConfig):
    ev = EvalSettings.load(spark_config.name())
    tables = sorted(p for p in storage.path("evaluation").glob("*/table.parquet")
                    if p.parent.name not in ("report", "_base", "external")) if storage.path("evaluation").exists() else []
    if not tables:
        raise dg.Failure("no evaluation tables yet: materialize checkpoint_eval for some checkpoints first")
    rows = [r for t in tables for r in pq.read_table(t).to_pylist()]
    external = storage.path("evaluation", "external", "table.parquet")
    if external.exists():
        rows += pq.read_table(external).to_pylist()
    base_rows = {(r["split"], r["category"]): r for r in rows if r["model"] == "base"}
    rows = [r for r in rows if r["model"] != "base"] + list(base_rows.values())
    for r in rows:
        r.setdefault("gen_errors", 0)
        r.setdefault("compile_rate", float("nan"))
        r.setdefault("memorized_longest_max", -1)
        r.setdefault("memorized_longest_mean", float("nan"))
        r.setdefault("ppl_reduction_vs_base", float("nan"))
    out = storage.path("evaluation", "report")
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "report.parquet")
    atomic_write_text(out / "report.md", _table_markdown(sorted(rows, key=lambda r: (r["model"], r["split"], r["category"]))) + "\n")
    plots = _plots(rows, out)
    code_tables = sorted(storage.path("evaluation").glob("*/code_regression.parquet"))
    code_rows = [r for t in code_tables for r in pq.read_table(t).to_pylist()]
    if code_rows:
        pq.write_table(pa.Table.from_pylist(code_rows), out / "code_regression.parquet")
    points = []
    for r in sorted((r for r in rows if r["model"].startswith("adapter") and r["category"] == "all"
                     and r["split"] == "in_domain"), key=lambda r: r["step"]):
        state = checkpoint_folder(storage.path(), r["checkpoint"]) / "trainer_state.json"
        losses = json.loads(state.read_text())["health"]["losses"] if state.exists() else []
        points.append({"checkpoint": r["checkpoint"], "step": r["step"], "perplexity": r["perplexity"],
                       "train_loss": losses[-1] if losses else None})
    outliers = perplexity_outliers(points, ev.outlier_factor)
    winners = category_winners(rows)
    atomic_write_text(out / "winners.md", "| category | winner | token accuracy |\n|---|---|---|\n" + "".join(
        f"| {c} | {w['model']} | {w['gen_token_accuracy']:.3f} |\n" for c, w in winners.items()))
    return dg.MaterializeResult(
        metadata={"checkpoints": len(tables), "rows": len(rows), "path": dg.MetadataValue.path(str(out)),
                  "code_regression": dg.MetadataValue.json([{k: r[k] for k in ("checkpoint", "model", "difficulty",
                                                                                "compile_rate", "pass_rate")}
                                                            for r in code_rows if r["difficulty"] == "all"]),
                  "winners": dg.MetadataValue.json({c: w["model"] for c, w in winners.items()}),
                  **{name: dg.MetadataValue.md(embed_png(p, name)) for name, p in plots.items()}},
        check_results=[dg.AssetCheckResult(check_name="no_perplexity_outliers", passed=not outliers,
                                           metadata={"flagged": dg.MetadataValue.json(outliers),
                                                     "points": dg.MetadataValue.json(points)})],
    )


@dg.sensor(
    name="new_checkpoints_sensor",
    description="Registers each new checkpoint — under <storage>/runs/, or uploaded under $SPARK_CHECKPOINT_URL "
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
    eval_version = json.loads(eval_json.read_text())["sha256"]["in_domain"][:12]
    keys = context.instance.get_dynamic_partitions(checkpoint_partitions.name)
    return [dg.RunRequest(run_key=f"reeval:{k}:{eval_version}:{EVAL_CODE_VERSION}", partition_key=k,
                          asset_selection=[dg.AssetKey("checkpoint_eval")]) for k in keys]


@dg.asset(
    group_name="evaluation",
    deps=["eval_sets"],
    code_version=EVAL_CODE_VERSION,
    description="§6.6 baselines: external models (an OpenAI-compatible endpoint such as vLLM, or Anthropic's API) "
    "on generative completion, when configured in the profile's evaluation.external_models. Answers are cached. "
    "<storage>/evaluation/external/table.parquet",
)
def external_baselines(context: dg.AssetExecutionContext, storage: SparkStorage, spark_config: SparkConfig):
    from spark_pipeline.evaluation.evaluate import load_eval_samples
    from spark_pipeline.evaluation.external import ExternalModel, evaluate_external
    from spark_pipeline.tokens.tokenizer import load_tokenizer

    ev = EvalSettings.load(spark_config.name())
    settings = TrainingSettings.load(spark_config.name())
    specs = [ExternalModel(**dict(m)) for m in ev.external_models]
    out = storage.path("evaluation", "external")
    if not specs:
        context.log.info("no external models configured (evaluation.external_models): nothing to evaluate")
        (out / "table.parquet").unlink(missing_ok=True)
        return dg.MaterializeResult(metadata={"models": 0})
    tokenizer = load_tokenizer(tokenizer_name(settings.tokenizer, settings, storage.path()))
    try:
        samples = load_eval_samples(storage.path("corpus", "eval"), tokenizer, settings.max_length,
                                    ev.max_samples_per_category)
    except EvaluationError as exc:
        raise dg.Failure(str(exc)) from exc
    rows, usage = [], {}
    for spec in specs:
        model_rows, usage[spec.name] = evaluate_external(spec, samples, tokenizer, ev.max_new_tokens,
                                                         ev.generation_samples_per_category, ev.split_fraction,
                                                         storage.path("cache", "external"))
        rows.extend(model_rows)
    for row in rows:
        row.update({"checkpoint": "", "step": -1, "lineage_sha256": ""})
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "table.parquet")
    return dg.MaterializeResult(metadata={"models": len(specs), "rows": len(rows), "usage": dg.MetadataValue.json(usage),
                                          "table": dg.MetadataValue.md(_table_markdown(rows))})


@dg.asset(
    group_name="evaluation",
    partitions_def=checkpoint_partitions,
    deps=["checkpoints"],
    code_version=EVAL_CODE_VERSION,
    description="§6.8 general-code regression: base and base+adapter write C++ solutions to FullStackBench-format "
    "problems, compiled with g++ and run under time and memory limits; compile and pass rates overall and by "
    "difficulty. <storage>/evaluation/<checkpoint>/code_regression.parquet",
)
def code_regression(context: dg.AssetExecutionContext, storage: SparkStorage, spark_config: SparkConfig):
    from peft import PeftModel

    from spark_pipeline.evaluation.fullstack import (
        evaluate,
        extract_code,
        load_problems,
        prompt_for,
        summarise,
    )
    from spark_pipeline.evaluation.metrics import greedy_generate
    from spark_pipeline.tokens.tokenizer import load_tokenizer
    from spark_pipeline.training.model import load_base_model

    key = context.partition_key
    path = _checkpoint_path(storage, key)
    settings = TrainingSettings.load(spark_config.name())
    cfg = dict(EvalSettings.load(spark_config.name()).code_regression)
    problems = load_problems(cfg.get("problems") or None)
    lineage = json.loads((path / "lineage.json").read_text())
    tokenizer = load_tokenizer(lineage.get("tokenizer", settings.tokenizer))
    base_path = base_model_folder(settings, storage.path())
    models = {"base": load_base_model(str(base_path)).eval(),
              f"adapter:{key}": PeftModel.from_pretrained(load_base_model(str(base_path)), str(path)).eval()}
    rows, examples = [], {}
    for name, model in models.items():
        def solve(problem, model=model):
            ids = greedy_generate(model, tokenizer.encode(prompt_for(problem)), int(cfg["max_new_tokens"]),
                                  tokenizer.eos_id)
            return extract_code(tokenizer.decode(ids))

        outcomes = evaluate(solve, problems, float(cfg["time_limit_s"]), int(cfg["memory_mb"]))
        examples[name] = [o.reason for o in outcomes][:3]
        for difficulty, summary in sorted(summarise(outcomes).items()):
            rows.append({"checkpoint": key, "model": name, "difficulty": difficulty, **summary,
                         "lineage_sha256": sha256_file(path / "lineage.json")})
    out = storage.path("evaluation", key)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "code_regression.parquet")
    atomic_write_text(out / "code_regression.md", "| model | difficulty | problems | compile rate | pass rate |\n"
                      "|---|---|---|---|---|\n" + "".join(
                          f"| {r['model']} | {r['difficulty']} | {r['problems']} | {r['compile_rate']:.3f} | "
                          f"{r['pass_rate']:.3f} |\n" for r in rows))
    overall = {r["model"]: {"compile_rate": r["compile_rate"], "pass_rate": r["pass_rate"]}
               for r in rows if r["difficulty"] == "all"}
    return dg.MaterializeResult(metadata={"problems": len(problems), "overall": dg.MetadataValue.json(overall),
                                          "first_outcomes": dg.MetadataValue.json(examples),
                                          "path": dg.MetadataValue.path(str(out / "code_regression.parquet"))})
