"""Benchmarks: one module per area, each with ``run(quick: bool = False) -> dict``.

``driftwatch bench`` runs every module found here, writes one JSON file and prints a table.
A module's result is a (possibly nested) mapping of plain JSON values; a timing is best given as
``timed(fn, repeats)``'s ``{"median": s, "min": s, "max": s, "n": k}`` so that runs on a shared,
noisy machine are compared by their medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Call ``fn`` ``warmup`` times unmeasured, then ``repeats`` times; return the spread in s."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "n": repeats}


def flatten(result: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested results to ``{"a.b.median": v}`` keys for tables and comparisons."""
    if isinstance(result, dict):
        out: dict[str, Any] = {}
        for key, value in result.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: result}
