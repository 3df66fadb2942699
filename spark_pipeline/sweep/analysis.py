"""The sweep's analysis (paper §5, Tables 7-9), built not to mislead.

Input: one record per training run (a configuration at one seed): its ``params``, its
trial's ``state`` (COMPLETE, PRUNED, FAIL), the objective ``value`` and the stability
numbers. The paper's Table 8 averages each level of a factor over whatever runs exist.
When cells are missing that mixes factors: its two missing cells are both rank 512 at the
higher learning rate, so the learning-rate means compare mostly-512 runs with no-512 runs.
A configuration run twice at the same seed (the paper's Table 9 lists r128-full-5e-5 twice)
is counted once: the first run is kept and the dropped ones are named in a warning.
Beside the marginal means:

* matched comparisons: the difference between two levels of one factor over cells that are
  equal on every other factor, the comparison that holds the rest fixed;
* least-squares main effects (one-hot, first level as reference) with 95% intervals from
  the residuals, so seeds turn into error bars;
* warnings when the design is unbalanced and when the marginal ranking of a factor's levels
  disagrees with its matched comparisons.
"""

from __future__ import annotations

import math
import statistics
from itertools import combinations

from spark_pipeline.sweep.settings import cell_name, effective_scale


def _t(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df)) if df >= 1 else float("nan")


