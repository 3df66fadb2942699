"""Every plot the pipeline draws (small matplotlib PNGs for asset metadata: generic bars and
histograms, the evaluation report's, the sweep analysis's) and their Markdown embedding.
The data they show is computed elsewhere; these functions only draw."""

from __future__ import annotations

import base64
import math
from pathlib import Path

from spark_pipeline.evaluation.series import is_latest, latest, run_of


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(path: Path, labels: list[str], values: list[float], title: str, colours=None,
              horizontal: bool = True) -> Path:
    plt = _plt()
    height = max(1.6, 0.32 * len(labels) + 0.8) if horizontal else 3.0
    fig, ax = plt.subplots(figsize=(5.5, height), dpi=80)
    if horizontal:
        ax.barh(labels, values, color=colours)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:g}", va="center", fontsize=8)
        ax.set_xlim(0, max(list(values) + [1]) * 1.2)
        ax.invert_yaxis()
    else:
        ax.bar(labels, values, color=colours)
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def save(fig, path: Path) -> Path:
    """Tidy, write and close a figure."""
    for ax in fig.axes:
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _plt().close(fig)
    return path


def histogram(path: Path, values: list[float], title: str, xlabel: str, bins: int = 30) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 2.6), dpi=80)
    ax.hist(values or [0], bins=bins, color="#1565c0")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    return save(fig, path)


def embed_png(path: Path, alt: str = "plot", max_bytes: int = 80_000) -> str:
    """Markdown that shows the PNG inline (Dagster renders data URIs), or a link when large."""
    path = Path(path)
    if path.exists() and path.stat().st_size <= max_bytes:
        return f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"
    return f"[{alt}]({path})"


INLINE_MARKDOWN_LIMIT = 1000  # the UI shows Markdown metadata inline below this many characters, else behind a button


def sparkline_markdown(values: list[float], label: str, width: int = 240, height: int = 48,
                       max_points: int = 60) -> str:
    """A line of ``values`` as a tiny SVG in Markdown short enough for the Dagster UI to show
    inline on the asset page (a PNG never is: it only opens from "[Show Markdown]"). Followed by
    the first, last, lowest and highest value in words."""
    import math

    points = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not points:
        return f"{label}: no finite values"
    summary = (f"{label}: {points[0]:.4g} → {points[-1]:.4g} (min {min(points):.4g}, max {max(points):.4g}, "
               f"{len(points)} points)")
    while True:
        stride = max(1, math.ceil(len(points) / max_points))
        shown = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])  # the last one always
        lo, hi = min(shown), max(shown)
        span = (hi - lo) or 1.0
        dx = (width - 4) / max(1, len(shown) - 1)
        coords = " ".join(f"{2 + i * dx:.0f},{height - 2 - (v - lo) / span * (height - 4):.0f}"
                          for i, v in enumerate(shown))
        svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
               f'<polyline fill="none" stroke="#4f43dd" stroke-width="2" points="{coords}"/></svg>')
        markdown = f"![{label}](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})\n\n{summary}"
        if len(markdown) < INLINE_MARKDOWN_LIMIT or max_points <= 4:
            return markdown
        max_points //= 2


def _errors(values: list[float], rows: list[dict], metric: str):
    """Matplotlib yerr (2 x n) from the rows' interval columns; 0 where there is none."""
    lo = [v - r.get(f"{metric}_lo", v) if r and math.isfinite(r.get(f"{metric}_lo", float("nan"))) else 0
          for v, r in zip(values, rows, strict=True)]
    hi = [r.get(f"{metric}_hi", v) - v if r and math.isfinite(r.get(f"{metric}_hi", float("nan"))) else 0
          for v, r in zip(values, rows, strict=True)]
    return [[max(0, x) for x in lo], [max(0, x) for x in hi]]


