"""The report's artifact check: which checkpoints of a training run have a perplexity that
cannot be trusted.

The paper published a checkpoint whose perplexity jumped (~1.2 to ~5.6) while its generative
scores stayed smooth: the perplexity computation, not the model, had changed. The check looks
at the whole series of one run's checkpoints, ordered by step (whatever order they were
evaluated in):

1. **A robust trend of log perplexity.** Each checkpoint is compared with the running median
   of the five checkpoints around it, so up to two bad checkpoints in a row do not move it;
   the first and last two take Tukey's end rule (the median of the checkpoint itself, the
   nearest running median, and the line through the two nearest running medians extended to
   it), so a steep start of training is followed. With fewer than six checkpoints (one
   running median or none) the trend is the run's median.
2. **A jump** is a residual (log perplexity minus the trend) larger than ``log(factor)`` —
   the smallest departure worth reporting — *and* than ``z`` times the run's robust spread
   (1.4826 × the median absolute deviation of each checkpoint from the median of the others
   in its window, :func:`noise_residuals`), so a noisy run needs a larger departure than a
   smooth one. A perplexity that is not finite is always a jump.
3. **Cross-checks** with metrics that do not come from the same forward pass, each against
   its own robust trend over the run: the generative token accuracy and BLEU-4 of the same
   checkpoint (a move counts when it is beyond ``z`` robust spreads and beyond the
   checkpoint's own 95% interval), else the training loss at the checkpoint (beyond ``z``
   robust spreads and at least half the perplexity's jump, in log units). A jump is an
   **outlier** unless the independent metrics moved with it (worse perplexity with worse
   generative scores, or a higher training loss): then the model itself changed, and the
   jump is kept as a real one. Generative scores, when the run has them, decide; the training
   loss only when it has none; with neither, the perplexity alone.

Every jump is returned with the evidence that fired (:func:`perplexity_jumps`);
:func:`perplexity_outliers` keeps the outliers.
"""

from __future__ import annotations

import math
from statistics import median

WIDTH = 5
"""Checkpoints in the trend's window."""
MAD_TO_SD = 1.4826
"""The median absolute deviation of normal noise times this is its standard deviation."""
GENERATIVE = (("gen_token_accuracy", "generative token accuracy"), ("bleu4", "BLEU-4"))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def robust_trend(x: list[float], y: list[float], width: int = WIDTH) -> list[float]:
    """The trend at each point of ``y`` over ``x`` (sorted by ``x``): the running median of
    ``width`` points; a point nearer an end than ``width // 2`` takes Tukey's end rule, the
    median of itself, the nearest running median and the straight line through the two
    nearest running medians extended to it (a trend is followed, a bad end point is not).
    With one running median or none (fewer than ``width + 1`` points): the median of all."""
    n, h = len(y), width // 2
    if n < width + 1:
        return [median(y)] * n if n else []
    trend = [median(y[i - h:i + h + 1]) if h <= i < n - h else 0.0 for i in range(n)]
    for i, (a, b) in [*((i, (h, h + 1)) for i in range(h)), *((i, (n - 1 - h, n - 2 - h)) for i in range(n - h, n))]:
        line = trend[a] + (trend[b] - trend[a]) / (x[b] - x[a]) * (x[i] - x[a]) if x[b] != x[a] else trend[a]
        trend[i] = median([y[i], trend[a], line])
    return trend


def robust_spread(residuals: list[float]) -> float:
    """1.4826 × the median absolute deviation (a standard deviation for normal noise)."""
    if not residuals:
        return 0.0
    centre = median(residuals)
    return MAD_TO_SD * median(abs(r - centre) for r in residuals)


def noise_residuals(y: list[float], width: int = WIDTH) -> list[float]:
    """Each point minus the median of the others in its window (the ``width`` around it, the
    ``width`` nearest an end near the ends): the run's noise, which a running median that
    includes the point would shrink (on a steady trend it returns the point itself)."""
    n, h = len(y), width // 2
    out = []
    for i in range(n):
        lo = min(max(0, i - h), n - width)
        out.append(y[i] - median(y[lo:i] + y[i + 1:lo + width]))
    return out


def _deviations(points: list[dict], key: str, transform=lambda v: v,
                size: float | None = None) -> dict[int, tuple[float, float]]:
    """Index -> (residual from the robust trend, robust spread) of one metric over the run,
    for the points where it is finite; empty when fewer than three have it. The spread is
    that of the noise (:func:`noise_residuals`) when the run has more than ``WIDTH`` points,
    over the points whose residual is within ``size`` (so that two bad checkpoints do not
    widen it through their neighbours), else that of the residuals themselves."""
    have = [i for i, p in enumerate(points) if _finite(p.get(key)) and (key != "perplexity" or p[key] > 0)]
    if len(have) < 3:
        return {}
    x = [float(points[i]["step"]) for i in have]
    y = [transform(float(points[i][key])) for i in have]
    residuals = [v - t for v, t in zip(y, robust_trend(x, y), strict=True)]
    if len(y) > WIDTH:
        noise = noise_residuals(y)
        calm = [e for e, r in zip(noise, residuals, strict=True) if size is None or abs(r) <= size]
        spread = robust_spread(calm or noise)
    else:
        spread = robust_spread(residuals)
    return {i: (r, spread) for i, r in zip(have, residuals, strict=True)}


