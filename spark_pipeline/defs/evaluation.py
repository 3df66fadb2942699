"""Evaluation: ``checkpoints`` (one dynamic partition per checkpoint), ``checkpoint_eval``
(tables per checkpoint), ``evaluation_report`` (across checkpoints), the sensor that
registers new checkpoints and requests their evaluation, and the re-evaluation schedule."""

import json
import math
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from spark_pipeline.defs.resources import (
    AFTER_UPSTREAM,
    OWNERS,
    SparkConfig,
    SparkStorage,
    parquet_table_metadata,
    table_metadata,
)
from spark_pipeline.evaluation.evaluate import (
    EvalSettings,
    EvaluationError,
    evaluate_checkpoint,
    perplexity_outliers,
)
from spark_pipeline.plots import _plt, embed_png, save, sparkline_markdown
from spark_pipeline.records import atomic_write_text, sha256_file
from spark_pipeline.training.launch import base_model_folder, tokenizer_name
from spark_pipeline.training.runs import bucket_checkpoints, checkpoint_folder, discover, healthy
from spark_pipeline.training.settings import TrainingSettings

checkpoint_partitions = dg.DynamicPartitionsDefinition(name="checkpoints")
EVAL_CODE_VERSION = "2"


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
    kinds={'pytorch'},
    owners=OWNERS,
    tags={"stage": "evaluation"},
    group_name="evaluation",
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


COLUMNS_WITH_INTERVALS = {"perplexity": ("perplexity_lo", "perplexity_hi"),
                          "ppl_reduction_vs_base": ("ppl_reduction_vs_base_lo", "ppl_reduction_vs_base_hi"),
                          "tf_top1": ("tf_top1_lo", "tf_top1_hi"), "tf_top5": ("tf_top5_lo", "tf_top5_hi"),
                          "gen_token_accuracy": ("gen_token_accuracy_lo", "gen_token_accuracy_hi"),
                          "bleu4": ("bleu4_lo", "bleu4_hi"), "exact_match": ("exact_match_lo", "exact_match_hi"),
                          "compile_rate": ("compile_rate_lo", "compile_rate_hi")}
GENERATION_COLUMNS = ["checkpoint", "step", "model", "split", "category", "pair_id", "sample_id", "prompt_sha256",
                      "prompt_tokens", "reference", "generation", "reference_ids", "generation_ids", "token_accuracy",
                      "exact_match", "bleu4", "bleu_stats", "compiles", "memorized_longest"]


def _fmt(value, interval=None) -> str:
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "nan"
    text = f"{value:.3f}"
    if interval and all(isinstance(v, float) and math.isfinite(v) for v in interval):
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


TABLE_COLUMNS = ["model", "split", "category", "samples", "flag", "perplexity", "ppl_reduction_vs_base", "tf_loss",
                 "tf_top1", "tf_top5", "gen_samples", "gen_token_accuracy", "bleu4", "exact_match", "compile_rate",
                 "memorized_longest_max"]


def _table_cells(rows: list[dict]) -> list[dict[str, str]]:
    """Each row's cells as text, each metric with its 95% interval in brackets (bootstrap over
    samples; Wilson for exact match and compile rate; for ppl_reduction_vs_base the paired
    interval against the base). One rendering for the Markdown file and the UI's table."""
    out = []
    for r in rows:
        cells = {}
        for c in TABLE_COLUMNS:
            value = r.get(c, float("nan"))
            if c == "samples" and r.get("few_samples"):
                value = f"{value} (few)"
            bounds = COLUMNS_WITH_INTERVALS.get(c)
            cells[c] = _fmt(value, (r.get(bounds[0]), r.get(bounds[1])) if bounds else None)
        out.append(cells)
    return out


def _table_markdown(rows: list[dict]) -> str:
    out = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    out += ["| " + " | ".join(cells[c] for c in TABLE_COLUMNS) + " |" for cells in _table_cells(rows)]
    return "\n".join(out)


def _table_metadata(rows: list[dict]) -> dg.MetadataValue:
    """The same table as a Dagster table, which the asset page shows inline (Markdown this
    long only opens behind a button)."""
    return table_metadata(_table_cells(rows), TABLE_COLUMNS)


PLOTTED_METRICS = ("perplexity", "ppl_reduction_vs_base", "gen_token_accuracy", "bleu4")


