"""The events of one subscription as a client receives them (see
:meth:`trio_relay.client.RelayClient.subscribe`)."""

from __future__ import annotations

from collections import deque

import trio

from trio_relay.wire import Event, Gap

MAX_BUFFERED_EVENTS = 4096


class EventStream:
    """Events of one subscription, in order, as an async iterator: buffered up to
    :data:`MAX_BUFFERED_EVENTS`; what overflows becomes one :class:`~trio_relay.wire.Gap`,
    never a silent hole. Once the connection is gone, iterating raises its error (after
    the buffered events). ``__anext__`` is a checkpoint, and cancellable while it waits."""

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.missed: tuple[int, int] | None = None
        self.closed: BaseException | None = None
        self.last_seq = 0  # the newest event when the subscription began
        #: The newest event of the replay that passes the subscription's filters (0: none).
        self.replay_end = 0

    def push(self, event: Event) -> None:
        """Buffer one event the broker sent (never blocks)."""
        if len(self.events) >= MAX_BUFFERED_EVENTS:
            first = self.missed[0] if self.missed else event.seq
            self.missed = (first, event.seq)
        else:
            if self.missed is not None:
                self.events.append(Gap(first=self.missed[0], last=self.missed[1]))
                self.missed = None
            self.events.append(event)
        self.lot.unpark_all()

    def close(self, error: BaseException) -> None:
        """The connection is gone: once the buffer is drained, iterating raises ``error``."""
        self.closed = error
        self.lot.unpark_all()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self.events:
            if self.closed is not None:
                raise self.closed
            await self.lot.park()
        await trio.lowlevel.checkpoint()
        return self.events.popleft()
