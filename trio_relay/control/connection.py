"""One control connection: its requests, each in its own task, and its subscriptions.

Every request gets exactly one answer; bad input gets an error answer naming the problem
and the connection lives on. Requests in flight and open subscriptions share a bounded
number of slots: when they are all taken the connection stops reading (backpressure). A
client that disconnects cancels its requests and subscriptions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_relay.broker.events import EventLog, Subscription
from trio_relay.control.auth import Principal, authorize
from trio_relay.control.decoding import Undecodable, decode_request
from trio_relay.control.operations import Operations
from trio_relay.errors import TooMany, code_of
from trio_relay.wire import (
    AgentEvent,
    ClusterEvent,
    ControlAnswer,
    ControlError,
    ControlEvents,
    ControlId,
    Event,
    Gap,
    SubscribeOp,
    UnsubscribeOp,
)

log = logging.getLogger(__name__)

#: Requests in flight and open subscriptions, together, on one connection.
MAX_REQUESTS_PER_CONNECTION = 64
MAX_SUBSCRIPTIONS_PER_CONNECTION = 16
EVENTS_PER_MESSAGE = 256
#: The shortest time between two event messages of one subscription, in seconds: one frame
#: of a 60 Hz display. With 50 busy agents the broker's CPU is 15 % lower than at 5 ms
#: (README, Benchmarks); an event after a quiet spell still goes at once.
EVENTS_COALESCE = 0.016

_encoder = msgspec.json.Encoder()


def error_of(exc: BaseException) -> ControlError:
    """The stable code (:func:`trio_relay.errors.code_of`) and message a client sees for an
    exception."""
    code = code_of(exc)
    if code == "internal":
        return ControlError(code, f"{type(exc).__name__}: {exc}")
    return ControlError(code, str(exc))


class Connection:
    """One client: reads requests, runs each in its own task, sends answers and events."""

    def __init__(
        self, operations: Operations, ws: WebSocketConnection, principal: Principal
    ) -> None:
        self.operations = operations
        self.ws = ws
        self.principal = principal
        self.subscriptions: dict[ControlId, tuple[trio.CancelScope, Subscription]] = {}
        self._slots = trio.Semaphore(MAX_REQUESTS_PER_CONNECTION)
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        """Serve the connection until the client leaves (or sends too big a message, which
        closes it); its requests and subscriptions end with it."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                while True:
                    message = await self.ws.get_message()
                    try:  # a free slot costs no scheduler pass (get_message checkpointed)
                        self._slots.acquire_nowait()
                    except trio.WouldBlock:
                        await self._slots.acquire()  # backpressure: stop reading when busy
                    nursery.start_soon(self._serve, message)
            except ConnectionClosed:
                pass  # the client left: its requests end with it
            nursery.cancel_scope.cancel()

    def caught_up(self, seq: int) -> bool:
        """Whether every subscription has taken the events up to ``seq``."""
        return all(stream.cursor > seq for _, stream in self.subscriptions.values())

    async def send(self, message: ControlAnswer | ControlEvents) -> None:
        """Send one message; a client that is gone is not an error of the broker's (it ends
        the connection's tasks)."""
        try:
            await self.ws.send_message(_encoder.encode(message).decode())
        except ConnectionClosed:
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()

    async def _serve(self, message: str | bytes) -> None:
        try:
            answer = await self._answer(message)
            if answer is not None:
                await self.send(answer)
        finally:
            self._slots.release()

    async def _answer(self, message: str | bytes) -> ControlAnswer | None:
        """The answer to one message; None for a subscription, answered already."""
        try:
            request = decode_request(message)
        except Undecodable as exc:
            return _failure(exc.request_id, exc)
        try:
            authorize(self.principal, request)
            match request:
                case SubscribeOp():
                    await self._subscribe(request)
                    return None  # answered before its first event
                case UnsubscribeOp(subscription=subscription):
                    result = self._unsubscribe(subscription)
                case _:
                    result = await self.operations.perform(request, self.principal)
        except Exception as exc:  # an error answer; Cancelled is not an Exception
            return _failure(request.id, exc)
        return ControlAnswer(id=request.id, ok=True, result=result)

    def _unsubscribe(self, subscription: ControlId) -> None:
        open_ = self.subscriptions.pop(subscription, None)
        if open_ is None:
            raise ValueError(f"no subscription {subscription!r} on this connection")
        open_[0].cancel()

    async def _subscribe(self, op: SubscribeOp) -> None:
        """Answer ``op`` with where the stream begins, then forward its events in a task
        of the connection's until it is unsubscribed or the connection ends. Raises
        ValueError for an id already open, TooMany past the limits."""
        if op.id in self.subscriptions:
            raise ValueError(f"a subscription with id {op.id!r} is already open on this connection")
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
            raise TooMany(
                f"{MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions are already open on this"
                " connection; unsubscribe one first"
            )
        try:
            self._slots.acquire_nowait()  # an open subscription holds a request slot
        except trio.WouldBlock:
            raise TooMany(
                f"{MAX_REQUESTS_PER_CONNECTION} requests and subscriptions are already open on"
                " this connection"
            ) from None
        try:
            agent = self.principal.agent or op.agent
            wanted = event_filter(agent, op.kinds)
            events = (
                self.operations.cluster_member("events --cluster").events
                if op.cluster
                else self.operations.broker.events
            )
            filtered = agent is not None or bool(op.kinds)
            # fixed now: no event falls between the answer and the stream
            stream = events.subscribe(op.since, wanted if filtered else None)
            scope = trio.CancelScope()
            self.subscriptions[op.id] = (scope, stream)
            result = {"last_seq": events.last_seq, "replay_end": _replay_end(events, op, wanted)}
            await self.send(ControlAnswer(id=op.id, ok=True, result=result))
        except BaseException:
            self.subscriptions.pop(op.id, None)
            self._slots.release()
            raise
        assert self._nursery is not None
        self._nursery.start_soon(self._forward, op.id, scope, stream)

    async def _forward(
        self,
        subscription: ControlId,
        scope: trio.CancelScope,
        stream: Subscription,
    ) -> None:
        try:
            with scope:
                sent = -math.inf
                async for event in stream:
                    # Events coming fast (busy agents' output) are sent at most once per
                    # EVENTS_COALESCE seconds: whatever came meanwhile goes in the same
                    # message, one WebSocket message and one send() instead of one each.
                    # An event after a quiet spell goes at once.
                    wait = sent + EVENTS_COALESCE - trio.current_time()
                    if wait > 0:
                        await trio.sleep(wait)
                    batch: Any = [event, *stream.ready(EVENTS_PER_MESSAGE - 1)]  # all wanted
                    await self.send(ControlEvents(id=subscription, events=batch))
                    sent = trio.current_time()
        finally:
            self.subscriptions.pop(subscription, None)
            self._slots.release()


