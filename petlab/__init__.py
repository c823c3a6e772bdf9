"""Library behind the DVC stages in stages/: data, models, the training loop, metrics, plots, params schema."""