def _plotted_metadata(rows: list[dict]) -> dict[str, float]:
    """The adapter's overall numbers as plain floats: the UI's Plots tab draws every numeric
    metadata key across materializations, here one point per checkpoint partition."""
    out = {}
    for r in rows:
        if r["model"] != "base" and r["category"] == "all":
            for metric in PLOTTED_METRICS:
                value = r.get(metric)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    out[f"{r['split']}/{metric}"] = float(value)
    return out


def _withdraw(out: Path, reason: dict) -> Path | None:
    """A blocked re-evaluation: the checkpoint's earlier tables are moved aside (never shown as
    current) and BLOCKED says why."""
    import datetime

    if not out.exists():
        out.mkdir(parents=True)
    current = [p for p in out.iterdir() if p.is_file() and p.name != "BLOCKED"]
    moved = None
    if current:
        moved = out / ("withdrawn-" + datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f"))
        moved.mkdir()
        for p in current:
            p.rename(moved / p.name)
    atomic_write_text(out / "BLOCKED", json.dumps({**reason, "withdrawn_to": str(moved) if moved else None},
                                                  indent=2, default=str) + "\n")
    return moved


def _examples_markdown(records: list[dict], per_category: int = 2, chars: int = 240) -> str:
    """A few generations per in-domain category, beside their references."""
    seen: dict[str, int] = {}
    parts = []
    for r in records:
        if not r["generated"] or r["split"] != "in_domain" or seen.get(r["category"], 0) >= per_category:
            continue
        seen[r["category"]] = seen.get(r["category"], 0) + 1
        parts.append(f"**{r['category']}** · `{r['sample_id']}` · token accuracy {r['token_accuracy']:.3f}, "
                     f"BLEU-4 {r['bleu4']:.1f}\n\nreference:\n```\n{r['reference'][:chars]}\n```\n"
                     f"generation:\n```\n{r['generation'][:chars]}\n```\n")
    return "\n".join(parts) or "(no generations)"


@dg.asset(
    kinds={'pytorch', 'parquet'},
    owners=OWNERS,
    tags={"stage": "evaluation"},
    group_name="evaluation",
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
    path = _checkpoint_path(storage, key)
    settings = TrainingSettings.load(spark_config.name())
    ev = EvalSettings.load(spark_config.name())
    lineage = json.loads((path / "lineage.json").read_text())
    tokenizer = lineage.get("tokenizer", settings.tokenizer)
    code_context = _code_context(storage, lineage)
    out = storage.path("evaluation", key)
    try:
        rows, records, sanity = evaluate_checkpoint(
            path, base_model_folder(settings, storage.path()), storage.path("corpus", "eval"), tokenizer,
            settings.max_length, ev, key, cache_dir=storage.path("evaluation", "_base"), context=code_context,
            dtype=settings.dtype, progress=context.log.info)
    except EvaluationError as exc:
        raise dg.Failure(str(exc)) from exc
    if not sanity["passed"]:
        withdrawn = _withdraw(out, sanity)
        raise dg.Failure(f"checkpoint {key}: the adapter did not load as trained ({'; '.join(sanity['reasons'])}); "
                         "no numbers are reported" + (f"; its earlier tables were withdrawn to {withdrawn}"
                                                      if withdrawn else ""),
                         metadata={"sanity": dg.MetadataValue.json(sanity)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "BLOCKED").unlink(missing_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "table.parquet")
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in GENERATION_COLUMNS} for r in records if r["generated"]]),
                   out / "generations.parquet")
    pq.write_table(pa.Table.from_pylist(records), out / "samples.parquet")
    markdown = _table_markdown(rows)
    atomic_write_text(out / "table.md", markdown + "\n")
    overall = {r["model"].split(":")[0] + "/" + r["split"]: round(r["perplexity"], 4) for r in rows
               if r["category"] == "all"}
    regressions = [f"{r['split']}/{r['category']}" for r in rows if r["flag"] == "regression"]
    few = sorted({r["category"] for r in rows if r["few_samples"] and r["category"] != "all"})
    if regressions:
        context.log.warning(f"{key}: worse than the base beyond the 95% interval on {regressions}")
    adapter_records = [r for r in records if r["model"] != "base"]
    return dg.MaterializeResult(
        metadata={**parquet_table_metadata(out / "table.parquet"),
                  "rows": len(rows), "perplexity_overall": dg.MetadataValue.json(overall),
                  "table": _table_metadata(rows), **_plotted_metadata(rows),
                  "path": dg.MetadataValue.path(str(out)),
                  "generations": dg.MetadataValue.path(str(out / "generations.parquet")),
                  "examples": dg.MetadataValue.md(_examples_markdown(adapter_records)),
                  "regressions_vs_base": dg.MetadataValue.json(regressions),
                  "categories_with_few_samples": dg.MetadataValue.json(
                      {"below": ev.min_samples_per_category, "categories": few}),
                  "base_model": dg.MetadataValue.json(sanity["base_model"]), "dtype": settings.dtype,
                  "lineage_sha256": rows[0]["lineage_sha256"], "sanity": dg.MetadataValue.json(sanity)},
        check_results=[dg.AssetCheckResult(check_name="adapter_loaded", passed=True, description=f"checkpoint {key}",
                                           metadata={"partition": key,
                                                     "max_logit_difference": sanity["max_logit_difference"],
                                                     "adapter_digest": sanity["adapter_digest_actual"]})],
    )


