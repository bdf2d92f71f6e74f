"""Synthetic catalog generators for the demo, the examples and the benchmarks."""
