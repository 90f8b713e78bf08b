"""The kernel and model benchmarks: one module per bench over one harness
(timing, saved-memory probe, the CSV every run appends to); run one with
``python -m benchmarks.bench_masked_layers`` (``make bench`` runs them all),
and ``python -m benchmarks.report`` writes the README's tables."""
