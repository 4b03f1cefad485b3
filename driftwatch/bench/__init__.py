"""Benchmarks: one module per area, each with run(quick) -> dict; ``driftwatch bench`` runs them."""
