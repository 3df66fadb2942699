"""Corpus stages 2–4 of the paper (§3.2–3.4): section-aware chunks, quality-filtered samples,
the ordered training mixture and the evaluation sets. Plain Python, no Dagster."""
