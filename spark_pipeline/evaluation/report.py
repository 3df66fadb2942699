"""The evaluation's tables and report, apart from Dagster: each checkpoint's tables written
(:func:`write_tables`), a blocked checkpoint's tables withdrawn (:func:`withdraw`),
and the report across checkpoints (:func:`build_report`): rows gathered from every
checkpoint's table and the external baselines, perplexity artifacts marked (the check in
:mod:`spark_pipeline.evaluation.outliers`), winners named only
outside their paired interval, report.parquet / report.md / winners.md and the plots written.
The assets in :mod:`spark_pipeline.defs.evaluation` call these and turn the results into
metadata."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spark_pipeline.evaluation.outliers import perplexity_jumps
from spark_pipeline.evaluation.series import is_latest, latest, run_of
from spark_pipeline.evaluation.settings import EvalSettings
from spark_pipeline.records import atomic_write_text
from spark_pipeline.training.runs import checkpoint_folder


class ReportError(RuntimeError):
    """Nothing to report yet (no checkpoint has evaluation tables)."""


COLUMNS_WITH_INTERVALS = {"perplexity": ("perplexity_lo", "perplexity_hi"),
                          "ppl_reduction_vs_base": ("ppl_reduction_vs_base_lo", "ppl_reduction_vs_base_hi"),
                          "tf_top1": ("tf_top1_lo", "tf_top1_hi"), "tf_top5": ("tf_top5_lo", "tf_top5_hi"),
                          "gen_token_accuracy": ("gen_token_accuracy_lo", "gen_token_accuracy_hi"),
                          "bleu4": ("bleu4_lo", "bleu4_hi"), "exact_match": ("exact_match_lo", "exact_match_hi"),
                          "compile_rate": ("compile_rate_lo", "compile_rate_hi")}
GENERATION_COLUMNS = ["checkpoint", "step", "model", "split", "category", "pair_id", "sample_id", "prompt_sha256",
                      "prompt_tokens", "reference", "generation", "reference_ids", "generation_ids", "token_accuracy",
                      "exact_match", "bleu4", "bleu_stats", "bleu4_signature", "compiles", "memorized_longest"]


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

#: what each column of an evaluation table is, as the UI shows it beside the column's name
COLUMN_DESCRIPTIONS = {
    "model": "base, adapter:<checkpoint> or external:<name>",
    "split": "in_domain (tail shards of training pairs, kept out of training) or held_out (pairs never trained on)",
    "category": "one of the 13 domain categories, or all",
    "samples": "evaluation samples scored for perplexity and teacher forcing",
    "flag": "improvement / regression: the paired 95% interval against the base excludes 0; outlier: an "
            "artifact checkpoint left out of trends and winners",
    "perplexity": "exp of the mean token negative log-likelihood over all tokens [95% bootstrap interval over samples]",
    "ppl_reduction_vs_base": "(base - model) / base perplexity, the same samples [paired 95% bootstrap interval]",
    "tf_loss": "teacher-forced loss on the scored 25% suffix after a 75% prefix [95% bootstrap interval]",
    "tf_top1": "share of suffix tokens whose most likely prediction is the reference token [95% interval]",
    "tf_top5": "share of suffix tokens among the five most likely predictions [95% interval]",
    "gen_samples": "samples completed by greedy generation",
    "gen_token_accuracy": "position-wise share of generated tokens equal to the reference suffix [95% interval]",
    "bleu4": "corpus BLEU-4 of the generations against the reference suffixes (0-100) [95% bootstrap interval]",
    "exact_match": "share of generations reproducing the whole reference suffix [95% Wilson interval]",
    "compile_rate": "share of prefixes + generations that pass gcc -fsyntax-only with the pair's headers (compare "
                    "models, not against 100%: many prefixes are fragments) [95% Wilson interval]",
    "memorized_longest_max": "longest run of generated tokens found verbatim in the training mixture (from 8 tokens)",
}


def table_cells(rows: list[dict]) -> list[dict[str, str]]:
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
            if c == "ppl_reduction_vs_base" and r.get("ppl_reduction_vs_base_degenerate"):
                cells[c] += f" (degenerate: {r.get('paired_samples', 0)} paired)"
        out.append(cells)
    return out


def bleu_note(rows: list[dict]) -> str:
    """What BLEU-4 is, with sacrebleu's signatures; rows whose BLEU-4 was computed under
    another signature (or before signatures were recorded: unsmoothed) are named."""
    from spark_pipeline.evaluation import stats

    current = stats.bleu_signature()
    other = sorted({f"{r.get('checkpoint') or r['model']} ({r.get('bleu4_signature') or 'no signature: unsmoothed'})"
                    for r in rows if isinstance(r.get("bleu4"), float) and math.isfinite(r["bleu4"])
                    and r.get("bleu4_signature") != current})
    text = (f"BLEU-4: sacrebleu corpus BLEU with its default settings, signature `{current}`; per-sample BLEU "
            f"(generations.parquet): sacrebleu sentence BLEU with its defaults, signature "
            f"`{stats.sentence_bleu_signature()}`.")
    if other:
        text += " Computed under another BLEU, not comparable (re-evaluate them): " + ", ".join(other) + "."
    return text


def table_markdown(rows: list[dict]) -> str:
    out = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    out += ["| " + " | ".join(cells[c] for c in TABLE_COLUMNS) + " |" for cells in table_cells(rows)]
    return "\n".join(out)



PLOTTED_METRICS = ("perplexity", "ppl_reduction_vs_base", "gen_token_accuracy", "bleu4")


def plotted_metrics(rows: list[dict]) -> dict[str, float]:
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


def withdraw(out: Path, reason: dict) -> Path | None:
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


def examples_markdown(records: list[dict], per_category: int = 2, chars: int = 240) -> str:
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



def category_winners(rows: list[dict], records: list[dict], resamples: int = 1000) -> dict[str, dict]:
    """Per in-domain category, the model with the highest generative token accuracy among the
    base, the newest run's latest non-outlier checkpoint and the external models (§6.6
    "winner") — but only when it beats the runner-up outside the 95% interval of their paired
    difference on the same samples, over at least ``stats.MIN_PAIRED_SAMPLES`` of them.
    Otherwise the category is a tie, whatever the order of names. Returns per category
    ``winner`` (a model or None), ``contenders`` (best first, with values), ``difference``, its
    ``interval``, ``paired_samples`` and ``degenerate`` (an interval over too few samples)."""
    from spark_pipeline.evaluation import stats

    newest = latest(rows)
    contenders = [r for r in rows if r["split"] == "in_domain" and r["category"] != "all"
                  and (r["model"] == "base" or r["model"].startswith("external:") or is_latest(r, newest))
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
                 "difference": float("nan"), "interval": (float("nan"), float("nan")), "paired_samples": 0,
                 "degenerate": False}
        if len(ranked) >= 2:
            best, second = ranked[0], ranked[1]
            entry["difference"] = best["gen_token_accuracy"] - second["gen_token_accuracy"]
            a = by_model.get((best["model"], category), {})
            b = by_model.get((second["model"], category), {})
            common = sorted(set(a) & set(b))
            entry["paired_samples"] = len(common)
            if entry["difference"] > 0 and len(common) >= 2:
                entry["interval"] = stats.paired(stats.mean_statistic([a[i] for i in common]),
                                                 stats.mean_statistic([b[i] for i in common]), len(common), resamples)
                entry["degenerate"] = stats.degenerate(len(common))
                if stats.differs(entry["interval"], len(common)):
                    entry["winner"] = best["model"]
        result[category] = entry
    return result


def winners_markdown(winners: dict[str, dict]) -> str:
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
            if w.get("degenerate"):
                diff += f" (degenerate: {w['paired_samples']} paired samples)"
        winner = w["winner"] or ("none (degenerate interval)" if w.get("degenerate") else "tie")
        lines.append(f"| {category} | {winner} | "
                     + ", ".join(f"{m} {v:.3f}" for m, v in w["contenders"]) + f" | {diff} |")
    return "\n".join(lines) + "\n"


def degenerate_note(rows: list[dict], winners: dict[str, dict]) -> str | None:
    """The report's note on paired intervals over too few samples: which rows' comparison with
    the base and which categories' winner comparison are degenerate (none named)."""
    from spark_pipeline.evaluation.stats import MIN_PAIRED_SAMPLES

    groups = sorted({f"{r.get('checkpoint') or r['model']} {r['split']}/{r['category']} ({r.get('paired_samples', 0)})"
                     for r in rows if r.get("ppl_reduction_vs_base_degenerate") and r["model"] != "base"})
    categories = sorted(f"{c} ({w['paired_samples']})" for c, w in winners.items() if w.get("degenerate"))
    if not groups and not categories:
        return None
    parts = [f"Degenerate paired intervals (fewer than {MIN_PAIRED_SAMPLES} paired samples; shown, but no regression "
             "or winner is named from them):"]
    if groups:
        parts.append("against the base, " + ", ".join(groups) + ";")
    if categories:
        parts.append("winner comparisons, " + ", ".join(categories) + ";")
    return " ".join(parts).rstrip(";") + "."


