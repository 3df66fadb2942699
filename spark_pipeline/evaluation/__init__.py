"""Evaluation of checkpoints (paper §3.4, §6.4–6.8). Plain Python, no Dagster."""
