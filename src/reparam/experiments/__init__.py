"""The experiment harness: per-method baselines, comparisons, sweeps and ablations (above the methods)."""