def mark_outliers(rows: list[dict], outliers: list[dict]) -> list[dict]:
    """Flag every row of an outlier checkpoint (its tables are kept, but marked)."""
    flagged = {o["checkpoint"] for o in outliers}
    for r in rows:
        if r.get("checkpoint") in flagged and r["model"].startswith("adapter"):
            r["flag"] = "outlier"
    return rows


def write_tables(out: Path, rows: list[dict], records: list[dict], spec_rows: list[dict] | None = None,
                 spec_records: list[dict] | None = None) -> None:
    """One checkpoint's (or the external baselines') evaluation: table.parquet and table.md
    (the rows), samples.parquet (every sample's scores) and generations.parquet (every
    generation); with ``spec_rows``, spec_conditioned.parquet (the spec-conditioned
    completion's rows), spec_conditioned_generations.parquet (its records) and a second table
    in table.md. An earlier BLOCKED marker is removed."""
    from spark_pipeline.evaluation import speccond

    out.mkdir(parents=True, exist_ok=True)
    (out / "BLOCKED").unlink(missing_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "table.parquet")
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in GENERATION_COLUMNS} for r in records if r.get("generated", True)]),
                   out / "generations.parquet")
    pq.write_table(pa.Table.from_pylist(records), out / "samples.parquet")
    spec = ""
    if spec_rows is not None:
        if spec_rows:
            pq.write_table(pa.Table.from_pylist(spec_rows), out / "spec_conditioned.parquet")
            pq.write_table(pa.Table.from_pylist(spec_records or []), out / "spec_conditioned_generations.parquet")
        else:  # an earlier evaluation's spec-conditioned tables are not this one's
            (out / "spec_conditioned.parquet").unlink(missing_ok=True)
            (out / "spec_conditioned_generations.parquet").unlink(missing_ok=True)
        spec = "\n## Spec-conditioned completion\n\n" + speccond.markdown(spec_rows) + "\n\n" + speccond.NOTE + "\n"
    atomic_write_text(out / "table.md", table_markdown(rows) + "\n\n" + bleu_note(rows) + "\n" + spec)


