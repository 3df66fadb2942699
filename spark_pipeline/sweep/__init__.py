"""The hyperparameter sweep of paper §5: settings (``configs/sweep.yaml``), the Optuna study
that runs short training trials, and an analysis that does not mislead."""
