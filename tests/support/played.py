"""What the property tests' drivers share: the record of a played scenario."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from trio_relay.errors import RelayError, WorkerError, WorkerExited


@dataclass
class Timeline:
    """For each request (by index): its outcomes, and when it started and ended (MockClock)."""

    outcomes: dict[int, list[tuple[Any, ...]]]
    starts: dict[int, float]
    ends: dict[int, float]


async def attempt(
    i: int,
    timeline: Timeline,
    call: Callable[[], Awaitable[Any]],
    ok: Callable[[Any], tuple[Any, ...]],
) -> None:
    """Run request ``i`` and record its outcome and times in ``timeline``: ``ok(payload)``,
    the error's name (with the exit status or the worker's code), or ``Cancelled``, which
    is re-raised."""
    timeline.starts[i] = trio.current_time()
    try:
        timeline.outcomes[i].append(ok(await call()))
    except WorkerExited as exc:
        timeline.outcomes[i].append(("WorkerExited", exc.code, exc.signal))
    except WorkerError as exc:
        timeline.outcomes[i].append(("WorkerError", exc.code))
    except RelayError as exc:
        timeline.outcomes[i].append((type(exc).__name__,))
    except trio.Cancelled:
        timeline.outcomes[i].append(("Cancelled",))
        raise
    finally:
        timeline.ends[i] = trio.current_time()
