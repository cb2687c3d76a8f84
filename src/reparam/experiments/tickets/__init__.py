"""tickets experiments: baselines, comparisons and sweeps built on reparam.tickets."""
