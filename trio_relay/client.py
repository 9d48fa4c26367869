"""A Trio client of the control channel, for every operation and for the event stream.

    async with open_client() as client:          # finds the broker (see find_broker)
        await client.spawn("sh", ["bash", "--norc"])
        screen = await client.snapshot("sh")
        async with client.subscribe(since=0) as events:
            async for event in events:           # wire.BrokerEvent Structs
                ...

Each message from the broker is decoded once: its envelope, the events of a subscription,
and a result straight into the Struct the call returns.

Errors: :class:`BrokerUnreachable` if there is no broker to talk to; :class:`RemoteError`
(with the broker's stable ``code``) for an error answer.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from trio_relay.address import UNIX_SCHEME, find_broker, parse_address
from trio_relay.errors import BrokerUnreachable, RemoteError
from trio_relay.event_stream import EventStream
from trio_relay.wire import (
    AgentSummary,
    BrokerEvent,
    BrokerStatus,
    ClusterAgentSummary,
    ControlError,
    DeliveryRecord,
    FlushResult,
    ModeResult,
    PeerSummary,
    PendingDeliveries,
    PruneResult,
    ScreenSnapshot,
    SendReceipt,
)

__all__ = [
    "UNIX_SCHEME",
    "EventStream",
    "RelayClient",
    "find_broker",
    "open_client",
    "parse_address",
]


def _gone(exc: ConnectionClosed) -> BrokerUnreachable:
    reason = exc.reason.reason if exc.reason is not None and exc.reason.reason else ""
    return BrokerUnreachable(
        "the broker went away (it stopped or crashed"
        + (f": {reason}" if reason else "")
        + "); check `trio-relay status`"
    )


class _Message(msgspec.Struct):
    """What the broker sends: an answer (``ok``, and ``result`` or ``error``), or events
    of a subscription. ``result`` stays undecoded until the caller says its type."""

    id: Any = None
    ok: bool | None = None
    result: msgspec.Raw = msgspec.Raw(b"null")
    error: ControlError | None = None
    events: list[BrokerEvent] | None = None


class _Subscribed(msgspec.Struct):
    """The answer to ``subscribe``."""

    last_seq: int
    replay_end: int | None = None


_decoder = msgspec.json.Decoder(_Message)
_encoder = msgspec.json.Encoder()
T = TypeVar("T")


@functools.cache
def _result_decoder(kind: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(kind)


def _as(kind: type[T], result: msgspec.Raw) -> T:
    """A result decoded as ``kind``. Raises RemoteError("internal") if the broker sent
    something of another shape (a broker of another version, say)."""
    try:
        return _result_decoder(kind).decode(result)
    except msgspec.ValidationError as exc:
        raise RemoteError("internal", f"unexpected result from the broker: {exc}") from None


@asynccontextmanager
async def open_client(
    url: str | None = None,
    token: str | None = None,
    state_dir: str | None = None,
    *,
    connect_timeout: float = 10,
) -> AsyncIterator[RelayClient]:
    """Connect to a broker for the duration of the block (see :func:`find_broker`).

    Raises BrokerUnreachable if it cannot connect or the broker refuses the token,
    BadAddress for a URL that is not a broker's. An exception raised in the block comes
    out as itself, not wrapped in a group.
    """
    url, token = find_broker(url, token, state_dir)
    stream, host, resource = await _open_stream(url, connect_timeout)
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    connected = False
    try:
        # We own the stream (trio-websocket's own connect leaves it open when the
        # handshake is refused), so it is closed however this ends.
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(connect_timeout) as handshake:
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    host,
                    resource,
                    extra_headers=headers,
                    max_message_size=16 * 1024 * 1024,
                )
            if handshake.cancelled_caught:
                raise BrokerUnreachable(
                    f"{url} accepted a connection but did not complete a WebSocket handshake "
                    f"in {connect_timeout:g} s; is it a trio-relay broker?"
                )
            connected = True
            client = RelayClient(ws)
            nursery.start_soon(client._receive)
            try:
                yield client
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        rejected = group.subgroup(ConnectionRejected)
        if rejected is not None and not connected:
            raise _refused(url, rejected) from None
        inner = _single(group)
        if inner is not None:
            raise inner from None  # the block's own exception, unwrapped
        raise
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _open_stream(url: str, timeout: float) -> tuple[trio.abc.Stream, str, str]:
    """A byte stream to the broker at ``url``, and the Host and resource its handshake
    names. Raises BadAddress, or BrokerUnreachable if nothing answers in ``timeout`` s."""
    address = parse_address(url)
    try:
        with trio.fail_after(timeout):
            if isinstance(address, str):
                return await trio.open_unix_socket(address), "localhost", "/"
            stream = await trio.open_tcp_stream(*address)
            return stream, f"{address[0]}:{address[1]}", urlsplit(url).path or "/"
    except (OSError, trio.TooSlowError) as exc:
        raise BrokerUnreachable(
            f"cannot reach a broker at {url}: {exc or 'timed out'}; is `trio-relay up` running?"
        ) from None


def _refused(url: str, rejected: BaseExceptionGroup[ConnectionRejected]) -> BrokerUnreachable:
    exc: BaseException = rejected
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, ConnectionRejected)
    return BrokerUnreachable(
        f"the broker at {url} refused the connection ({exc.status_code}): "
        f"{(exc.body or b'').decode(errors='replace')}"
    )


def _single(group: BaseExceptionGroup) -> BaseException | None:
    """The one exception a chain of one-member groups wraps (not Cancelled), else None."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, (BaseExceptionGroup, trio.Cancelled)):
        return None
    return exc


