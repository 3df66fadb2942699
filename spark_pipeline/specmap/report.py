"""What a person looks at after a SpecMap run: a status chart and a Markdown preview."""

from __future__ import annotations

import base64
from pathlib import Path

STATUS_COLOURS = {"implemented": "#2e7d32", "partial": "#f9a825", "not_implemented": "#c62828"}


def status_plot(meta: dict, path: Path) -> Path:
    """A horizontal bar per status, and the share of sections implemented, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = meta["stats"]
    labels = list(STATUS_COLOURS)
    values = [stats[k] for k in labels]
    fig, ax = plt.subplots(figsize=(5, 1.8), dpi=80)
    ax.barh(labels, values, color=[STATUS_COLOURS[k] for k in labels])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v}", va="center")
    ax.set_xlim(0, max(values + [1]) * 1.2)
    ax.invert_yaxis()
    ax.set_title(f"{meta['pair_id']}: {stats['sections']} sections, coverage {stats['coverage']:.0%}", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown_preview(meta: dict, mapping_text: str, plot: Path | None = None, rows: int = 25,
                     excerpt_chars: int = 1500) -> str:
    lines = []
    if plot is not None and plot.exists() and plot.stat().st_size < 60_000:
        data = base64.b64encode(plot.read_bytes()).decode()
        lines.append(f"![status](data:image/png;base64,{data})\n")
    lines += ["| section | title | status | files |", "| --- | --- | --- | --- |"]
    for s in meta["sections"][:rows]:
        files = [f["path"] for folder in s["folders"] for f in folder["files"]]
        title = s["title"].replace("|", "\\|")[:60]
        lines.append(f"| {s['id']} | {title} | {s['status']} | {', '.join(files[:3]).replace('|', '')} |")
    if len(meta["sections"]) > rows:
        lines.append(f"\n… {len(meta['sections']) - rows} more sections in the sidecar.")
    lines += ["", "```", mapping_text[:excerpt_chars], "```"]
    return "\n".join(lines)