def _run_of(row: dict) -> str:
    """The training run a row's checkpoint belongs to (``hero.<run id>``)."""
    return (row.get("checkpoint") or "").split("--")[0]


def _latest(rows: list[dict]) -> tuple[str, int] | None:
    """(run, step) of the newest run's latest checkpoint that is not an outlier."""
    adapters = [r for r in rows if r["model"].startswith("adapter") and r.get("flag") != "outlier"]
    if not adapters:
        return None
    run = max(_run_of(r) for r in adapters)
    return run, max(r["step"] for r in adapters if _run_of(r) == run)


def _is_latest(row: dict, latest) -> bool:
    return latest is not None and row["model"].startswith("adapter") and (_run_of(row), row["step"]) == latest


def _errors(values: list[float], rows: list[dict], metric: str):
    """Matplotlib yerr (2 x n) from the rows' interval columns; 0 where there is none."""
    lo = [v - r.get(f"{metric}_lo", v) if r and math.isfinite(r.get(f"{metric}_lo", float("nan"))) else 0
          for v, r in zip(values, rows, strict=True)]
    hi = [r.get(f"{metric}_hi", v) - v if r and math.isfinite(r.get(f"{metric}_hi", float("nan"))) else 0
          for v, r in zip(values, rows, strict=True)]
    return [[max(0, x) for x in lo], [max(0, x) for x in hi]]


