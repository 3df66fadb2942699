"""The Dagster layer: one module per stage, each thin (config -> one core call -> metadata)."""