class RelayClient:
    """One connection to the broker. Calls may run concurrently. Create with
    :func:`open_client`."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, trio.MemorySendChannel[_Message]] = {}
        self._subscriptions: dict[int, EventStream] = {}
        self._closed: BaseException | None = None

    async def _receive(self) -> None:
        try:
            while True:
                message = _decoder.decode(await self._ws.get_message())
                if message.events is not None:
                    subscription = self._subscriptions.get(message.id)
                    if subscription is not None:
                        for event in message.events:
                            subscription.push(event)
                    continue
                waiter = self._waiting.pop(message.id, None)
                if waiter is not None:
                    waiter.send_nowait(message)
        except ConnectionClosed as exc:
            self._closed = _gone(exc)
        finally:
            for waiter in self._waiting.values():
                waiter.close()
            for subscription in self._subscriptions.values():
                subscription.close(self._closed or BrokerUnreachable("connection closed"))

    @property
    def closed(self) -> bool:
        """Whether the connection is gone (every call now raises BrokerUnreachable)."""
        return self._closed is not None

    async def call(self, op: str, **fields: Any) -> Any:
        """Send one request and return its result, decoded as plain JSON values. Raises
        RemoteError for an error answer, BrokerUnreachable if the connection is gone.
        Cancellation: the answer, if it comes, is dropped."""
        return _as(Any, await self._call(next(self._ids), op, fields))  # type: ignore[arg-type]

    async def _ask(self, kind: type[T], op: str, **fields: Any) -> T:
        """:meth:`call`, its result decoded as ``kind``."""
        return _as(kind, await self._call(next(self._ids), op, fields))

    async def _call(self, request_id: int, op: str, fields: dict[str, Any]) -> msgspec.Raw:
        if self._closed is not None:
            raise self._closed
        send, receive = trio.open_memory_channel[_Message](1)
        self._waiting[request_id] = send
        try:
            await self._ws.send_message(
                _encoder.encode({"id": request_id, "op": op, **fields}).decode()
            )
            try:
                answer = await receive.receive()
            except trio.EndOfChannel:
                raise self._closed or BrokerUnreachable("connection closed") from None
        except ConnectionClosed as exc:
            raise _gone(exc) from None
        finally:
            self._waiting.pop(request_id, None)
        if not answer.ok:
            error = answer.error or ControlError("internal", "error answer without an error")
            raise RemoteError(error.code, error.message)
        return answer.result

    # -- operations

    async def status(self) -> BrokerStatus:
        return await self._ask(BrokerStatus, "status")

    async def spawn(
        self,
        name: str,
        command: list[str],
        *,
        native: bool = False,
        rows: int = 24,
        cols: int = 80,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        restart: str = "never",
        profile: str | None = None,
        mcp: bool = False,
    ) -> AgentSummary:
        """Start ``command`` as agent ``name`` (``profile``: its profile's name; None: the
        one its command chooses; ``mcp``: with the relay tools as its MCP server)."""
        return await self._ask(
            AgentSummary,
            "spawn",
            profile=profile,
            mcp=mcp,
            name=name,
            command=command,
            cwd=cwd,
            env=env or {},
            native=native,
            rows=rows,
            cols=cols,
            restart=restart,
        )

    async def agents(self) -> list[AgentSummary]:
        return await self._ask(list[AgentSummary], "agents")

    async def cluster_agents(self) -> list[ClusterAgentSummary]:
        """Every agent of every broker in the broker's cluster."""
        return await self._ask(list[ClusterAgentSummary], "agents", cluster=True)

    async def release(self, name: str) -> AgentSummary:
        return await self._ask(AgentSummary, "release", name=name)

    async def send(
        self,
        to: str,
        body: str,
        *,
        sender: str | None = None,
        thread: str | None = None,
        wait: bool = False,
        timeout: float = 30.0,
    ) -> SendReceipt:
        """A durable message for agent ``to``; answered once committed (``queued``), or
        with ``wait`` once it is verified, unverified, failed, dropped or dead-lettered."""
        fields: dict[str, Any] = {"thread": thread, "wait": wait, "timeout": timeout}
        if sender is not None:
            fields["from"] = sender
        return await self._ask(SendReceipt, "send", to=to, body=body, **fields)

    async def peers(self) -> list[PeerSummary]:
        """The agents this caller may message (an agent: every other one)."""
        return await self._ask(list[PeerSummary], "peers")

    async def deliveries(
        self,
        agent: str | None = None,
        *,
        states: list[str] | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[DeliveryRecord]:
        """The newest ``limit`` (or with ``after``, the first ``limit`` after that delivery
        id), oldest first."""
        return await self._ask(
            list[DeliveryRecord],
            "deliveries",
            agent=agent,
            states=states,
            limit=limit,
            after=after,
        )

    async def delivery(self, delivery_id: str) -> DeliveryRecord:
        return await self._ask(DeliveryRecord, "delivery", delivery_id=delivery_id)

    async def wait(self, delivery_id: str, timeout: float = 30.0) -> DeliveryRecord:
        """The delivery once it ended; RemoteError("timeout") if not within ``timeout``."""
        return await self._ask(DeliveryRecord, "wait", delivery_id=delivery_id, timeout=timeout)

    async def dead_letters(
        self, agent: str | None = None, limit: int = 100
    ) -> list[DeliveryRecord]:
        return await self._ask(list[DeliveryRecord], "dead_letters", agent=agent, limit=limit)

    async def redeliver(self, delivery_id: str) -> SendReceipt:
        return await self._ask(SendReceipt, "redeliver", delivery_id=delivery_id)

    async def input(self, name: str, data: str) -> None:
        await self.call("input", name=name, data=data)

    async def resize(self, name: str, rows: int, cols: int) -> None:
        await self.call("resize", name=name, rows=rows, cols=cols)

    async def snapshot(self, name: str, *, ansi: bool = False) -> ScreenSnapshot:
        return await self._ask(ScreenSnapshot, "snapshot", name=name, ansi=ansi)

    async def mode(self, name: str, set: str | None = None) -> ModeResult:
        return await self._ask(ModeResult, "mode", name=name, set=set)

    async def pending(self, name: str) -> PendingDeliveries:
        return await self._ask(PendingDeliveries, "pending", name=name)

    async def flush(self, name: str) -> FlushResult:
        return await self._ask(FlushResult, "flush", name=name)

    async def logs(self, name: str, lines: int = 100) -> list[str]:
        return await self._ask(list[str], "logs", name=name, lines=lines)

    async def prune(self, older_than: float | None = None) -> PruneResult:
        """Delete ended deliveries and released agents unchanged for ``older_than`` seconds
        (None: the broker's retention)."""
        return await self._ask(PruneResult, "prune", older_than=older_than)

    async def shutdown(self) -> None:
        await self.call("shutdown")

    @asynccontextmanager
    async def subscribe(
        self,
        since: int | None = None,
        *,
        agent: str | None = None,
        kinds: list[str] | None = None,
        cluster: bool = False,
    ) -> AsyncIterator[EventStream]:
        """Events numbered above ``since`` (None: from now) as an async iterator of
        :mod:`~trio_relay.wire` event Structs, until the block ends. Events the
        application does not read in time become a Gap, never a silent hole. Leaving the
        block unsubscribes (shielded, for at most 2 s). ``cluster``: every broker's events
        of the broker's cluster, as ClusterEvent."""
        request_id = next(self._ids)
        subscription = EventStream()
        self._subscriptions[request_id] = subscription
        try:
            fields = {"since": since, "agent": agent, "kinds": kinds, "cluster": cluster}
            answer = _as(_Subscribed, await self._call(request_id, "subscribe", fields))
            subscription.last_seq = answer.last_seq
            subscription.replay_end = (
                answer.last_seq if answer.replay_end is None else answer.replay_end
            )
            yield subscription
        finally:
            self._subscriptions.pop(request_id, None)
            if self._closed is None:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await self.call("unsubscribe", subscription=request_id)
                    except (RemoteError, BrokerUnreachable):
                        pass  # already gone with the connection: nothing to stop
