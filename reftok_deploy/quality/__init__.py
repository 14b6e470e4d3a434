"""Quality measurement: metrics, the built-in suite, the per-clip evaluation against the baselines."""