@dataclass
class Report:
    """What :func:`build_report` found and wrote (under ``out``)."""

    out: Path
    rows: list[dict]
    checkpoints: int
    blocked: dict[str, list]
    outliers: list[dict]
    """The perplexity jumps no independent metric moved with (:mod:`spark_pipeline.evaluation.outliers`),
    each with the evidence that fired."""
    points: list[dict]
    """Every checkpoint's in-domain perplexity, generative token accuracy and BLEU-4 (with their
    95% intervals) and training loss: the artifact check's input."""
    notes: list[str]
    plots: dict[str, Path]
    winners: dict[str, dict]
    code_rows: list[dict]
    regressions: list[str]
    newest: tuple[str, int] | None = None
    perplexity_series: list[float] = field(default_factory=list)
    """In-domain perplexity over the newest run's checkpoints (outliers left out)."""
    corroborated: list[dict] = field(default_factory=list)
    """Perplexity jumps that an independent metric moved with: real changes, not flagged."""
    spec_rows: list[dict] = field(default_factory=list)
    """Spec-conditioned completion: every checkpoint's rows (the base's once)."""

    def latest_spec_rows(self) -> list[dict]:
        """Spec-conditioned completion of the base and the newest checkpoint, per category."""
        return sorted((r for r in self.spec_rows if r["model"] == "base" or is_latest(r, self.newest)),
                      key=lambda r: (r["category"] != "all", r["category"], r["model"] != "base"))

    def latest_rows(self) -> list[dict]:
        """The base, the newest checkpoint and the external models, overall."""
        return sorted((r for r in self.rows if r["category"] == "all" and (
            r["model"] == "base" or is_latest(r, self.newest) or r["model"].startswith("external:"))),
            key=lambda r: (r["split"], r["model"] != "base", r["model"]))