def _plots(rows: list[dict], out: Path) -> dict[str, Path]:
    """Every point with its 95% interval; outlier checkpoints drawn as red crosses, outside the
    trend line."""
    plt = _plt()
    plots = {}
    adapter = [r for r in rows if r["model"].startswith("adapter") and r["category"] == "all"]
    base = {r["split"]: r for r in rows if r["model"] == "base" and r["category"] == "all"}
    fig, ax = plt.subplots(figsize=(5.5, 3), dpi=80)
    for split, colour in (("in_domain", "#1565c0"), ("held_out", "#c62828")):
        for run in sorted({_run_of(r) for r in adapter}):
            pts = sorted((r for r in adapter if r["split"] == split and _run_of(r) == run), key=lambda r: r["step"])
            good = [r for r in pts if r.get("flag") != "outlier"]
            bad = [r for r in pts if r.get("flag") == "outlier"]
            if good:
                vals = [r["perplexity"] for r in good]
                ax.errorbar([r["step"] for r in good], vals, yerr=_errors(vals, good, "perplexity"), marker="o",
                            ms=3, capsize=2, color=colour, label=f"{split} ({run.split('.')[-1]})")
            if bad:
                ax.plot([r["step"] for r in bad], [r["perplexity"] for r in bad], "x", color="red", ms=8,
                        label=f"{split}: outlier (excluded)")
        if split in base:
            b = base[split]
            ax.axhline(b["perplexity"], color=colour, linestyle=":", label=f"{split} (base)")
            if math.isfinite(b.get("perplexity_lo", float("nan"))):
                ax.axhspan(b["perplexity_lo"], b["perplexity_hi"], color=colour, alpha=0.08)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("perplexity (95% interval)", fontsize=8)
    ax.set_title("perplexity over checkpoints", fontsize=9)
    ax.legend(fontsize=6)
    plots["perplexity_over_checkpoints"] = save(fig, out / "perplexity_over_checkpoints.png")

    latest = _latest(rows)
    cats = sorted({r["category"] for r in rows if r["category"] != "all"})
    if latest is not None and cats:
        def pick(model_filter, c, split="in_domain"):
            match = [r for r in rows if model_filter(r) and r["category"] == c and r["split"] == split]
            return match[0] if match else None

        is_base = lambda r: r["model"] == "base"  # noqa: E731
        is_latest = lambda r: _is_latest(r, latest)  # noqa: E731
        fig, ax = plt.subplots(figsize=(6, 3), dpi=80)
        width = 0.4
        for k, (model_filter, label) in enumerate(((is_base, "base"), (is_latest, f"adapter @ {latest[1]}"))):
            picked = [pick(model_filter, c) for c in cats]
            vals = [r["perplexity"] if r else 0 for r in picked]
            ax.bar([i + k * width for i in range(len(cats))], vals, width, label=label,
                   yerr=_errors(vals, picked, "perplexity"), capsize=2)
        ax.set_xticks([i + width / 2 for i in range(len(cats))], cats, rotation=30, ha="right", fontsize=7)
        ax.set_title("in-domain perplexity per category (95% interval)", fontsize=9)
        ax.legend(fontsize=7)
        plots["perplexity_per_category"] = save(fig, out / "perplexity_per_category.png")

        steps = sorted({r["step"] for r in adapter if _run_of(r) == latest[0] and r.get("flag") != "outlier"})
        grid = []
        for c in cats:
            b = pick(is_base, c)
            line = []
            for s in steps:
                a = pick(lambda r, s=s: r["model"].startswith("adapter") and _run_of(r) == latest[0]
                         and r["step"] == s, c)
                line.append((b["perplexity"] - a["perplexity"]) / b["perplexity"] * 100
                            if a and b and b["perplexity"] else float("nan"))
            grid.append(line)
        fig, ax = plt.subplots(figsize=(5.5, 0.35 * len(cats) + 1.2), dpi=80)
        im = ax.imshow(grid, aspect="auto", cmap="RdYlGn")
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=7)
        ax.set_yticks(range(len(cats)), cats, fontsize=7)
        ax.set_title(f"perplexity reduction vs base (%), run {latest[0].split('.')[-1]}", fontsize=9)
        fig.colorbar(im, ax=ax)
        plots["improvement_heatmap"] = save(fig, out / "improvement_heatmap.png")

        externals = sorted({r["model"] for r in rows if r["model"].startswith("external:")})
        series = [(is_base, "base"), (is_latest, "adapter")] + \
            [((lambda r, e=e: r["model"] == e), e) for e in externals]
        bar = 0.8 / len(series)
        fig, axes = plt.subplots(1, 2, figsize=(7, 3), dpi=80)
        for ax, metric in zip(axes, ("gen_token_accuracy", "bleu4"), strict=True):
            for k, (model_filter, label) in enumerate(series):
                picked = [pick(model_filter, c) for c in cats]
                vals = [0 if not r or math.isnan(r[metric]) else r[metric] for r in picked]
                ax.bar([i + k * bar for i in range(len(cats))], vals, bar, label=label,
                       yerr=_errors(vals, picked, metric), capsize=2)
            ax.set_xticks([i + 0.4 - bar / 2 for i in range(len(cats))], cats, rotation=30, ha="right", fontsize=6)
            ax.set_title(f"{metric} (95% interval)", fontsize=9)
            ax.legend(fontsize=6)
        plots["generation_per_category"] = save(fig, out / "generation_per_category.png")
    return plots


