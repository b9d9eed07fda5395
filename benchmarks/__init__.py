"""tfmux benchmarks: models, baselines, load generators and the one-command runner (run.py)."""
