"""Spark pipeline: datasheet-to-code data, LoRA continual pretraining and evaluation, on Dagster."""

__version__ = "0.1.0"