def _gather(evaluation: Path) -> tuple[list[dict], list[dict], dict[str, list], int]:
    """Rows and per-sample records of every checkpoint whose evaluation is not blocked, and of
    the external baselines; the base model's kept once."""
    folders = sorted(p for p in evaluation.iterdir() if p.is_dir()
                     and p.name not in ("report", "_base", "external")) if evaluation.exists() else []
    blocked = {p.name: json.loads((p / "BLOCKED").read_text()).get("reasons") for p in folders
               if (p / "BLOCKED").exists()}
    tables = [p / "table.parquet" for p in folders if p.name not in blocked and (p / "table.parquet").exists()]
    if not tables:
        raise ReportError("no evaluation tables yet: materialize checkpoint_eval for some checkpoints first"
                          + (f" ({len(blocked)} blocked)" if blocked else ""))
    rows = [r for t in tables for r in pq.read_table(t).to_pylist()]
    records = [r for t in tables if (t.parent / "samples.parquet").exists()
               for r in pq.read_table(t.parent / "samples.parquet").to_pylist()]
    external = evaluation / "external" / "table.parquet"
    if external.exists():
        rows += pq.read_table(external).to_pylist()
        if (external.parent / "samples.parquet").exists():
            records += pq.read_table(external.parent / "samples.parquet").to_pylist()
    base_rows = {(r["split"], r["category"]): r for r in rows if r["model"] == "base"}
    rows = [r for r in rows if r["model"] != "base"] + list(base_rows.values())
    # every checkpoint's samples.parquet repeats the base model's records: keep one per sample
    records = [r for r in records if r["model"] != "base"] + list(
        {r["sample_id"]: r for r in records if r["model"] == "base"}.values())
    return rows, records, blocked, len(tables)


