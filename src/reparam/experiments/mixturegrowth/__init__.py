"""mixturegrowth experiments: baselines, comparisons and sweeps built on reparam.mixturegrowth."""