def evaluation_plots(rows: list[dict], out: Path) -> dict[str, Path]:
    """The evaluation report's plots. Every point with its 95% interval; outlier checkpoints drawn as red crosses, outside the
    trend line."""
    plt = _plt()
    plots = {}
    adapter = [r for r in rows if r["model"].startswith("adapter") and r["category"] == "all"]
    base = {r["split"]: r for r in rows if r["model"] == "base" and r["category"] == "all"}
    fig, ax = plt.subplots(figsize=(5.5, 3), dpi=80)
    for split, colour in (("in_domain", "#1565c0"), ("held_out", "#c62828")):
        for run in sorted({run_of(r) for r in adapter}):
            pts = sorted((r for r in adapter if r["split"] == split and run_of(r) == run), key=lambda r: r["step"])
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

    newest = latest(rows)
    cats = sorted({r["category"] for r in rows if r["category"] != "all"})
    if newest is not None and cats:
        def pick(model_filter, c, split="in_domain"):
            match = [r for r in rows if model_filter(r) and r["category"] == c and r["split"] == split]
            return match[0] if match else None

        is_base = lambda r: r["model"] == "base"  # noqa: E731
        is_newest = lambda r: is_latest(r, newest)  # noqa: E731
        fig, ax = plt.subplots(figsize=(6, 3), dpi=80)
        width = 0.4
        for k, (model_filter, label) in enumerate(((is_base, "base"), (is_newest, f"adapter @ {newest[1]}"))):
            picked = [pick(model_filter, c) for c in cats]
            vals = [r["perplexity"] if r else 0 for r in picked]
            ax.bar([i + k * width for i in range(len(cats))], vals, width, label=label,
                   yerr=_errors(vals, picked, "perplexity"), capsize=2)
        ax.set_xticks([i + width / 2 for i in range(len(cats))], cats, rotation=30, ha="right", fontsize=7)
        ax.set_title("in-domain perplexity per category (95% interval)", fontsize=9)
        ax.legend(fontsize=7)
        plots["perplexity_per_category"] = save(fig, out / "perplexity_per_category.png")

        steps = sorted({r["step"] for r in adapter if run_of(r) == newest[0] and r.get("flag") != "outlier"})
        grid = []
        for c in cats:
            b = pick(is_base, c)
            line = []
            for s in steps:
                a = pick(lambda r, s=s: r["model"].startswith("adapter") and run_of(r) == newest[0]
                         and r["step"] == s, c)
                line.append((b["perplexity"] - a["perplexity"]) / b["perplexity"] * 100
                            if a and b and b["perplexity"] else float("nan"))
            grid.append(line)
        fig, ax = plt.subplots(figsize=(5.5, 0.35 * len(cats) + 1.2), dpi=80)
        im = ax.imshow(grid, aspect="auto", cmap="RdYlGn")
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=7)
        ax.set_yticks(range(len(cats)), cats, fontsize=7)
        ax.set_title(f"perplexity reduction vs base (%), run {newest[0].split('.')[-1]}", fontsize=9)
        fig.colorbar(im, ax=ax)
        plots["improvement_heatmap"] = save(fig, out / "improvement_heatmap.png")

        externals = sorted({r["model"] for r in rows if r["model"].startswith("external:")})
        series = [(is_base, "base"), (is_newest, "adapter")] + \
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


def grounding_gain_plot(rows: list[dict], path: Path) -> Path | None:
    """Spec-conditioned completion: each model's grounding gain (with the datasheet section
    minus without) per metric over all items, with its paired 95% interval; ``rows`` are the
    overall (category ``all``) rows of the models to compare, in order."""
    metrics = [m for m in ("token_accuracy", "ident_match", "compile_rate")
               if any(math.isfinite(r.get(f"{m}_gain", float("nan"))) for r in rows)]
    if not rows or not metrics:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3), dpi=80)
    bar = 0.8 / len(rows)
    for k, r in enumerate(rows):
        vals = [r.get(f"{m}_gain", float("nan")) for m in metrics]
        vals = [v if math.isfinite(v) else 0 for v in vals]
        lo = [v - r.get(f"{m}_gain_lo", v) if math.isfinite(r.get(f"{m}_gain_lo", float("nan"))) else 0
              for v, m in zip(vals, metrics, strict=True)]
        hi = [r.get(f"{m}_gain_hi", v) - v if math.isfinite(r.get(f"{m}_gain_hi", float("nan"))) else 0
              for v, m in zip(vals, metrics, strict=True)]
        label = r["model"] if r["model"] == "base" else f"adapter @ {r.get('step', '?')}"
        ax.bar([i + k * bar for i in range(len(metrics))], vals, bar, label=label,
               yerr=[[max(0, x) for x in lo], [max(0, x) for x in hi]], capsize=2)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks([i + 0.4 - bar / 2 for i in range(len(metrics))], metrics, fontsize=7)
    ax.set_ylabel("with section - without (95% paired)", fontsize=7)
    ax.set_title("spec-conditioned completion: grounding gain", fontsize=9)
    ax.legend(fontsize=6)
    return save(fig, path)