def category_winners(rows: list[dict], records: list[dict], resamples: int = 1000) -> dict[str, dict]:
    """Per in-domain category, the model with the highest generative token accuracy among the
    base, the newest run's latest non-outlier checkpoint and the external models (§6.6
    "winner") — but only when it beats the runner-up outside the 95% interval of their paired
    difference on the same samples. Otherwise the category is a tie, whatever the order of
    names. Returns per category ``winner`` (a model or None), ``contenders`` (best first, with
    values), ``difference`` and its ``interval``."""
    from spark_pipeline.evaluation import stats

    latest = _latest(rows)
    contenders = [r for r in rows if r["split"] == "in_domain" and r["category"] != "all"
                  and (r["model"] == "base" or r["model"].startswith("external:") or _is_latest(r, latest))
                  and math.isfinite(r["gen_token_accuracy"])]
    by_model: dict[tuple[str, str], dict[str, float]] = {}
    for rec in records:
        if rec.get("generated") and rec["split"] == "in_domain" and rec.get("token_accuracy") is not None:
            by_model.setdefault((rec["model"], rec["category"]), {})[rec["sample_id"]] = rec["token_accuracy"]
    result: dict[str, dict] = {}
    for category in sorted({r["category"] for r in contenders}):
        ranked = sorted((r for r in contenders if r["category"] == category),
                        key=lambda r: r["gen_token_accuracy"], reverse=True)
        entry = {"contenders": [(r["model"], r["gen_token_accuracy"]) for r in ranked], "winner": None,
                 "difference": float("nan"), "interval": (float("nan"), float("nan"))}
        if len(ranked) >= 2:
            best, second = ranked[0], ranked[1]
            entry["difference"] = best["gen_token_accuracy"] - second["gen_token_accuracy"]
            a = by_model.get((best["model"], category), {})
            b = by_model.get((second["model"], category), {})
            common = sorted(set(a) & set(b))
            if entry["difference"] > 0 and len(common) >= 2:
                entry["interval"] = stats.paired(stats.mean_statistic([a[i] for i in common]),
                                                 stats.mean_statistic([b[i] for i in common]), len(common), resamples)
                if stats.excludes_zero(entry["interval"]):
                    entry["winner"] = best["model"]
        result[category] = entry
    return result


def _winners_markdown(winners: dict[str, dict]) -> str:
    lines = ["| category | winner | token accuracy of the contenders | best − runner-up [95% paired interval] |",
             "|---|---|---|---|"]
    for category, w in winners.items():
        lo, hi = w["interval"]
        if math.isnan(w["difference"]):
            diff = "(one contender)"
        elif w["difference"] == 0:
            diff = "0.000 (equal)"
        else:
            diff = f"{w['difference']:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else " (no paired samples)")
        lines.append(f"| {category} | {w['winner'] or 'tie'} | "
                     + ", ".join(f"{m} {v:.3f}" for m, v in w["contenders"]) + f" | {diff} |")
    return "\n".join(lines) + "\n"


def mark_outliers(rows: list[dict], outliers: list[dict]) -> list[dict]:
    """Flag every row of an outlier checkpoint (its tables are kept, but marked)."""
    flagged = {o["checkpoint"] for o in outliers}
    for r in rows:
        if r.get("checkpoint") in flagged and r["model"].startswith("adapter"):
            r["flag"] = "outlier"
    return rows


