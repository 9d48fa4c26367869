"""The broker event log: sequence numbers, a bounded replay buffer, subscribers.

Events are kept in a ring of fixed capacity, which also holds at most ``output_budget``
bytes of agent output as memory counts it. The newest output, up to ``hot_budget`` bytes,
is kept as the events themselves (:func:`text_bytes`: a text with a box drawing character
or a spinner takes two bytes a character, and keeps a UTF-8 copy once it was sent); older
output is packed into compressed blocks (:class:`~trio_relay.broker.packed_output.PackedOutput`),
which give back equal events when a subscriber reads that far back. The ring turning over
takes a block's events one at a time (its memory goes with the last); the budget drops the
oldest blocks whole. Busy agents fill a ring with output events: 4,096 of 4 KiB each would be 16
to 48 MiB as strings, and an agent CLI's output packs to a tenth of its size or less.

A subscriber is a cursor into the ring, not a queue: emitting never waits for anyone, and a
subscriber that falls behind by more than the ring holds gets one explicit
:class:`~trio_relay.wire.Gap` naming the events it missed, never a silent hole. A waiting
subscriber with a filter is woken only by an event it wants: emitting asks each such filter
(a call, not a wake-up of its task), and moves the cursor of those that do not want it past
it. So an agent's own subscription is not woken by every other agent's output.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import trio

from trio_relay.broker.packed_output import PackedOutput
from trio_relay.wire import AgentOutput, Event, Gap

E = TypeVar("E", bound=Event)
log = logging.getLogger(__name__)

#: Bytes of memory the ring's agent output takes at most (older events are dropped first).
OUTPUT_BUDGET = 4 * 1024 * 1024
#: Bytes of the newest output kept as events; older output is packed (half of it at a time).
HOT_BUDGET = 256 * 1024


def text_bytes(text: str) -> int:
    """The memory ``text`` takes once it was sent: the string, and the UTF-8 copy CPython
    keeps in a string that is not ASCII once it was encoded."""
    return sys.getsizeof(text) + (0 if text.isascii() else len(text.encode()))


class EventLog:
    """Numbered broker events (the first is 1): the last ``capacity`` of them replayable,
    fewer when their agent output takes more than ``output_budget`` bytes. Output past the
    newest ``hot_budget`` bytes is kept compressed."""

    def __init__(
        self,
        capacity: int = 4096,
        output_budget: int = OUTPUT_BUDGET,
        hot_budget: int = HOT_BUDGET,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.output_budget = output_budget
        self.hot_budget = hot_budget
        # A slot holds its event, or the block its output event was packed into.
        self._ring: list[Event | PackedOutput | None] = [None] * capacity
        # Bytes of output each slot holds: an event's text, or a block's size on its last
        # slot (a block's other slots hold 0).
        self._sizes = [0] * capacity
        self._output = 0  # their sum
        self._hot = 0  # the part of it that is events, not blocks
        self._packed_to = 1  # the output events below it are packed (or gone)
        self._texts: list[tuple[PackedOutput, bytes]] = []  # the last blocks read, unpacked
        self._floor = 1  # the oldest event the budget left in the ring
        self._next = 1
        self._lot = trio.lowlevel.ParkingLot()  # waiting subscribers without a filter
        self._waiting: dict[Subscription, None] = {}  # waiting subscribers with one
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

    @property
    def output_bytes(self) -> int:
        """The memory the retained agent output takes, blocks and events, in bytes."""
        return self._output

    def emit(self, event: E) -> E:
        """Number, timestamp and record ``event``, and wake subscribers. Never blocks, and
        never raises: a listener that fails is logged and counted (``listener_failures``)."""
        seq = event.seq = self._next
        event.time = time.time()
        slot = seq % self.capacity
        if self._ring[slot] is not None:
            self._forget(slot)  # what the ring turns over
        size = text_bytes(event.data) if type(event) is AgentOutput else 0
        self._sizes[slot] = size
        self._output += size
        self._hot += size
        self._ring[slot] = event
        self._next = seq + 1
        if self._hot > self.hot_budget:
            self._pack()
        if self._output > self.output_budget:
            self._trim()
        # Before the listeners, which may emit in turn: a waiting filtered subscription is
        # judged on this event before the next.
        for waiting in self._waiting:
            if waiting.cursor == seq:  # it has taken every event before this one
                try:
                    wanted = waiting._wanted(event)  # type: ignore[misc]
                except Exception:  # its filter's bug: woken, its task meets it in ready()
                    wanted = True
                if wanted:
                    waiting._lot.unpark_all()
                else:
                    waiting.cursor = seq + 1
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the emitter, or the others
                self.listener_failures += 1
                log.exception("event listener %r failed on %r", listener, event)
        if self._lot:  # mostly no one: a subscriber sending or coalescing is not parked
            self._lot.unpark_all()
        return event

    def _pack(self) -> None:
        """Pack the oldest output events still events into one block, until at most half
        the hot budget is left as events."""
        ring, sizes, capacity = self._ring, self._sizes, self.capacity
        seq = max(self._packed_to, self.first_seq)
        events: list[AgentOutput] = []
        packed = 0
        goal = self._hot - self.hot_budget // 2
        while packed < goal and seq < self._next:
            event = ring[seq % capacity]
            if type(event) is AgentOutput:
                events.append(event)
                packed += sizes[seq % capacity]
            seq += 1
        self._packed_to = seq
        if not events:
            return
        block = PackedOutput(events)
        for event in events:
            ring[event.seq % capacity] = block
            sizes[event.seq % capacity] = 0
        sizes[block.last % capacity] = block.size  # freed with the block's last event
        self._hot -= packed
        self._output += block.size - packed

    def _forget(self, slot: int) -> None:
        """Forget what ``slot`` holds: its event, or its place in a block (whose memory is
        given back with its last event's place)."""
        size = self._sizes[slot]
        if size:
            self._output -= size
            item = self._ring[slot]
            if type(item) is PackedOutput:
                self._texts = [kept for kept in self._texts if kept[0] is not item]
            else:
                self._hot -= size
            self._sizes[slot] = 0
        self._ring[slot] = None

    def _trim(self) -> None:
        """Drop the oldest events and blocks (whole) until the output they hold fits the
        budget (the newest event stays, whatever its size)."""
        seq = self.first_seq
        newest = self._next - 1
        capacity = self.capacity
        while self._output > self.output_budget and seq < newest:
            item = self._ring[seq % capacity]
            if type(item) is PackedOutput:
                if item.last >= newest:
                    break
                for packed in item.seqs:
                    if packed >= seq:
                        self._forget(packed % capacity)
                seq = item.last + 1
            else:
                self._forget(seq % capacity)
                seq += 1
        self._floor = max(self._floor, seq)

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` synchronously inside every :meth:`emit`, so it sees every
        event, in order, with no gap. It must be quick and must not raise (hand the event
        to a task, for example with ``send_nowait`` on an unbounded memory channel)."""
        self._listeners.append(listener)

    def _at(self, seq: int) -> Event:
        item = self._ring[seq % self.capacity]
        if type(item) is PackedOutput:
            return item.event(seq, self._text_of(item))
        assert item is not None and item.seq == seq
        return item

    def _text_of(self, block: PackedOutput) -> bytes:
        """The block's text, unpacked once for the reads that follow (the last two blocks
        read are kept: subscribers read in order, and there may be two far behind)."""
        for kept, text in self._texts:
            if kept is block:
                return text
        text = block.text()
        self._texts = [(block, text), *self._texts[:1]]
        return text

    def newest(self, since: int, wanted: Callable[[Event], bool]) -> int:
        """The sequence number of the newest retained event above ``since`` that ``wanted``
        passes (0: none), unpacking nothing: ``wanted`` sees a packed output event without
        its text (``data`` empty), so it may judge an event by its kind and agent only."""
        for seq in range(self._next - 1, max(since, self.first_seq - 1), -1):
            item = self._ring[seq % self.capacity]
            if type(item) is PackedOutput:
                item = item.header(seq)
            assert item is not None
            if wanted(item):
                return seq
        return 0

    def since(self, seq: int) -> list[Event]:
        """The retained events numbered above ``seq``, oldest first (no gap marker)."""
        return [self._at(s) for s in range(max(seq + 1, self.first_seq), self._next)]

    def subscribe(
        self, since: int | None = None, wanted: Callable[[Event], bool] | None = None
    ) -> Subscription:
        """Events numbered above ``since``; with ``since=None``, only events emitted from now.
        With ``wanted``, only the events it passes, and every gap: it must judge an event
        by its kind and agent (it sees packed output without its text, so a subscription
        that does not want output unpacks none)."""
        return Subscription(self, self._next if since is None else since + 1, wanted)

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
    One task reads a subscription at a time. An error of its filter is raised to that task.
    """

    def __init__(
        self, log: EventLog, cursor: int, wanted: Callable[[Event], bool] | None = None
    ) -> None:
        self._log = log
        self.cursor = max(cursor, 1)
        self._wanted = wanted
        # Without a filter it waits with every other; with one, alone, woken by emit only
        # for an event it wants.
        self._lot = log._lot if wanted is None else trio.lowlevel.ParkingLot()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        log = self._log
        if self.cursor >= log._next:
            await self._park()
        else:
            await trio.lowlevel.checkpoint()
        while not (taken := self.ready(1)):  # none it wants: wait for more
            await self._park()
        return taken[0]

    async def _park(self) -> None:
        log = self._log
        if self._wanted is None:
            while self.cursor >= log._next:
                await self._lot.park()
            return
        log._waiting[self] = None
        try:
            while self.cursor >= log._next:  # emit moves the cursor past what it does not want
                await self._lot.park()
        finally:
            log._waiting.pop(self, None)

    def ready(self, limit: int) -> list[Event]:
        """Up to ``limit`` events that are already there, without waiting (and without a
        checkpoint): a Gap first if the cursor fell behind the ring."""
        log = self._log
        out: list[Event] = []
        first = log.first_seq
        if self.cursor < first and self.cursor < log._next:
            out.append(Gap(first=self.cursor, last=first - 1, time=time.time()))
            self.cursor = first
        wanted = self._wanted
        if wanted is None:
            end = min(log._next, self.cursor + limit - len(out))
            out.extend(log._at(seq) for seq in range(self.cursor, end))
            self.cursor = max(self.cursor, end)
            return out
        ring, capacity = log._ring, log.capacity
        seq = self.cursor
        while len(out) < limit and seq < log._next:
            item = ring[seq % capacity]
            if type(item) is PackedOutput:
                if wanted(item.header(seq)):
                    out.append(log._at(seq))
            else:
                assert item is not None
                if wanted(item):
                    out.append(item)
            seq += 1
        self.cursor = seq
        return out
