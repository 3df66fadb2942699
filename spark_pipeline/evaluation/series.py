"""Which checkpoint a table row belongs to: its training run, and the newest run's latest
checkpoint that is not an outlier (what the report compares, plots and names winners for)."""

from __future__ import annotations


def run_of(row: dict) -> str:
    """The training run a row's checkpoint belongs to (``hero.<run id>``)."""
    return (row.get("checkpoint") or "").split("--")[0]


def latest(rows: list[dict]) -> tuple[str, int] | None:
    """(run, step) of the newest run's latest checkpoint that is not an outlier."""
    adapters = [r for r in rows if r["model"].startswith("adapter") and r.get("flag") != "outlier"]
    if not adapters:
        return None
    run = max(run_of(r) for r in adapters)
    return run, max(r["step"] for r in adapters if run_of(r) == run)


def is_latest(row: dict, newest: tuple[str, int] | None) -> bool:
    return newest is not None and row["model"].startswith("adapter") and (run_of(row), row["step"]) == newest