@dg.asset(
    kinds={'parquet'},
    owners=OWNERS,
    tags={"stage": "evaluation"},
    group_name="evaluation",
    deps=["checkpoint_eval", "code_regression", "external_baselines"],
    code_version=EVAL_CODE_VERSION,
    automation_condition=AFTER_UPSTREAM,
    description="Every checkpoint's tables (and the external baselines') gathered: report.parquet, report.md and the plots (perplexity over "
    "checkpoints, per category, the improvement heatmap, token accuracy and BLEU-4), every number with its 95% "
    "interval; outlier checkpoints marked and left out of trends and winners; winners only outside the interval. "
    "{storage}/evaluation/report/",
    check_specs=[dg.AssetCheckSpec("no_perplexity_outliers", asset="evaluation_report", blocking=True,
                                   description="No checkpoint's perplexity departs from both neighbours' and from "
                                   "its training loss by more than the configured factor (outliers are marked in "
                                   "every table and plot, and left out of winners)."),
                 dg.AssetCheckSpec("no_regression_vs_base", asset="evaluation_report",
                                   description="The latest checkpoint's in-domain perplexity is not worse than the "
                                   "base model's beyond the 95% paired interval.")],
)
def evaluation_report(context: dg.AssetExecutionContext, storage: SparkStorage, spark_config: SparkConfig):
    ev = EvalSettings.load(spark_config.name())
    folders = sorted(p for p in storage.path("evaluation").iterdir() if p.is_dir()
                     and p.name not in ("report", "_base", "external")) if storage.path("evaluation").exists() else []
    blocked = {p.name: json.loads((p / "BLOCKED").read_text()).get("reasons") for p in folders
               if (p / "BLOCKED").exists()}
    tables = [p / "table.parquet" for p in folders if p.name not in blocked and (p / "table.parquet").exists()]
    if blocked:
        context.log.warning(f"left out, their last evaluation was blocked: {blocked}")
    if not tables:
        raise dg.Failure("no evaluation tables yet: materialize checkpoint_eval for some checkpoints first"
                         + (f" ({len(blocked)} blocked)" if blocked else ""))
    rows = [r for t in tables for r in pq.read_table(t).to_pylist()]
    records = [r for t in tables if (t.parent / "samples.parquet").exists()
               for r in pq.read_table(t.parent / "samples.parquet").to_pylist()]
    external = storage.path("evaluation", "external", "table.parquet")
    if external.exists():
        rows += pq.read_table(external).to_pylist()
        if (external.parent / "samples.parquet").exists():
            records += pq.read_table(external.parent / "samples.parquet").to_pylist()
    base_rows = {(r["split"], r["category"]): r for r in rows if r["model"] == "base"}
    rows = [r for r in rows if r["model"] != "base"] + list(base_rows.values())
    # every checkpoint's samples.parquet repeats the base model's records: keep one per sample
    records = [r for r in records if r["model"] != "base"] + list(
        {r["sample_id"]: r for r in records if r["model"] == "base"}.values())
    for r in rows:
        r.setdefault("gen_errors", 0)
        r.setdefault("flag", "")
        r.setdefault("few_samples", r.get("samples", 0) < ev.min_samples_per_category)
        for col in ("compile_rate", "memorized_longest_mean", "ppl_reduction_vs_base",
                    *(b for pair in COLUMNS_WITH_INTERVALS.values() for b in pair)):
            r.setdefault(col, float("nan"))
        r.setdefault("memorized_longest_max", -1)
    points = []
    for r in sorted((r for r in rows if r["model"].startswith("adapter") and r["category"] == "all"
                     and r["split"] == "in_domain"), key=lambda r: (_run_of(r), r["step"])):
        state = checkpoint_folder(storage.path(), r["checkpoint"]) / "trainer_state.json"
        losses = json.loads(state.read_text())["health"]["losses"] if state.exists() else []
        points.append({"checkpoint": r["checkpoint"], "run": _run_of(r), "step": r["step"],
                       "perplexity": r["perplexity"], "train_loss": losses[-1] if losses else None})
    outliers = [o for run in sorted({p["run"] for p in points})
                for o in perplexity_outliers([p for p in points if p["run"] == run], ev.outlier_factor)]
    mark_outliers(rows, outliers)
    if outliers:
        context.log.warning(f"perplexity outliers (marked, left out of trends and winners): "
                            f"{[o['checkpoint'] for o in outliers]}")
    out = storage.path("evaluation", "report")
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "report.parquet")
    few = sorted({r["category"] for r in rows if r["few_samples"] and r["category"] != "all"
                  and not r["model"].startswith("external:")})
    notes = []
    if few:
        notes.append(f"Categories with fewer than {ev.min_samples_per_category} evaluation samples (intervals wide, "
                     f"differences hard to tell from zero): {', '.join(few)}.")
    if outliers:
        notes.append("Outlier checkpoints (flag `outlier`): " + ", ".join(o["checkpoint"] for o in outliers) + ".")
    if blocked:
        notes.append("Left out, their evaluation was blocked: " + ", ".join(blocked) + ".")
    atomic_write_text(out / "report.md", _table_markdown(sorted(rows, key=lambda r: (r["model"], r["split"], r["category"])))
                      + "\n\nIntervals: 95%, bootstrap over samples (Wilson for exact match and compile rate); "
                      "ppl_reduction_vs_base: paired with the base on the same samples.\n"
                      + "".join(f"\n{n}\n" for n in notes))
    plots = _plots(rows, out)
    code_tables = sorted(storage.path("evaluation").glob("*/code_regression.parquet"))
    code_rows = [r for t in code_tables if t.parent.name not in blocked for r in pq.read_table(t).to_pylist()]
    if code_rows:
        pq.write_table(pa.Table.from_pylist(code_rows), out / "code_regression.parquet")
    winners = category_winners(rows, records, ev.bootstrap_resamples)
    atomic_write_text(out / "winners.md", _winners_markdown(winners))
    latest = _latest(rows)
    regressions = [r["checkpoint"] for r in rows if _is_latest(r, latest) and r["split"] == "in_domain"
                   and r["category"] == "all" and r["flag"] == "regression"]
    return dg.MaterializeResult(
        metadata={**parquet_table_metadata(out / "report.parquet"),
                  "checkpoints": len(tables), "rows": len(rows), "path": dg.MetadataValue.path(str(out)),
                  "perplexity_inline": dg.MetadataValue.md(sparkline_markdown(
                      [r["perplexity"] for r in sorted(rows, key=lambda r: r["step"])
                       if latest and r["model"].startswith("adapter") and _run_of(r) == latest[0]
                       and r["split"] == "in_domain" and r["category"] == "all" and r.get("flag") != "outlier"],
                      f"in-domain perplexity over the checkpoints of {latest[0] if latest else '-'}")),
                  "latest_vs_base": _table_metadata(sorted(
                      (r for r in rows if r["category"] == "all" and (r["model"] == "base" or _is_latest(r, latest)
                                                                      or r["model"].startswith("external:"))),
                      key=lambda r: (r["split"], r["model"] != "base", r["model"]))),
                  "blocked": dg.MetadataValue.json(blocked), "notes": dg.MetadataValue.md("\n\n".join(notes) or "-"),
                  "code_regression": dg.MetadataValue.json([{k: r.get(k) for k in (
                      "checkpoint", "model", "difficulty", "compile_rate", "pass_rate", "pass_rate_lo", "pass_rate_hi",
                      "pass_rate_vs_base_lo", "pass_rate_vs_base_hi")} for r in code_rows if r["difficulty"] == "all"]),
                  "winners": dg.MetadataValue.json({c: w["winner"] or "tie" for c, w in winners.items()}),
                  **{name: dg.MetadataValue.md(embed_png(p, name)) for name, p in plots.items()}},
        check_results=[dg.AssetCheckResult(check_name="no_perplexity_outliers", passed=not outliers,
                                           metadata={"flagged": dg.MetadataValue.json(outliers),
                                                     "points": dg.MetadataValue.json(points)}),
                       dg.AssetCheckResult(check_name="no_regression_vs_base", passed=not regressions,
                                           severity=dg.AssetCheckSeverity.WARN,
                                           metadata={"regressions": dg.MetadataValue.json(regressions)})],
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
    eval_version = json.loads(eval_json.read_text())["sha256"]["in_domain"][:12]
    keys = context.instance.get_dynamic_partitions(checkpoint_partitions.name)
    return [dg.RunRequest(run_key=f"reeval:{k}:{eval_version}:{EVAL_CODE_VERSION}", partition_key=k,
                          asset_selection=[dg.AssetKey("checkpoint_eval")]) for k in keys]


@dg.asset(
    kinds={'parquet'},
    owners=OWNERS,
    tags={"stage": "evaluation"},
    group_name="evaluation",
    deps=["eval_sets"],
    code_version=EVAL_CODE_VERSION,
    description="§6.6 baselines: external models (an OpenAI-compatible endpoint such as vLLM, or Anthropic's API) "
    "on generative completion, when configured in the profile's evaluation.external_models. Answers are cached. "
    "{storage}/evaluation/external/table.parquet",
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
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "table.parquet")
    pq.write_table(pa.Table.from_pylist(records), out / "samples.parquet")
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in GENERATION_COLUMNS} for r in records]),
                   out / "generations.parquet")
    return dg.MaterializeResult(metadata={"models": len(specs), "rows": len(rows), "usage": dg.MetadataValue.json(usage),
                                          "table": _table_metadata(rows)})


