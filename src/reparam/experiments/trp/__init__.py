"""trp experiments: baselines, comparisons and sweeps built on reparam.trp."""
