"""The broker event log: sequence numbers, a bounded replay buffer, subscribers.

Events are kept in a ring of fixed capacity, which also holds at most ``output_budget``
bytes of agent output text as memory counts it (:func:`text_bytes`: a text with a box
drawing character or a spinner takes two bytes a character, and keeps a UTF-8 copy once it
was sent). Busy agents fill a ring with 4 KiB output events: without the budget 4,096 of
them are 16 to 48 MiB. A subscriber is a cursor into the ring, not a
queue: emitting never waits for anyone, costs the same however many subscribers there are,
and a subscriber that falls behind by more than the ring holds gets one explicit
:class:`~trio_relay.wire.Gap` naming the events it missed, never a silent hole.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import trio

from trio_relay.wire import AgentOutput, Event, Gap

E = TypeVar("E", bound=Event)
log = logging.getLogger(__name__)

#: Bytes of agent output text the ring keeps at most (older events are dropped first).
OUTPUT_BUDGET = 4 * 1024 * 1024


def text_bytes(text: str) -> int:
    """The memory ``text`` takes once it was sent: the string, and the UTF-8 copy CPython
    keeps in a string that is not ASCII once it was encoded."""
    return sys.getsizeof(text) + (0 if text.isascii() else len(text.encode()))


class EventLog:
    """Numbered broker events (the first is 1): the last ``capacity`` of them replayable,
    fewer when their agent output text takes more than ``output_budget`` bytes."""

    def __init__(self, capacity: int = 4096, output_budget: int = OUTPUT_BUDGET) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.output_budget = output_budget
        self._ring: list[Event | None] = [None] * capacity
        self._sizes = [0] * capacity  # bytes of output text of each slot's event
        self._output = 0  # their sum
        self._floor = 1  # the oldest event the budget left in the ring
        self._next = 1
        self._lot = trio.lowlevel.ParkingLot()
        self._listeners: list[Callable[[Event], None]] = []
        self.listener_failures = 0

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event (0 if none yet)."""
        return self._next - 1

    @property
    def first_seq(self) -> int:
        """The oldest sequence number still replayable."""
        return max(self._floor, self._next - self.capacity)

    def emit(self, event: E) -> E:
        """Number, timestamp and record ``event``, and wake subscribers. Never blocks, and
        never raises: a listener that fails is logged and counted (``listener_failures``)."""
        seq = event.seq = self._next
        event.time = time.time()
        slot = seq % self.capacity
        size = text_bytes(event.data) if type(event) is AgentOutput else 0
        self._output += size - self._sizes[slot]
        self._sizes[slot] = size
        self._ring[slot] = event
        self._next = seq + 1
        if self._output > self.output_budget:
            self._trim()
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the emitter, or the others
                self.listener_failures += 1
                log.exception("event listener %r failed on %r", listener, event)
        self._lot.unpark_all()
        return event

    def _trim(self) -> None:
        """Drop the oldest events until the output they hold fits the budget (the newest
        event stays, whatever its size)."""
        seq = self.first_seq
        while self._output > self.output_budget and seq < self._next - 1:
            slot = seq % self.capacity
            self._output -= self._sizes[slot]
            self._sizes[slot] = 0
            self._ring[slot] = None
            seq += 1
        self._floor = seq

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` synchronously inside every :meth:`emit`, so it sees every
        event, in order, with no gap. It must be quick and must not raise (hand the event
        to a task, for example with ``send_nowait`` on an unbounded memory channel)."""
        self._listeners.append(listener)

    def _at(self, seq: int) -> Event:
        event = self._ring[seq % self.capacity]
        assert event is not None and event.seq == seq
        return event

    def since(self, seq: int) -> list[Event]:
        """The retained events numbered above ``seq``, oldest first (no gap marker)."""
        return [self._at(s) for s in range(max(seq + 1, self.first_seq), self._next)]

    def subscribe(self, since: int | None = None) -> Subscription:
        """Events numbered above ``since``; with ``since=None``, only events emitted from now."""
        return Subscription(self, self._next if since is None else since + 1)

    async def wait_for(self, predicate: Callable[[Event], bool], *, since: int = 0) -> Event:
        """The first event above ``since`` for which ``predicate`` is true, waiting if needed.

        Cancellation: cancellable while waiting. A gap (events lost to the ring) raises
        LookupError, since the wanted event may have been among them.
        """
        async for event in self.subscribe(since):
            if isinstance(event, Gap):
                raise LookupError(f"events {event.first}..{event.last} were lost to the ring")
            if predicate(event):
                return event
        raise AssertionError("unreachable: subscriptions never end")


class Subscription:
    """An async iterator over the log from a cursor. Create with :meth:`EventLog.subscribe`.

    Each ``__anext__`` is a checkpoint. It never ends by itself; cancel the task reading it.
    """

    def __init__(self, log: EventLog, cursor: int) -> None:
        self._log = log
        self.cursor = max(cursor, 1)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        log = self._log
        if self.cursor >= log._next:
            while self.cursor >= log._next:
                await log._lot.park()
        else:
            await trio.lowlevel.checkpoint()
        first = log.first_seq
        if self.cursor < first:
            gap = Gap(first=self.cursor, last=first - 1, time=time.time())
            self.cursor = first
            return gap
        event = log._at(self.cursor)
        self.cursor += 1
        return event

    def ready(self, limit: int) -> list[Event]:
        """Up to ``limit`` events that are already there, without waiting (and without a
        checkpoint): a Gap first if the cursor fell behind the ring."""
        log = self._log
        out: list[Event] = []
        first = log.first_seq
        if self.cursor < first and self.cursor < log._next:
            out.append(Gap(first=self.cursor, last=first - 1, time=time.time()))
            self.cursor = first
        end = min(log._next, self.cursor + limit - len(out))
        out.extend(log._at(seq) for seq in range(self.cursor, end))
        self.cursor = max(self.cursor, end)
        return out