def sweep_plots(result: dict, runs: list[dict], sweep, folder: Path) -> dict[str, Path]:
    """The objective of every run by trial (pruned and failed marked), each factor's marginal
    means with intervals beside the matched differences, and the importance bars (``sweep``:
    the :class:`~spark_pipeline.sweep.settings.SweepSettings`)."""
    plt = _plt()
    out = {}
    fig, ax = plt.subplots(figsize=(6, 2.8), dpi=80)
    for state, style in (("COMPLETE", {"marker": "o", "color": "#4f43dd"}), ("PRUNED", {"marker": "x", "color": "red"}),
                         ("FAIL", {"marker": "s", "color": "grey"})):
        pts = [(r["trial"], r["value"] if r["value"] is not None else r.get("final_loss")) for r in runs
               if r["state"] == state]
        pts = [(t, v) for t, v in pts if v is not None and math.isfinite(v)]
        if pts:
            ax.scatter(*zip(*pts, strict=True), label=state.lower(), s=18, **style)
    ax.set_xlabel("trial", fontsize=8)
    ax.set_ylabel(sweep.objective, fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title("objective per trial (each seed a point)", fontsize=9)
    out["objective_per_trial"] = save(fig, folder / "objective_per_trial.png")

    factors = [f for f in sweep.space if any(m["factor"] == f for m in result["marginal_means"])]
    if factors:
        fig, axes = plt.subplots(1, len(factors), figsize=(3 * len(factors), 2.8), dpi=80, squeeze=False)
        for ax, factor in zip(axes[0], factors, strict=True):
            rows = [m for m in result["marginal_means"] if m["factor"] == factor]
            xs = list(range(len(rows)))
            ys = [m["mean"] for m in rows]
            err = [[max(0, m["mean"] - m["lo"]) if math.isfinite(m["lo"]) else 0 for m in rows],
                   [max(0, m["hi"] - m["mean"]) if math.isfinite(m["hi"]) else 0 for m in rows]]
            ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, label="marginal mean")
            ax.set_xticks(xs, [str(m["level"]) for m in rows], fontsize=7)
            ax.set_title(factor, fontsize=9)
            matched = [c for c in result["matched"] if c["factor"] == factor and c["cells"]]
            if matched:
                text = "\n".join(f"{c['b']} - {c['a']}: {c['mean_diff']:+.3g} ({c['cells']} matched)" for c in matched[:3])
                ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=6, va="bottom")
        axes[0][0].set_ylabel(sweep.objective, fontsize=8)
        fig.suptitle("marginal means (95% intervals) and matched differences", fontsize=9)
        out["factors"] = save(fig, folder / "factors.png")

    methods = {m: v for m, v in result["importances"].items() if "error" not in v}
    if methods:
        params = sorted({p for v in methods.values() for p in v})
        fig, ax = plt.subplots(figsize=(5, 2.6), dpi=80)
        width = 0.8 / len(methods)
        for i, (method, values) in enumerate(methods.items()):
            ax.barh([k + i * width for k in range(len(params))], [values.get(p, 0) for p in params], height=width,
                    label=method)
        ax.set_yticks([k + width * (len(methods) - 1) / 2 for k in range(len(params))], params, fontsize=7)
        ax.set_xlabel("importance (normalized)", fontsize=8)
        ax.legend(fontsize=7)
        out["importance"] = save(fig, folder / "importance.png")
    return out


def loss_plot(messages: list[dict], path: Path) -> Path | None:
    """The training loss over steps, from the training program's step messages (none: no step yet)."""
    steps = [m["step"] for m in messages if m.get("kind") == "step"]
    losses = [m["train/loss"] for m in messages if m.get("kind") == "step"]
    if not steps:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 2.6), dpi=80)
    ax.plot(steps, losses, marker="o", ms=3)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("train/loss", fontsize=8)
    ax.set_title("training loss", fontsize=9)
    return save(fig, path)
