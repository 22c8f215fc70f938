"""Benchmarks of weightport's byte paths (see BENCHMARKS.md); run ``python -m bench.run_all``."""
