"""pranc experiments: baselines, comparisons and sweeps built on reparam.pranc."""
