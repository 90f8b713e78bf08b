"""Helpers for tests, benchmarks and memory planning: the eager composite
the benchmarks compare with (baselines), and the bytes autograd saves for
backward (memory)."""