def event_filter(agent: str | None, kinds: list[str] | None) -> Callable[[Event], bool]:
    """What a subscription passes on: a gap always; with ``agent``, only that agent's own
    events (never another's, nor the broker's own such as ``store_error``); with ``kinds``,
    only those kinds."""
    wanted_kinds = frozenset(kinds) if kinds else None

    def wanted(event: Event) -> bool:
        if type(event) is Gap:
            return True
        if type(event) is ClusterEvent:  # another broker's event, as it encoded it
            return agent in (None, event.agent) and (
                wanted_kinds is None or event.event.get("kind") in wanted_kinds
            )
        if agent is not None and (not isinstance(event, AgentEvent) or event.agent != agent):
            return False
        return wanted_kinds is None or type(event).__struct_config__.tag in wanted_kinds

    return wanted


def _replay_end(events: EventLog, op: SubscribeOp, wanted: Callable[[Event], bool]) -> int:
    """The newest event of the replay that passes the filters (0: none)."""
    if op.since is None:
        return 0
    return events.newest(op.since, wanted)  # wanted looks at kinds and agents only


def _failure(request_id: ControlId | None, exc: Exception) -> ControlAnswer:
    error = error_of(exc)
    if error.code == "internal":
        log.exception("control request %r failed", request_id)
    return ControlAnswer(id=request_id, ok=False, error=error)
