"""Small matplotlib plots for asset metadata, written as PNG, and their Markdown embedding."""

from __future__ import annotations

import base64
from pathlib import Path


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
