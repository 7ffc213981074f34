"""semask benchmarks: ``python benchmarks/run.py --help``."""