def _json_number(value):
    """A finite number, else None (the points go to the asset check's JSON metadata)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _gather_spec(evaluation: Path, blocked: dict) -> list[dict]:
    """Every unblocked checkpoint's spec-conditioned rows; the base model's kept once (its
    records are the same cached ones in every checkpoint)."""
    rows = [r for t in sorted(evaluation.glob("*/spec_conditioned.parquet"))
            if t.parent.name not in blocked and t.parent.name not in ("report", "_base", "external")
            and (t.parent / "table.parquet").exists() for r in pq.read_table(t).to_pylist()]
    base = {r["category"]: r for r in rows if r["model"] == "base"}
    return [r for r in rows if r["model"] != "base"] + list(base.values())


def build_report(storage_root: Path, ev: EvalSettings) -> Report:
    """The report across checkpoints under ``<storage_root>/evaluation/report``: report.parquet
    and report.md (every row, outliers flagged), winners.md, code_regression.parquet and the
    plots. Raises :class:`ReportError` when no checkpoint has tables yet."""
    from spark_pipeline.plots import evaluation_plots

    evaluation = Path(storage_root) / "evaluation"
    rows, records, blocked, checkpoints = _gather(evaluation)
    for r in rows:
        r.setdefault("gen_errors", 0)
        r.setdefault("flag", "")
        r.setdefault("few_samples", r.get("samples", 0) < ev.min_samples_per_category)
        for col in ("compile_rate", "memorized_longest_mean", "ppl_reduction_vs_base",
                    *(b for pair in COLUMNS_WITH_INTERVALS.values() for b in pair)):
            r.setdefault(col, float("nan"))
        r.setdefault("memorized_longest_max", -1)
        for col in ("paired_samples", "gen_paired_samples"):
            r.setdefault(col, 0)
        for col in ("ppl_reduction_vs_base_degenerate", "token_accuracy_vs_base_degenerate"):
            r.setdefault(col, False)
    points = []
    for r in sorted((r for r in rows if r["model"].startswith("adapter") and r["category"] == "all"
                     and r["split"] == "in_domain"), key=lambda r: (run_of(r), r["step"])):
        state = checkpoint_folder(storage_root, r["checkpoint"]) / "trainer_state.json"
        losses = [v for v in (json.loads(state.read_text())["health"]["losses"] if state.exists() else [])
                  if isinstance(v, (int, float)) and math.isfinite(v)]
        points.append({"checkpoint": r["checkpoint"], "run": run_of(r), "step": r["step"],
                       # the median of the losses the health monitor keeps (the last steps'): one step's is noisy
                       "train_loss": statistics.median(losses) if losses else None,
                       **{k: _json_number(r.get(k)) for k in ("perplexity", *(
                           f"{m}{end}" for m in ("gen_token_accuracy", "bleu4") for end in ("", "_lo", "_hi")))}})
    jumps = [j for run in sorted({p["run"] for p in points})
             for j in perplexity_jumps([p for p in points if p["run"] == run], ev.outlier_factor, ev.outlier_z)]
    outliers = [j for j in jumps if j["outlier"]]
    corroborated = [j for j in jumps if not j["outlier"]]
    mark_outliers(rows, outliers)
    out = evaluation / "report"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "report.parquet")
    few = sorted({r["category"] for r in rows if r["few_samples"] and r["category"] != "all"
                  and not r["model"].startswith("external:")})
    notes = []
    if few:
        notes.append(f"Categories with fewer than {ev.min_samples_per_category} evaluation samples (intervals wide, "
                     f"differences hard to tell from zero): {', '.join(few)}.")
    if outliers:
        notes.append("Outlier checkpoints (flag `outlier`, left out of trends and winners): "
                     + "; ".join(f"{o['checkpoint']}: {o['evidence']}" for o in outliers) + ".")
    if corroborated:
        notes.append("Perplexity jumps that independent metrics moved with (real changes, not flagged): "
                     + "; ".join(f"{o['checkpoint']}: {o['evidence']}" for o in corroborated) + ".")
    if blocked:
        notes.append("Left out, their evaluation was blocked: " + ", ".join(blocked) + ".")
    winners = category_winners(rows, records, ev.bootstrap_resamples)
    degenerate = degenerate_note(rows, winners)
    if degenerate:
        notes.append(degenerate)
    spec_rows = _gather_spec(evaluation, blocked)
    if spec_rows:
        pq.write_table(pa.Table.from_pylist(spec_rows), out / "spec_conditioned.parquet")
    else:
        (out / "spec_conditioned.parquet").unlink(missing_ok=True)
        notes.append("Spec-conditioned completion: no items (the held-out pairs gave no section with datasheet text "
                     "and mapped code), so it was not evaluated.")
    from spark_pipeline.evaluation import speccond

    spec_md = ("\n## Spec-conditioned completion\n\n" + speccond.markdown(sorted(
        spec_rows, key=lambda r: (r["model"] != "base", r["model"], r["category"]))) + "\n\n" + speccond.NOTE + "\n"
        if spec_rows else "")
    atomic_write_text(out / "report.md", table_markdown(sorted(rows, key=lambda r: (r["model"], r["split"], r["category"])))
                      + "\n\nIntervals: 95%, bootstrap over samples (Wilson for exact match and compile rate); "
                      "ppl_reduction_vs_base: paired with the base on the same samples.\n"
                      + f"\n{bleu_note(rows)}\n" + spec_md
                      + "".join(f"\n{n}\n" for n in notes))
    plots = evaluation_plots(rows, out)
    code_rows = [r for t in sorted(evaluation.glob("*/code_regression.parquet")) if t.parent.name not in blocked
                 for r in pq.read_table(t).to_pylist()]
    if code_rows:
        pq.write_table(pa.Table.from_pylist(code_rows), out / "code_regression.parquet")
    atomic_write_text(out / "winners.md", winners_markdown(winners))
    newest = latest(rows)
    regressions = [r["checkpoint"] for r in rows if is_latest(r, newest) and r["split"] == "in_domain"
                   and r["category"] == "all" and r["flag"] == "regression"]
    series = [r["perplexity"] for r in sorted(rows, key=lambda r: r["step"])
              if newest and r["model"].startswith("adapter") and run_of(r) == newest[0]
              and r["split"] == "in_domain" and r["category"] == "all" and r.get("flag") != "outlier"]
    report = Report(out, rows, checkpoints, blocked, outliers, points, notes, plots, winners, code_rows, regressions,
                    newest, series, corroborated=corroborated, spec_rows=spec_rows)
    from spark_pipeline.plots import grounding_gain_plot

    gain_plot = grounding_gain_plot([r for r in report.latest_spec_rows() if r["category"] == "all"],
                                    out / "grounding_gain.png")
    if gain_plot:
        plots["grounding_gain"] = gain_plot
    else:
        (out / "grounding_gain.png").unlink(missing_ok=True)
    return report
