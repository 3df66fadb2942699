"""LoRA continual pretraining (paper §4). The training process is its own program,
``python -m spark_pipeline.training``, started by torchrun; this package never imports dagster."""
