"""How the benchmarks time one operation: warm up, then median and 95th percentile."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def measure(function: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median and p95 of `rounds` calls, in milliseconds, after up to 20 warm-up calls."""
    for _ in range(min(20, rounds)):
        function()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return statistics.median(samples) * 1000, samples[int(len(samples) * 0.95) - 1] * 1000
