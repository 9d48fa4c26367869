"""What the benchmarks in tools/ share: percentiles and timed repetitions."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any


def pct(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples``, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(n: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    """The durations, in seconds, of ``n`` awaited calls made one after another."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t0)
    return out
