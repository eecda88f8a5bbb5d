"""Latency benchmarks and the human-readable report."""