@dg.asset(
    kinds={'parquet'},
    owners=OWNERS,
    tags={"stage": "evaluation"},
    group_name="evaluation",
    partitions_def=checkpoint_partitions,
    deps=["checkpoints"],
    code_version=EVAL_CODE_VERSION,
    description="§6.8 general-code regression: base and base+adapter write C++ solutions to FullStackBench-format "
    "problems, compiled with g++ and run under time and memory limits; compile and pass rates overall and by "
    "difficulty. {storage}/evaluation/{checkpoint}/code_regression.parquet",
)
def code_regression(context: dg.AssetExecutionContext, storage: SparkStorage, spark_config: SparkConfig):
    import torch
    from peft import PeftModel

    from spark_pipeline.evaluation import stats
    from spark_pipeline.evaluation.fullstack import (
        evaluate,
        extract_code,
        load_problems,
        prompt_for,
        summarise,
    )
    from spark_pipeline.evaluation.metrics import generate_batch
    from spark_pipeline.tokens.tokenizer import load_tokenizer
    from spark_pipeline.training.model import load_base_model

    key = context.partition_key
    path = _checkpoint_path(storage, key)
    settings = TrainingSettings.load(spark_config.name())
    ev = EvalSettings.load(spark_config.name())
    cfg = dict(ev.code_regression)
    problems = load_problems(cfg.get("problems") or None)
    lineage = json.loads((path / "lineage.json").read_text())
    tokenizer = load_tokenizer(lineage.get("tokenizer", settings.tokenizer))
    base_path = base_model_folder(settings, storage.path())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # one copy of the base weights in the training dtype; the base answers with the adapter off
    model = PeftModel.from_pretrained(load_base_model(str(base_path), dtype=getattr(torch, settings.dtype),
                                                      device=device), str(path)).eval()
    prompts = [tokenizer.encode(prompt_for(p)) for p in problems]
    rows, examples, outcomes_by_model = [], {}, {}
    for name in ("base", f"adapter:{key}"):
        started = time.perf_counter()

        def progress(done, name=name, started=started):
            elapsed = time.perf_counter() - started
            context.log.info(f"code regression, {name}: {done}/{len(prompts)} problems generated, {elapsed:.1f} s, "
                             f"~{elapsed / done * (len(prompts) - done):.0f} s left")

        if name == "base":
            with model.disable_adapter():
                answers = generate_batch(model, prompts, int(cfg["max_new_tokens"]), tokenizer.eos_id,
                                         tokenizer.pad_id, device, ev.batch_size, progress)
        else:
            answers = generate_batch(model, prompts, int(cfg["max_new_tokens"]), tokenizer.eos_id, tokenizer.pad_id,
                                     device, ev.batch_size, progress)
        code = {id(p): extract_code(tokenizer.decode(a)) for p, a in zip(problems, answers, strict=True)}
        outcomes = evaluate(lambda p, code=code: code[id(p)], problems, float(cfg["time_limit_s"]),
                            int(cfg["memory_mb"]))
        outcomes_by_model[name] = outcomes
        examples[name] = [o.reason for o in outcomes][:3]
        for difficulty, summary in sorted(summarise(outcomes).items()):
            group = [o for o in outcomes if difficulty == "all" or o.difficulty == difficulty]
            passed, compiled = sum(o.passed for o in group), sum(o.compiled for o in group)
            row = {"checkpoint": key, "model": name, "difficulty": difficulty, **summary,
                   "lineage_sha256": sha256_file(path / "lineage.json")}
            row["pass_rate_lo"], row["pass_rate_hi"] = stats.wilson(passed, len(group))
            row["compile_rate_lo"], row["compile_rate_hi"] = stats.wilson(compiled, len(group))
            row["pass_rate_vs_base_lo"], row["pass_rate_vs_base_hi"] = float("nan"), float("nan")
            if name != "base":  # paired: the same problems, adapter minus base
                base_group = [o for o in outcomes_by_model["base"] if difficulty == "all" or o.difficulty == difficulty]
                row["pass_rate_vs_base_lo"], row["pass_rate_vs_base_hi"] = stats.paired(
                    stats.mean_statistic([float(o.passed) for o in group]),
                    stats.mean_statistic([float(o.passed) for o in base_group]), len(group), ev.bootstrap_resamples)
            rows.append(row)
    out = storage.path("evaluation", key)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "code_regression.parquet")

    def interval(r, col):
        lo, hi = r.get(f"{col}_lo", float("nan")), r.get(f"{col}_hi", float("nan"))
        return f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else ""

    atomic_write_text(out / "code_regression.md", "| model | difficulty | problems | compile rate | pass rate | "
                      "pass rate − base [95% paired] |\n|---|---|---|---|---|---|\n" + "".join(
                          f"| {r['model']} | {r['difficulty']} | {r['problems']} | {r['compile_rate']:.3f}"
                          f"{interval(r, 'compile_rate')} | {r['pass_rate']:.3f}{interval(r, 'pass_rate')} | "
                          f"{interval(r, 'pass_rate_vs_base').strip() or '-'} |\n" for r in rows))
    overall = {r["model"]: {"compile_rate": r["compile_rate"], "pass_rate": r["pass_rate"],
                            "pass_rate_95": [r["pass_rate_lo"], r["pass_rate_hi"]]}
               for r in rows if r["difficulty"] == "all"}
    return dg.MaterializeResult(metadata={"problems": len(problems), "overall": dg.MetadataValue.json(overall),
                                          "first_outcomes": dg.MetadataValue.json(examples),
                                          "path": dg.MetadataValue.path(str(out / "code_regression.parquet"))})