def _cross_check(points, i, jump_sign, jump_size, z, deviations) -> tuple[str, dict[str, str]]:
    """Which independent metric moved with checkpoint ``i``'s perplexity: (verdict, per metric
    "smooth" / "moved with it" / "moved against it"); verdict "corroborated", "artifact"
    (generative scores smooth), "unconfirmed" (training loss smooth, or nothing to check)."""
    found: dict[str, str] = {}
    for key, _ in GENERATIVE:
        if i not in deviations[key]:
            continue
        residual, spread = deviations[key][i]
        lo, hi = points[i].get(f"{key}_lo"), points[i].get(f"{key}_hi")
        half = (hi - lo) / 2 if _finite(lo) and _finite(hi) else 0.0
        moved = abs(residual) > z * spread and abs(residual) > half
        # higher perplexity is worse, lower accuracy and BLEU are worse
        found[key] = "smooth" if not moved else ("moved with it" if residual * jump_sign < 0 else "moved against it")
    if found:
        return ("corroborated" if "moved with it" in found.values() else "artifact"), found
    if i in deviations["train_loss"]:
        residual, spread = deviations["train_loss"][i]
        moved = abs(residual) > z * spread and abs(residual) >= jump_size / 2
        found["train_loss"] = "smooth" if not moved else (
            "moved with it" if residual * jump_sign > 0 else "moved against it")
        return ("corroborated" if found["train_loss"] == "moved with it" else "unconfirmed"), found
    return "unconfirmed", found


NAMES = {"train_loss": "training loss", **dict(GENERATIVE)}


def _evidence(jump: dict) -> str:
    if jump["trend_perplexity"] is None:
        head = f"perplexity {jump['perplexity']} is not a finite number"
    else:
        z = "" if jump["robust_z"] is None else f", {jump['robust_z']:.1f} robust SDs"
        head = (f"perplexity {jump['perplexity']:.4g} is ×{jump['ratio']:.2f} its run's trend "
                f"({jump['trend_perplexity']:.4g}{z})")
    checks = jump["cross_checks"]
    if not checks:
        return head + "; no generative score or training loss to cross-check: perplexity alone"
    said = "; ".join(f"{NAMES[k]} {v}" for k, v in checks.items())
    tail = {"artifact": "the artifact signature (perplexity moved, generation did not)",
            "corroborated": "a real change of the model, not flagged",
            "unconfirmed": "nothing independent moved with it"}[jump["verdict"]]
    return f"{head}; {said}: {tail}"


def perplexity_jumps(points: list[dict], factor: float, z: float) -> list[dict]:
    """Every checkpoint of one run whose perplexity departs from the run's robust trend by more
    than ``factor`` and ``z`` robust spreads (module docstring), in step order, each with
    ``trend_perplexity``, ``ratio`` (perplexity / trend), ``robust_z``, ``cross_checks``,
    ``verdict``, ``outlier`` (not corroborated by an independent metric) and ``evidence`` (a
    sentence). ``points``: dicts with ``checkpoint``, ``step``, ``perplexity`` and, when known,
    ``gen_token_accuracy`` / ``bleu4`` (with ``_lo`` / ``_hi``) and ``train_loss``."""
    points = sorted(points, key=lambda p: p["step"])
    deviations = {"perplexity": _deviations(points, "perplexity", math.log, math.log(factor)),
                  "train_loss": _deviations(points, "train_loss"),
                  **{key: _deviations(points, key) for key, _ in GENERATIVE}}
    jumps = []
    for i, p in enumerate(points):
        value = p.get("perplexity")
        if not (_finite(value) and value > 0):
            jump = {**p, "trend_perplexity": None, "ratio": None, "robust_z": None, "cross_checks": {},
                    "verdict": "unconfirmed"}
        else:
            if i not in deviations["perplexity"]:
                continue  # fewer than three checkpoints with a perplexity: nothing to compare with
            residual, spread = deviations["perplexity"][i]
            if abs(residual) <= math.log(factor) or abs(residual) <= z * spread:
                continue
            verdict, checks = _cross_check(points, i, 1 if residual > 0 else -1, abs(residual), z, deviations)
            jump = {**p, "trend_perplexity": value / math.exp(residual), "ratio": math.exp(residual),
                    "robust_z": abs(residual) / spread if spread > 0 else None, "cross_checks": checks,
                    "verdict": verdict}
        jump["outlier"] = jump["verdict"] != "corroborated"
        jump["evidence"] = _evidence(jump)
        jumps.append(jump)
    return jumps


def perplexity_outliers(points: list[dict], factor: float, z: float) -> list[dict]:
    """The jumps of :func:`perplexity_jumps` that no independent metric corroborates."""
    return [j for j in perplexity_jumps(points, factor, z) if j["outlier"]]
