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
