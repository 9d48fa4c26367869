"""What the benchmarks in tools/ share: percentiles, timed repetitions, the figures' format
and the commit measured."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


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


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` as ``1.23x``; ``-`` if either is missing or zero."""
    return "-" if not a or not b else f"{a / b:.2f}x"


def spread(values: list[float | None], fmt: str = "{:.2f}") -> str:
    """``median (min-max)`` of the values given (``-`` if none; one alone as itself)."""
    given = [v for v in values if v is not None]
    if not given:
        return "-"
    if len(given) == 1:
        return fmt.format(given[0])
    low, mid, high = (fmt.format(f(given)) for f in (min, statistics.median, max))
    return f"{mid} ({low}-{high})"


def git_head() -> str:
    """The commit measured, and whether trio_relay/ differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "trio_relay"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return f"{head} (trio_relay/ modified)" if dirty else head
