"""What a person looks at after a SpecMap run: a status chart and a Markdown preview."""

from __future__ import annotations

from pathlib import Path

from spark_pipeline.plots import bar_chart, embed_png

STATUS_COLOURS = {"implemented": "#2e7d32", "partial": "#f9a825", "not_implemented": "#c62828",
                  "not_applicable": "#9e9e9e"}


def status_plot(meta: dict, path: Path) -> Path:
    """A bar per status, titled with the share of sections implemented, as a PNG."""
    stats = meta["stats"]
    labels = list(STATUS_COLOURS)
    return bar_chart(path, labels, [stats.get(k, 0) for k in labels],
                     f"{meta['pair_id']}: {stats['sections']} sections, coverage {stats['coverage']:.0%}",
                     [STATUS_COLOURS[k] for k in labels])


def markdown_preview(meta: dict, mapping_text: str, plot: Path | None = None, rows: int = 25,
                     excerpt_chars: int = 1500) -> str:
    lines = [embed_png(plot, "status") + "\n"] if plot is not None else []
    lines += ["| section | title | status | files |", "| --- | --- | --- | --- |"]
    for s in meta["sections"][:rows]:
        files = [f["path"] for folder in s["folders"] for f in folder["files"]]
        title = s["title"].replace("|", "\\|")[:60]
        lines.append(f"| {s['id']} | {title} | {s['status']} | {', '.join(files[:3]).replace('|', '')} |")
    if len(meta["sections"]) > rows:
        lines.append(f"\n… {len(meta['sections']) - rows} more sections in the sidecar.")
    lines += ["", "```", mapping_text[:excerpt_chars], "```"]
    return "\n".join(lines)
