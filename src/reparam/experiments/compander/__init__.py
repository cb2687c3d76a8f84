"""compander experiments: baselines, comparisons and sweeps built on reparam.compander."""
