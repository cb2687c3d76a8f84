"""image experiments: baselines, comparisons and sweeps built on reparam.image."""