def _interval(values: list[float]) -> tuple[float, float]:
    """95% t-interval of the mean; NaN with fewer than two values."""
    if len(values) < 2:
        return float("nan"), float("nan")
    mean = statistics.fmean(values)
    half = _t(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def _key(params: dict, axes: list[str], skip: str | None = None) -> tuple:
    return tuple((a, repr(params[a])) for a in axes if a != skip)


def deduplicate(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(kept, dropped)``: a run of a configuration at a seed already seen (the paper's Table 9
    lists r128-full-5e-5 twice) is a duplicate. The first is kept; each dropped one is named by
    its configuration, seed and trial, with the trial it repeats. Runs without a seed (a trial
    that recorded no run) are never duplicates."""
    first: dict[tuple, dict] = {}
    kept, dropped = [], []
    for position, r in enumerate(runs):
        if r.get("seed") is None:
            kept.append(r)
            continue
        key = (tuple(sorted((k, repr(v)) for k, v in r["params"].items())), r["seed"])
        if key in first:
            dropped.append({"configuration": cell_name(r["params"]), "seed": r["seed"],
                            "trial": r.get("trial", position), "kept_trial": first[key].get("trial"),
                            "state": r.get("state"), "value": r.get("value")})
            continue
        first[key] = {"trial": r.get("trial", position)}
        kept.append(r)
    return kept, dropped


def completed(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r["state"] == "COMPLETE" and r.get("value") is not None
            and math.isfinite(r["value"])]


def cell_means(runs: list[dict], axes: list[str]) -> dict[tuple, dict]:
    """Mean objective per configuration (over its seeds)."""
    cells: dict[tuple, dict] = {}
    for r in completed(runs):
        cell = cells.setdefault(_key(r["params"], axes), {"params": r["params"], "values": []})
        cell["values"].append(r["value"])
    for cell in cells.values():
        cell["mean"] = statistics.fmean(cell["values"])
    return cells


def marginal_means(runs: list[dict], space: dict) -> list[dict]:
    """Table 8: each level's mean objective over the completed runs at that level."""
    out = []
    ok = completed(runs)
    for axis, levels in space.items():
        for level in _levels(ok, axis, levels):
            values = [r["value"] for r in ok if r["params"][axis] == level]
            if values:
                lo, hi = _interval(values)
                out.append({"factor": axis, "level": level, "mean": statistics.fmean(values), "runs": len(values),
                            "lo": lo, "hi": hi})
    return out


def _levels(runs: list[dict], axis: str, levels) -> list:
    if isinstance(levels, list):
        return levels
    return sorted({r["params"][axis] for r in runs})  # a range (tpe/gp): the values tried


def matched_comparisons(runs: list[dict], space: dict) -> list[dict]:
    """For each factor and pair of its levels (a, b): over cells equal on every other factor
    where both were run, the mean of (b - a) of the cells' mean objectives, its range, and a
    95% interval across the matched cells (NaN with fewer than two)."""
    axes = list(space)
    cells = cell_means(runs, axes)
    out = []
    for axis in axes:
        levels = _levels(completed(runs), axis, space[axis])
        if len(levels) > 12:  # a continuous range: matched cells do not exist
            continue
        for a, b in combinations(levels, 2):
            by_rest: dict[tuple, dict] = {}
            for cell in cells.values():
                p = cell["params"]
                if p[axis] in (a, b):
                    by_rest.setdefault(_key(p, axes, skip=axis), {})[repr(p[axis])] = cell["mean"]
            diffs = [d[repr(b)] - d[repr(a)] for d in by_rest.values() if repr(a) in d and repr(b) in d]
            if not diffs:
                out.append({"factor": axis, "a": a, "b": b, "cells": 0, "mean_diff": float("nan"),
                            "min_diff": float("nan"), "max_diff": float("nan"), "lo": float("nan"),
                            "hi": float("nan"), "b_better_in": 0})
                continue
            lo, hi = _interval(diffs)
            out.append({"factor": axis, "a": a, "b": b, "cells": len(diffs), "mean_diff": statistics.fmean(diffs),
                        "min_diff": min(diffs), "max_diff": max(diffs), "lo": lo, "hi": hi,
                        "b_better_in": sum(d < 0 for d in diffs)})
    return out


def main_effects(runs: list[dict], space: dict) -> dict:
    """Least squares on every completed run (seeds are rows): objective ~ intercept + one-hot
    of each factor with its first level as reference. Each effect is the change from the
    reference level with the others held fixed, with a 95% interval from the residuals."""
    import numpy as np

    ok = completed(runs)
    axes = [a for a in space if len(_levels(ok, a, space[a])) <= 12]
    columns = []
    for axis in axes:
        levels = [lv for lv in _levels(ok, axis, space[axis]) if any(r["params"][axis] == lv for r in ok)]
        columns += [(axis, lv, levels[0]) for lv in levels[1:]]
    if not ok:
        return {"effects": [], "df": 0, "residual_sd": float("nan")}
    x = np.array([[1.0] + [1.0 if r["params"][a] == lv else 0.0 for a, lv, _ in columns] for r in ok])
    y = np.array([r["value"] for r in ok])
    coef, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    df = len(y) - rank
    resid = y - x @ coef
    sigma2 = float(resid @ resid / df) if df > 0 else float("nan")
    try:
        cov = sigma2 * np.linalg.pinv(x.T @ x)
    except np.linalg.LinAlgError:
        cov = np.full((x.shape[1], x.shape[1]), float("nan"))
    effects = []
    t = _t(df)
    for i, (axis, level, ref) in enumerate(columns, start=1):
        se = math.sqrt(cov[i, i]) if df > 0 and cov[i, i] >= 0 else float("nan")
        effects.append({"factor": axis, "level": level, "reference": ref, "effect": float(coef[i]), "se": se,
                        "lo": float(coef[i]) - t * se, "hi": float(coef[i]) + t * se})
    return {"effects": effects, "df": int(df), "residual_sd": math.sqrt(sigma2) if df > 0 else float("nan"),
            "identifiable": bool(rank == x.shape[1])}


def design(runs: list[dict], space: dict, seeds: list[int] | None = None) -> dict:
    """Which cells of the full factorial have a completed run, which are missing (pruned,
    failed or never run), and how many seeds each has."""
    axes = [a for a in space if isinstance(space[a], list)]
    if len(axes) != len(space):
        return {"factorial": False, "cells": 0, "missing": [], "balanced": False}
    from itertools import product

    cells = cell_means(runs, axes)
    every = [dict(zip(axes, combo, strict=True)) for combo in product(*(space[a] for a in axes))]
    missing = [cell_name(c) for c in every if _key(c, axes) not in cells]
    counts = {len(c["values"]) for c in cells.values()}
    return {"factorial": True, "cells": len(every), "run_cells": len(cells), "missing": missing,
            "seeds_per_cell": sorted(counts), "balanced": not missing and len(counts) <= 1}


def disagreements(marginals: list[dict], matched: list[dict]) -> list[str]:
    """Factors whose best level by marginal mean is not the best by matched comparisons."""
    out = []
    for axis in dict.fromkeys(m["factor"] for m in marginals):
        rows = [m for m in marginals if m["factor"] == axis]
        if len(rows) < 2:
            continue
        for pair in (p for p in matched if p["factor"] == axis and p["cells"] > 0):
            a, b = pair["a"], pair["b"]
            ma = next((m["mean"] for m in rows if m["level"] == a), None)
            mb = next((m["mean"] for m in rows if m["level"] == b), None)
            if ma is None or mb is None or ma == mb or pair["mean_diff"] == 0:
                continue
            marginal_says_b = mb < ma
            matched_says_b = pair["mean_diff"] < 0
            if marginal_says_b != matched_says_b:
                better_m, better_c = (b, a) if marginal_says_b else (a, b)
                out.append(f"{axis}: the marginal means favour {better_m} ({min(ma, mb):.4f} vs {max(ma, mb):.4f}) but "
                           f"in the {pair['cells']} matched cell(s) {better_c} is better by "
                           f"{abs(pair['mean_diff']):.4f} on average ({pair['b_better_in'] if matched_says_b else pair['cells'] - pair['b_better_in']}"
                           f" of {pair['cells']}); the marginal means mix in the other factors' missing cells")
    return out


def stability(runs: list[dict], alpha_per_rank: float) -> list[dict]:
    """Table 9 and more: per configuration, the gradient norms (before clipping), the health
    monitor's spikes, non-finite losses, and whether the trial was pruned."""
    by_cell: dict[str, dict] = {}
    for r in runs:
        name = cell_name(r["params"])
        row = by_cell.setdefault(name, {"configuration": name, **{k: v for k, v in r["params"].items()},
                                        "effective_scale": effective_scale(r["params"], alpha_per_rank),
                                        "runs": 0, "peak_grad_norm": None, "mean_grad_norms": [],
                                        "grad_norm_spikes": 0, "loss_spikes": 0, "non_finite": 0,
                                        "state": r["state"], "pruned_reason": r.get("pruned_reason") or ""})
        row["runs"] += 1
        if r.get("peak_grad_norm") is not None:
            row["peak_grad_norm"] = max(row["peak_grad_norm"] or 0.0, r["peak_grad_norm"])
        if r.get("mean_grad_norm") is not None:
            row["mean_grad_norms"].append(r["mean_grad_norm"])
        for k in ("grad_norm_spikes", "loss_spikes", "non_finite"):
            row[k] += r.get(k) or 0
    out = []
    for row in by_cell.values():
        means = row.pop("mean_grad_norms")
        row["mean_grad_norm"] = statistics.fmean(means) if means else float("nan")
        out.append(row)
    return sorted(out, key=lambda r: -(r["peak_grad_norm"] or 0.0))


def importances(study) -> dict:
    """Optuna's fANOVA and PED-ANOVA importances over the completed trials; a method that
    cannot run (too few trials) says why instead."""
    import optuna

    out = {}
    evaluators = {"fanova": lambda: optuna.importance.FanovaImportanceEvaluator(seed=0),
                  "ped_anova": lambda: optuna.importance.PedAnovaImportanceEvaluator()}
    for name, make in evaluators.items():
        try:
            out[name] = {k: float(v) for k, v in optuna.importance.get_param_importances(
                study, evaluator=make(), normalize=True).items()}
        except Exception as exc:  # noqa: BLE001 - reported in the analysis, never fatal
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return out


def analyse(runs: list[dict], space: dict, alpha_per_rank: float = 2.0, study=None) -> dict:
    runs, duplicates = deduplicate(runs)
    marginals = marginal_means(runs, space)
    matched = matched_comparisons(runs, space)
    effects = main_effects(runs, space)
    shape = design(runs, space)
    warnings = []
    if duplicates:
        warnings.append(f"{len(duplicates)} duplicate run(s) of a configuration at a seed already seen, dropped (the "
                        "first is kept): " + ", ".join(f"{d['configuration']} seed {d['seed']} (trial {d['trial']}, a "
                                                       f"repeat of trial {d['kept_trial']})" for d in duplicates))
    if shape.get("factorial") and shape["missing"]:
        warnings.append(f"unbalanced design: {len(shape['missing'])} of {shape['cells']} cells have no completed "
                        f"run ({', '.join(shape['missing'])}); marginal means are not comparable across levels")
    if shape.get("factorial") and len(shape.get("seeds_per_cell", [])) > 1:
        warnings.append(f"cells have different numbers of seeds ({shape['seeds_per_cell']})")
    if effects["df"] <= 0 and completed(runs):
        warnings.append("no residual degrees of freedom: the main effects have no intervals (run more seeds)")
    warnings += disagreements(marginals, matched)
    ranges = {}
    for axis in space:
        means = [m["mean"] for m in marginals if m["factor"] == axis]
        if len(means) >= 2:
            ranges[axis] = max(means) - min(means)
    return {"runs": len(runs), "duplicate_runs": duplicates, "completed_runs": len(completed(runs)),
            "pruned_runs": sum(r["state"] == "PRUNED" for r in runs),
            "failed_runs": sum(r["state"] == "FAIL" for r in runs),
            "marginal_means": marginals, "marginal_range": ranges, "matched": matched, "main_effects": effects,
            "design": shape, "stability": stability(runs, alpha_per_rank), "warnings": warnings,
            "importances": importances(study) if study is not None else {}}


def _f(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def to_markdown(result: dict, alpha_per_rank: float = 2.0) -> str:
    lines = ["# Sweep analysis", ""]
    for w in result["warnings"]:
        lines.append(f"> **Warning.** {w}")
        lines.append("")
    lines += [f"{result['completed_runs']} completed runs, {result['pruned_runs']} pruned, {result['failed_runs']} "
              "failed.", "", "## Marginal means (Table 8)", "",
              "| factor | level | mean objective | 95% interval | runs | effective scale lr·α/√r |",
              "|---|---|---|---|---|---|"]
    for m in result["marginal_means"]:
        scale = ""
        if m["factor"] == "learning_rate":
            ranks = sorted({s["lora_r"] for s in result["stability"] if "lora_r" in s})
            scale = ", ".join(f"r{r}: {effective_scale({'learning_rate': m['level'], 'lora_r': r}, alpha_per_rank):.3g}"
                              for r in ranks)
        lines.append(f"| {m['factor']} | {m['level']} | {_f(m['mean'])} | [{_f(m['lo'])}, {_f(m['hi'])}] | "
                     f"{m['runs']} | {scale} |")
    lines += ["", "Range of the marginal means per factor: "
              + ", ".join(f"{k} {_f(v, 3)}" for k, v in result["marginal_range"].items()), "",
              "## Matched comparisons", "",
              "Cells equal on every other factor; difference b − a of the cells' mean objective (negative: b is "
              "better).", "", "| factor | a | b | matched cells | mean b − a | range | 95% interval | b better in |",
              "|---|---|---|---|---|---|---|---|"]
    for c in result["matched"]:
        lines.append(f"| {c['factor']} | {c['a']} | {c['b']} | {c['cells']} | {_f(c['mean_diff'])} | "
                     f"{_f(c['min_diff'])} … {_f(c['max_diff'])} | [{_f(c['lo'])}, {_f(c['hi'])}] | "
                     f"{c['b_better_in']} of {c['cells']} |")
    eff = result["main_effects"]
    lines += ["", f"## Main effects (least squares, {eff['df']} residual degrees of freedom)", "",
              "| factor | level | vs | effect | 95% interval |", "|---|---|---|---|---|"]
    for e in eff["effects"]:
        lines.append(f"| {e['factor']} | {e['level']} | {e['reference']} | {_f(e['effect'])} | "
                     f"[{_f(e['lo'])}, {_f(e['hi'])}] |")
    if result["importances"]:
        lines += ["", "## Importance (Optuna)", "", "| method | " + " | ".join(
            sorted({k for v in result["importances"].values() for k in v if k != "error"})) + " |"]
        keys = sorted({k for v in result["importances"].values() for k in v if k != "error"})
        lines.append("|---|" + "---|" * len(keys))
        for method, values in result["importances"].items():
            if "error" in values:
                lines.append(f"| {method} | not computed: {values['error']} |")
            else:
                lines.append(f"| {method} | " + " | ".join(_f(values.get(k), 3) for k in keys) + " |")
    lines += ["", "## Stability (Table 9)", "",
              "| configuration | effective scale | peak grad norm | mean grad norm | grad-norm spikes | loss spikes | "
              "non-finite | state |", "|---|---|---|---|---|---|---|---|"]
    for s in result["stability"]:
        state = s["state"] + (f" ({s['pruned_reason']})" if s["pruned_reason"] else "")
        scale = f"{s['effective_scale']:.3g}" if s["effective_scale"] is not None else "-"
        lines.append(f"| {s['configuration']} | {scale} | {_f(s['peak_grad_norm'], 3)} | "
                     f"{_f(s['mean_grad_norm'], 3)} | {s['grad_norm_spikes']} | {s['loss_spikes']} | "
                     f"{s['non_finite']} | {state} |")
    return "\n".join(lines) + "\n"
