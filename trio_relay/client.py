"""A Trio client of the control channel, for every operation and for the event stream.

    async with open_client() as client:          # finds the broker (see open_client)
        await client.spawn("sh", ["bash", "--norc"])
        screen = await client.snapshot("sh")
        async with client.subscribe(since=0) as events:
            async for event in events:           # protocol.BrokerEvent Structs
                ...

Errors: :class:`BrokerUnreachable` if there is no broker to talk to; :class:`RemoteError`
(with the broker's stable ``code``) for an error answer.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
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

from trio_relay.errors import BadAddress, BrokerUnreachable, RemoteError, StateDirError
from trio_relay.linux.sweep import AGENT_ENV
from trio_relay.state import DEFAULT_DIR_NAME, StateDir
from trio_relay.wire import (
    AgentSummary,
    BrokerEvent,
    BrokerStatus,
    ControlError,
    DeliveryRecord,
    Event,
    FlushResult,
    Gap,
    ModeResult,
    PendingDeliveries,
    PruneResult,
    ScreenSnapshot,
    SendReceipt,
)

#: The URL scheme of a broker's Unix socket: ``ws+unix:///path/to/control.sock``.
UNIX_SCHEME = "ws+unix"

MAX_BUFFERED_EVENTS = 4096


def _gone(exc: ConnectionClosed) -> BrokerUnreachable:
    reason = exc.reason.reason if exc.reason is not None and exc.reason.reason else ""
    return BrokerUnreachable(
        "the broker went away (it stopped or crashed"
        + (f": {reason}" if reason else "")
        + "); check `trio-relay status`"
    )


class _ServerMessage(msgspec.Struct):
    id: Any = None
    ok: bool | None = None
    result: Any = None
    error: ControlError | None = None
    events: list[BrokerEvent] | None = None


_decoder = msgspec.json.Decoder(_ServerMessage)
_encoder = msgspec.json.Encoder()
T = TypeVar("T")


def _as(kind: type[T], result: Any) -> T:
    """A result as its protocol Struct. Raises RemoteError("internal") if the broker sent
    something of another shape (a broker of another version, say)."""
    try:
        return msgspec.convert(result, kind)
    except msgspec.ValidationError as exc:
        raise RemoteError("internal", f"unexpected result from the broker: {exc}") from None


def find_broker(
    url: str | None = None, token: str | None = None, state_dir: str | None = None
) -> tuple[str, str]:
    """The url and token to use: the arguments, else ``TRIO_RELAY_URL`` and
    ``TRIO_RELAY_TOKEN``, else the state directory's connection file (its Unix socket when
    it has one) and token.

    Raises BrokerUnreachable if none says where a running broker is, BadAddress if inside
    an agent (``TRIO_RELAY_AGENT`` set) the owner's token would be taken from the state
    directory: an agent acts only with its own scoped token.
    """
    url = url or os.environ.get("TRIO_RELAY_URL")
    token = token or os.environ.get("TRIO_RELAY_TOKEN")
    if url:
        parse_address(url)  # a bad URL is said first, whatever else is missing
    if url and token:
        return url, token
    state = StateDir(Path(state_dir) if state_dir else Path.cwd() / DEFAULT_DIR_NAME)
    try:
        state.check()
    except StateDirError as exc:
        raise BadAddress(str(exc)) from None
    up = f"trio-relay up --state-dir {state_dir}" if state_dir else "trio-relay up"
    if token is None and os.environ.get(AGENT_ENV):
        raise BadAddress(
            f"this runs inside agent {os.environ[AGENT_ENV]!r} ({AGENT_ENV} is set) without"
            " its TRIO_RELAY_TOKEN; an agent acts only with its own token, never the"
            " broker owner's"
        )
    connection = state.read_connection()
    if connection is not None and state.lock_holder() is None:
        connection = None  # left by a broker that died: nobody listens there
    if url is None:
        if connection is None:
            raise BrokerUnreachable(f"no broker is running on {state.path}; start one with `{up}`")
        url = f"{UNIX_SCHEME}://{connection.socket}" if connection.socket else connection.url
    if token is None:
        try:
            token = state.token_path.read_text().strip()
        except FileNotFoundError:
            raise BrokerUnreachable(
                f"no token in {state.path}; start a broker with `{up}`"
            ) from None
    return url, token


def parse_address(url: str) -> tuple[str, int] | str:
    """``ws://HOST:PORT`` as (host, port), ``ws+unix:///PATH`` as its path. Raises
    BadAddress naming what is wrong."""
    try:
        parts = urlsplit(url)
        if parts.scheme == UNIX_SCHEME and parts.path:
            return parts.path
        if parts.scheme == "ws" and parts.hostname and parts.port:
            return parts.hostname, parts.port
        problem = "no port" if parts.scheme == "ws" and parts.hostname else "not of that form"
    except ValueError as exc:  # a port that is not a number, or out of range
        problem = str(exc)
    raise BadAddress(
        f"not a broker URL (ws://HOST:PORT or {UNIX_SCHEME}:///PATH): {url!r}: {problem}"
    )


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
    address = parse_address(url)
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    try:
        with trio.fail_after(connect_timeout):
            if isinstance(address, str):
                stream: trio.abc.Stream = await trio.open_unix_socket(address)
                host, resource = "localhost", "/"
            else:
                stream = await trio.open_tcp_stream(*address)
                host, resource = f"{address[0]}:{address[1]}", urlsplit(url).path or "/"
    except (OSError, trio.TooSlowError) as exc:
        raise BrokerUnreachable(
            f"cannot reach a broker at {url}: {exc or 'timed out'}; is `trio-relay up` running?"
        ) from None
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
            exc = rejected.exceptions[0]
            while isinstance(exc, BaseExceptionGroup):
                exc = exc.exceptions[0]
            raise BrokerUnreachable(
                f"the broker at {url} refused the connection ({exc.status_code}): "
                f"{(exc.body or b'').decode(errors='replace')}"
            ) from None
        inner = _single(group)
        if inner is not None:
            raise inner from None  # the block's own exception, unwrapped
        raise
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


def _single(group: BaseExceptionGroup) -> BaseException | None:
    """The one exception a chain of one-member groups wraps (not Cancelled), else None."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, (BaseExceptionGroup, trio.Cancelled)):
        return None
    return exc


