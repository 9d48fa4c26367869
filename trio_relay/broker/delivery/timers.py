"""The engine's one timer task: when each mailbox's head stalls (``stall_at``), when a
hand-over the store refused is tried again (``pump_at``), and deferred store retries."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import NoReturn

import trio

from trio_relay.broker.delivery.mailbox import Mailbox


class Timers:
    """Deadlines in Trio time. Setting one sooner than the task waits for wakes it."""

    def __init__(self) -> None:
        self._wake = trio.Event()
        self._target = math.inf
        self._deferred: list[tuple[float, int, Callable[[], None]]] = []
        self._ids = itertools.count()

    def at(self, box: Mailbox, which: str, delay: float) -> None:
        """Set ``box.<which>`` (``stall_at`` or ``pump_at``) to ``delay`` from now."""
        at = trio.current_time() + delay
        setattr(box, which, at)
        self._sooner(at)

    def defer(self, fn: Callable[[], None], delay: float) -> None:
        """Run ``fn`` once, ``delay`` from now."""
        at = trio.current_time() + delay
        heapq.heappush(self._deferred, (at, next(self._ids), fn))
        self._sooner(at)

    def _sooner(self, at: float) -> None:
        if at < self._target:
            self._target = at
            self._wake.set()

    async def run(
        self,
        mailboxes: dict[str, Mailbox],
        pump: Callable[[Mailbox], None],
        stall: Callable[[Mailbox], None],
    ) -> NoReturn:
        """Call ``pump`` and ``stall`` for each mailbox whose time came, and the deferred
        calls, then sleep until the soonest. Runs until cancelled."""
        while True:
            now = trio.current_time()
            soonest = math.inf
            for box in list(mailboxes.values()):
                if box.pump_at is not None and box.pump_at <= now:
                    box.pump_at = None
                    pump(box)
                if box.stall_at is not None and box.stall_at <= now:
                    box.stall_at = None
                    stall(box)
                for at in (box.pump_at, box.stall_at):
                    if at is not None:
                        soonest = min(soonest, at)
            while self._deferred and self._deferred[0][0] <= now:
                _, _, again = heapq.heappop(self._deferred)
                again()
            if self._deferred:
                soonest = min(soonest, self._deferred[0][0])
            self._target = soonest
            self._wake = trio.Event()
            with trio.move_on_at(soonest):
                await self._wake.wait()