class _Subscription:
    """Events of one subscription, buffered up to a bound; an overflow becomes a Gap."""

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.missed: tuple[int, int] | None = None
        self.closed: BaseException | None = None
        self.last_seq = 0  # the newest event when the subscription began
        #: The newest event of the replay that passes the subscription's filters (0: none).
        self.replay_end = 0

    def push(self, event: Event) -> None:
        if len(self.events) >= MAX_BUFFERED_EVENTS:
            first = self.missed[0] if self.missed else event.seq
            self.missed = (first, event.seq)
        else:
            if self.missed is not None:
                self.events.append(Gap(first=self.missed[0], last=self.missed[1]))
                self.missed = None
            self.events.append(event)
        self.lot.unpark_all()

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> Event:
        while not self.events:
            if self.closed is not None:
                raise self.closed
            await self.lot.park()
        await trio.lowlevel.checkpoint()
        return self.events.popleft()


class RelayClient:
    """One connection to the broker. Calls may run concurrently. Create with
    :func:`open_client`."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, trio.MemorySendChannel[_ServerMessage]] = {}
        self._subscriptions: dict[int, _Subscription] = {}
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
                subscription.closed = self._closed or BrokerUnreachable("connection closed")
                subscription.lot.unpark_all()

    async def call(self, op: str, **fields: Any) -> Any:
        """Send one request and return its result. Raises RemoteError for an error answer,
        BrokerUnreachable if the connection is gone. Cancellation: the answer, if it comes,
        is dropped."""
        request_id = next(self._ids)
        return await self._call(request_id, op, fields)

    async def _call(self, request_id: int, op: str, fields: dict[str, Any]) -> Any:
        if self._closed is not None:
            raise self._closed
        send, receive = trio.open_memory_channel[_ServerMessage](1)
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
        return _as(BrokerStatus, await self.call("status"))

    async def spawn(
        self,
        name: str,
        command: list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        native: bool = False,
        rows: int = 24,
        cols: int = 80,
        restart: str = "never",
    ) -> AgentSummary:
        return _as(
            AgentSummary,
            await self.call(
                "spawn",
                name=name,
                command=command,
                cwd=cwd,
                env=env or {},
                native=native,
                rows=rows,
                cols=cols,
                restart=restart,
            ),
        )

    async def agents(self) -> list[AgentSummary]:
        return _as(list[AgentSummary], await self.call("agents"))

    async def release(self, name: str) -> AgentSummary:
        return _as(AgentSummary, await self.call("release", name=name))

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
        fields: dict[str, Any] = {
            "to": to,
            "body": body,
            "thread": thread,
            "wait": wait,
            "timeout": timeout,
        }
        if sender is not None:
            fields["from"] = sender
        return _as(SendReceipt, await self.call("send", **fields))

    async def deliveries(
        self, agent: str | None = None, *, states: list[str] | None = None, limit: int = 100
    ) -> list[DeliveryRecord]:
        return _as(
            list[DeliveryRecord],
            await self.call("deliveries", agent=agent, states=states, limit=limit),
        )

    async def delivery(self, delivery_id: str) -> DeliveryRecord:
        return _as(DeliveryRecord, await self.call("delivery", delivery_id=delivery_id))

    async def dead_letters(
        self, agent: str | None = None, limit: int = 100
    ) -> list[DeliveryRecord]:
        return _as(list[DeliveryRecord], await self.call("dead_letters", agent=agent, limit=limit))

    async def redeliver(self, delivery_id: str) -> SendReceipt:
        return _as(SendReceipt, await self.call("redeliver", delivery_id=delivery_id))

    async def input(self, name: str, data: str) -> None:
        await self.call("input", name=name, data=data)

    async def resize(self, name: str, rows: int, cols: int) -> None:
        await self.call("resize", name=name, rows=rows, cols=cols)

    async def snapshot(self, name: str, *, ansi: bool = False) -> ScreenSnapshot:
        return _as(ScreenSnapshot, await self.call("snapshot", name=name, ansi=ansi))

    async def mode(self, name: str, set: str | None = None) -> ModeResult:
        return _as(ModeResult, await self.call("mode", name=name, set=set))

    async def pending(self, name: str) -> PendingDeliveries:
        return _as(PendingDeliveries, await self.call("pending", name=name))

    async def flush(self, name: str) -> FlushResult:
        return _as(FlushResult, await self.call("flush", name=name))

    async def logs(self, name: str, lines: int = 100) -> list[str]:
        return await self.call("logs", name=name, lines=lines)

    async def prune(self, older_than: float | None = None) -> PruneResult:
        """Delete ended deliveries and released agents unchanged for ``older_than`` seconds
        (None: the broker's retention)."""
        return _as(PruneResult, await self.call("prune", older_than=older_than))

    async def shutdown(self) -> None:
        await self.call("shutdown")

    @asynccontextmanager
    async def subscribe(
        self, since: int | None = None, *, agent: str | None = None, kinds: list[str] | None = None
    ) -> AsyncIterator[_Subscription]:
        """Events numbered above ``since`` (None: from now) as an async iterator of
        :mod:`~trio_relay.wire` event Structs, until the block ends. Events the
        application does not read in time become a Gap, never a silent hole."""
        request_id = next(self._ids)
        subscription = _Subscription()
        self._subscriptions[request_id] = subscription
        try:
            answer = await self._call(
                request_id, "subscribe", {"since": since, "agent": agent, "kinds": kinds}
            )
            subscription.last_seq = answer["last_seq"]
            subscription.replay_end = answer.get("replay_end", answer["last_seq"])
            yield subscription
        finally:
            self._subscriptions.pop(request_id, None)
            if self._closed is None:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await self.call("unsubscribe", subscription=request_id)
                    except (RemoteError, BrokerUnreachable):
                        pass  # already gone with the connection: nothing to stop
