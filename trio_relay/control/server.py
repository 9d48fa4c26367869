"""The control channel: a WebSocket server (trio-websocket) in front of the broker.

Authentication is the broker's token as ``Authorization: Bearer <token>``; a token scoped to
one agent (:meth:`ControlServer.agent_token`) may only send as that agent and read its own
state. A handshake carrying an ``Origin`` header that is not explicitly allowed is refused,
so a web page cannot drive agents. Every request gets exactly one answer; bad input gets an
error answer naming the problem and the connection lives on; one connection's failure never
reaches another. A client that disconnects mid-request cancels its requests.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from trio_relay import __version__
from trio_relay.broker.broker import Broker
from trio_relay.broker.events import Subscription
from trio_relay.broker.supervisor import RestartPolicy
from trio_relay.errors import (
    Forbidden,
    TooMany,
    code_of,
)
from trio_relay.linux.peers import UNPLACED, owner_agent, peer_processes
from trio_relay.wire import (
    AgentEvent,
    AgentsOp,
    ControlAnswer,
    ControlError,
    ControlEvents,
    ControlOp,
    ControlRequest,
    DeadLettersOp,
    DeliveriesOp,
    DeliveryOp,
    Event,
    FlushOp,
    Gap,
    InputOp,
    LogsOp,
    ModeOp,
    PendingOp,
    PruneOp,
    RedeliverOp,
    ReleaseOp,
    ResizeOp,
    SendOp,
    ShutdownOp,
    SnapshotOp,
    SpawnOp,
    StatusOp,
    SubscribeOp,
    UnsubscribeOp,
)
from trio_relay.wire.vocabulary import check_terminal_size

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE = 1024 * 1024
#: Requests in flight and open subscriptions, together, on one connection.
MAX_REQUESTS_PER_CONNECTION = 64
MAX_SUBSCRIPTIONS_PER_CONNECTION = 16
MAX_CONNECTIONS = 1024
MAX_CONNECTIONS_PER_AGENT = 8
EVENTS_PER_MESSAGE = 256
HANDSHAKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the owner (``agent`` None) or one agent with a scoped token."""

    agent: str | None = None

    def own(self, name: str) -> None:
        """Raise Forbidden unless the caller may act on agent ``name``."""
        if self.agent is not None and self.agent != name:
            raise Forbidden(f"agent {self.agent!r} may not act on {name!r}")


#: Operations an agent-scoped token may use: sending as itself, and reading its own state.
AGENT_OPS = (
    StatusOp,
    AgentsOp,
    SendOp,
    SnapshotOp,
    ModeOp,
    PendingOp,
    LogsOp,
    SubscribeOp,
    UnsubscribeOp,
)


def error_of(exc: BaseException) -> ControlError:
    """The stable code (:func:`trio_relay.errors.code_of`) and message a client sees for an
    exception."""
    code = code_of(exc)
    if code == "internal":
        return ControlError(code, f"{type(exc).__name__}: {exc}")
    return ControlError(code, str(exc))


def pty_command(command: list[str], rows: int, cols: int) -> list[str]:
    """The argv that runs ``command`` under the PTY worker."""
    return [
        sys.executable,
        "-m",
        "trio_relay.worker.pty",
        "--rows",
        str(rows),
        "--cols",
        str(cols),
        "--",
        *command,
    ]


class ControlServer:
    """Serves one broker over WebSocket. Run :meth:`serve` with ``nursery.start``."""

    def __init__(
        self,
        broker: Broker,
        token: str,
        *,
        allowed_origins: Iterable[str] = (),
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        retention: float | None = None,
    ) -> None:
        self.broker = broker
        #: What ``prune`` without an age deletes: older than this (seconds; None: nothing).
        self.retention = retention
        self._token = token
        self._allowed_origins = frozenset(allowed_origins)
        self._max_message_size = max_message_size
        self.shutdown_requested = trio.Event()
        self._connections: set[_Connection] = set()
        self.started_at = time.time()
        self.url = ""
        self._handlers: dict[type, Callable[..., Any]] = {
            StatusOp: self._status,
            SpawnOp: self._spawn,
            AgentsOp: self._agents,
            ReleaseOp: self._release,
            SendOp: self._send,
            DeliveriesOp: self._deliveries,
            DeliveryOp: self._delivery,
            DeadLettersOp: self._dead_letters,
            RedeliverOp: self._redeliver,
            InputOp: self._input,
            ResizeOp: self._resize,
            SnapshotOp: self._snapshot,
            ModeOp: self._mode,
            PendingOp: self._pending,
            FlushOp: self._flush,
            LogsOp: self._logs,
            PruneOp: self._prune,
            ShutdownOp: self._shutdown,
        }

    # -- tokens

    def agent_token(self, agent: str) -> str:
        """A token that lets agent ``agent`` send as itself and read its own state only."""
        return f"agent.{agent}.{self._signature(agent)}"

    def _signature(self, agent: str) -> str:
        return hmac.new(self._token.encode(), agent.encode(), hashlib.sha256).hexdigest()[:32]

    def authenticate(
        self, headers: list[tuple[bytes, bytes]], process_of: str | None = None
    ) -> Principal | tuple[int, str]:
        """The caller's principal, or the HTTP status and reason to refuse it with.

        ``process_of`` is the agent the connecting process belongs to (see peers.py): such a
        connection acts as that agent whatever valid token it presents, and one from an
        agent's process that cannot be placed is refused.
        """
        fields = {name.lower(): value.decode("latin-1") for name, value in headers}
        origin = fields.get(b"origin")
        if origin is not None and origin not in self._allowed_origins:
            return 403, f"forbidden: origin {origin!r} is not allowed"
        scheme, _, token = fields.get(b"authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return 401, "unauthorized: send Authorization: Bearer <token>"
        principal = self._token_principal(token)
        if principal is None:
            return 401, "unauthorized: wrong token"
        if process_of == UNPLACED:
            return 403, (
                "forbidden: this connection comes from an agent's process that the broker"
                " cannot place with one running agent; agents use their own TRIO_RELAY_TOKEN"
            )
        if process_of is not None and principal.agent != process_of:
            log.warning(
                "a process of agent %r presented %s; it acts as %r",
                process_of,
                "the owner's token"
                if principal.agent is None
                else f"agent {principal.agent!r}'s token",
                process_of,
            )
            return Principal(process_of)
        return principal

    def _token_principal(self, token: str) -> Principal | None:
        if hmac.compare_digest(token.encode(), self._token.encode()):
            return Principal()
        prefix, _, rest = token.partition(".")
        agent, _, signature = rest.rpartition(".")
        if (
            prefix == "agent"
            and agent
            and hmac.compare_digest(signature.encode(), self._signature(agent).encode())
        ):
            return Principal(agent)
        return None

    # -- serving

    async def serve(
        self,
        host: str,
        port: int,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0: a free port) and, with ``socket_path``, on a Unix
        socket there (mode 0600), until cancelled; ``started`` gives the TCP url. Raises
        OSError if either cannot be bound."""
        listeners: list[trio.SocketListener] = await trio.open_tcp_listeners(port, host=host)
        address = listeners[0].socket.getsockname()
        self.url = f"ws://{address[0]}:{address[1]}"
        try:
            if socket_path is not None:
                listeners.append(await _unix_listener(os.fspath(socket_path)))
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle_stream, listeners)
                task_status.started(self.url)
        finally:
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
            if socket_path is not None:
                _unlink_socket(os.fspath(socket_path))

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        """One connection, from accept to close. Whatever goes wrong here stays here: it is
        logged and ends this connection, never the server or another connection."""
        try:
            agent = await self._identify(stream)
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(HANDSHAKE_TIMEOUT) as handshake:
                    request = await wrap_server_stream(
                        nursery, stream, max_message_size=self._max_message_size
                    )
                if not handshake.cancelled_caught:
                    await self._handle(request, agent)
                nursery.cancel_scope.cancel()
        except ConnectionClosed:
            log.debug("a connection closed during its handshake")
        except Exception:
            log.exception("a connection failed")
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await stream.aclose()

    async def _identify(self, stream: trio.SocketStream) -> str | None:
        """The agent whose process is at the other end of ``stream``, if any (off the Trio
        thread: it reads /proc)."""
        agents = self.broker.agent_processes()

        def look() -> str | None:
            holders = peer_processes(stream.socket)
            return owner_agent(holders, agents) if holders else None

        try:
            return await trio.to_thread.run_sync(look)
        except OSError as exc:
            log.debug("cannot tell who is behind a connection: %s", exc)
            return None

    async def _handle(self, request: WebSocketRequest, process_of: str | None) -> None:
        peer = _peer(request)
        principal = self.authenticate(request.headers, process_of)
        if isinstance(principal, Principal):
            principal = self._admit(principal)
        if not isinstance(principal, Principal):
            status, reason = principal
            log.warning("refused a connection from %s: %s", peer, reason)
            await request.reject(status, body=reason.encode())
            return
        ws = await request.accept()
        connection = _Connection(self, ws, principal)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await ws.aclose()

    def _admit(self, principal: Principal) -> Principal | tuple[int, str]:
        """The connection limits: in all, and per agent."""
        if len(self._connections) >= MAX_CONNECTIONS:
            return 503, f"unavailable: {MAX_CONNECTIONS} connections are open"
        if principal.agent is not None:
            mine = sum(1 for c in self._connections if c.principal.agent == principal.agent)
            if mine >= MAX_CONNECTIONS_PER_AGENT:
                return 429, (
                    f"too many connections: agent {principal.agent!r} already has {mine}"
                    f" (at most {MAX_CONNECTIONS_PER_AGENT})"
                )
        return principal

    async def close_all(self, reason: str, timeout: float = 2.0) -> None:
        """Let every subscription send what the event log holds now (the last agent_exited
        events of a shutdown, say), then close each connection with 1001 and ``reason``.
        Gives up after ``timeout`` seconds: a client that does not read is not waited for."""
        last = self.broker.events.last_seq
        with trio.move_on_after(timeout):
            while not all(c.caught_up(last) for c in self._connections):  # noqa: ASYNC110 (bounded, at shutdown)
                await trio.sleep(0.01)
            async with trio.open_nursery() as nursery:
                for connection in list(self._connections):
                    nursery.start_soon(connection.ws.aclose, 1001, reason)

    # -- the operations: each takes the decoded request and the caller

    async def _status(self, op: StatusOp, principal: Principal) -> dict[str, Any]:
        broker = self.broker
        states: dict[str, int] = {}
        for agent in broker.agents():
            states[agent.state] = states.get(agent.state, 0) + 1
        return {
            "version": __version__,
            "pid": os.getpid(),
            "url": self.url,
            "uptime": time.time() - self.started_at,
            "agents": states,
            "last_seq": broker.events.last_seq,
            "requests": asdict(broker.statistics()),
            "you": principal.agent,
        }

    async def _spawn(self, op: SpawnOp, principal: Principal) -> dict[str, Any]:
        if not op.command:
            raise ValueError("`command` must not be empty")
        check_terminal_size(op.rows, op.cols)
        argv = op.command if op.native else pty_command(op.command, op.rows, op.cols)
        info = await self.broker.spawn(
            op.name, argv, cwd=op.cwd, env=op.env, restart=RestartPolicy(op.restart)
        )
        return _info(info)

    async def _agents(self, op: AgentsOp, principal: Principal) -> list[dict[str, Any]]:
        agents = self.broker.agents()
        if principal.agent is not None:
            agents = [a for a in agents if a.name == principal.agent]
        return [_info(a) for a in agents]

    async def _release(self, op: ReleaseOp, principal: Principal) -> dict[str, Any]:
        return _info(await self.broker.release(op.name))

    async def _input(self, op: InputOp, principal: Principal) -> None:
        await self.broker.write_input(op.name, op.data)

    async def _resize(self, op: ResizeOp, principal: Principal) -> None:
        await self.broker.resize(op.name, op.rows, op.cols)

    async def _send(self, op: SendOp, principal: Principal) -> dict[str, Any]:
        if not 0 <= op.timeout < float("inf"):  # checked before anything is committed
            raise ValueError(
                f"`timeout` must be a non-negative number of seconds, not {op.timeout!r}"
            )
        sender = principal.agent or op.sender
        receipt = await self.broker.send(op.to, op.body, sender=sender, thread=op.thread)
        result = _info(receipt)
        if op.wait:
            done = await self.broker.wait_delivery(receipt.delivery_id, op.timeout)
            result.update(msgspec.structs.asdict(done))
        return result

    async def _deliveries(self, op: DeliveriesOp, principal: Principal) -> list[dict[str, Any]]:
        if op.limit < 1:
            raise ValueError("`limit` must be positive")
        states = frozenset(op.states) if op.states else None
        found = await self.broker.deliveries(op.agent, states=states, limit=op.limit)
        return [_info(d) for d in found]

    async def _delivery(self, op: DeliveryOp, principal: Principal) -> dict[str, Any]:
        return _info(await self.broker.delivery(op.delivery_id))

    async def _dead_letters(self, op: DeadLettersOp, principal: Principal) -> list[dict[str, Any]]:
        if op.limit < 1:
            raise ValueError("`limit` must be positive")
        return [_info(d) for d in await self.broker.dead_letters(op.agent, limit=op.limit)]

    async def _redeliver(self, op: RedeliverOp, principal: Principal) -> dict[str, Any]:
        return _info(await self.broker.redeliver(op.delivery_id))

    async def _snapshot(self, op: SnapshotOp, principal: Principal) -> Any:
        return await self.broker.request_worker(op.name, "snapshot", {"ansi": op.ansi}, op.timeout)

    async def _mode(self, op: ModeOp, principal: Principal) -> dict[str, str]:
        """The broker's delivery mode for the agent (hold keeps deliveries queued)."""
        self.broker.agent(op.name)  # WorkerNotFound for an unknown agent
        if op.set is not None:
            if principal.agent is not None:
                raise Forbidden("an agent token may only read its mode")
            await self.broker.set_mode(op.name, op.set)
        return {"mode": self.broker.mode(op.name)}

    async def _pending(self, op: PendingOp, principal: Principal) -> dict[str, Any]:
        self.broker.agent(op.name)
        deliveries = await self.broker.pending(op.name)
        return {"mode": self.broker.mode(op.name), "deliveries": [_info(d) for d in deliveries]}

    async def _flush(self, op: FlushOp, principal: Principal) -> dict[str, int]:
        self.broker.agent(op.name)
        return {"count": await self.broker.flush(op.name)}

    async def _logs(self, op: LogsOp, principal: Principal) -> list[str]:
        if op.lines < 0:
            raise ValueError("`lines` must not be negative")
        lines = self.broker.logs(op.name)
        return lines[-op.lines :] if op.lines else []

    async def _prune(self, op: PruneOp, principal: Principal) -> Any:
        older_than = op.older_than if op.older_than is not None else self.retention
        if older_than is None:
            raise ValueError("this broker keeps everything (no retention): give `older_than`")
        return await self.broker.prune(older_than)

    async def _shutdown(self, op: ShutdownOp, principal: Principal) -> None:
        self.shutdown_requested.set()


class _Connection:
    """One client: reads requests, runs each in its own task, sends answers and events."""

    def __init__(
        self, server: ControlServer, ws: WebSocketConnection, principal: Principal
    ) -> None:
        self.server = server
        self.ws = ws
        self.principal = principal
        self.subscriptions: dict[Any, tuple[trio.CancelScope, Subscription]] = {}
        self._slots = trio.Semaphore(MAX_REQUESTS_PER_CONNECTION)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                while True:
                    message = await self.ws.get_message()
                    await self._slots.acquire()  # backpressure: stop reading when busy
                    nursery.start_soon(self._serve, message)
            except ConnectionClosed:
                pass  # the client left (or sent too big a message): its requests end with it
            nursery.cancel_scope.cancel()

    def caught_up(self, seq: int) -> bool:
        """Whether every subscription has taken the events up to ``seq``."""
        return all(stream.cursor > seq for _, stream in self.subscriptions.values())

    async def send(self, message: ControlAnswer | ControlEvents) -> None:
        """Send one message; a client that is gone is not an error of the broker's."""
        try:
            await self.ws.send_message(_encoder.encode(message).decode())
        except ConnectionClosed:
            self.nursery.cancel_scope.cancel()

    async def _serve(self, message: str | bytes) -> None:
        try:
            answer = await self._answer(message)
            if answer is not None:
                await self.send(answer)
        finally:
            self._slots.release()

    async def _answer(self, message: str | bytes) -> ControlAnswer | None:
        request_id = None
        try:
            if isinstance(message, bytes):
                raise ValueError("binary messages are not supported: send JSON text")
            try:
                raw = msgspec.json.decode(message)
            except RecursionError:
                raise ValueError("JSON nested beyond the decoder's depth limit") from None
            if not isinstance(raw, dict):
                raise ValueError(f"a request must be a JSON object, not {type(raw).__name__}")
            request_id = raw.get("id")
            if not isinstance(request_id, (int, str)) or isinstance(request_id, bool):
                request_id = None
                raise ValueError("a request needs an `id` (a string or an integer)")
            if "op" not in raw:
                raise ValueError("a request needs an `op`")
            op = msgspec.convert(raw, ControlOp)
            result = await self._dispatch(op)
        except trio.Cancelled:
            raise
        except Exception as exc:
            error = error_of(exc)
            if error.code == "internal":
                log.exception("control request %r failed", request_id)
            return ControlAnswer(id=request_id, ok=False, error=error)
        if isinstance(op, SubscribeOp):
            return None  # _subscribe answered already, before the first event
        return ControlAnswer(id=request_id, ok=True, result=result)

    async def _dispatch(self, op: ControlRequest) -> Any:
        if self.principal.agent is not None and not isinstance(op, AGENT_OPS):
            raise Forbidden(f"an agent token may not use {type(op).__struct_config__.tag!r}")
        if isinstance(op, SubscribeOp):
            return await self._subscribe(op)
        if isinstance(op, UnsubscribeOp):
            open_ = self.subscriptions.pop(op.subscription, None)
            if open_ is None:
                raise ValueError(f"no subscription {op.subscription!r} on this connection")
            open_[0].cancel()
            return None
        name = getattr(op, "name", None)
        if isinstance(name, str) and not isinstance(op, (AgentsOp, StatusOp)):
            self.principal.own(name)
        handler = self.server._handlers[type(op)]
        return await handler(op, self.principal)

    async def _subscribe(self, op: SubscribeOp) -> None:
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
            wanted = _event_filter(self.principal.agent or op.agent, op.kinds)
            log_ = self.server.broker.events
            stream = log_.subscribe(op.since)  # fixed now: no event falls between answer and stream
            replay_end = 0
            if op.since is not None:
                replay_end = next((e.seq for e in reversed(log_.since(op.since)) if wanted(e)), 0)
            scope = trio.CancelScope()
            self.subscriptions[op.id] = (scope, stream)
            await self.send(
                ControlAnswer(
                    id=op.id,
                    ok=True,
                    result={"last_seq": log_.last_seq, "replay_end": replay_end},
                )
            )
        except BaseException:
            self.subscriptions.pop(op.id, None)
            self._slots.release()
            raise

        async def forward() -> None:
            try:
                with scope:
                    async for event in stream:
                        # Whatever else is already there goes in the same message.
                        ready = [event, *stream.ready(EVENTS_PER_MESSAGE - 1)]
                        batch = [e for e in ready if wanted(e)]
                        if batch:
                            await self.send(ControlEvents(id=op.id, events=batch))  # type: ignore[arg-type]
            finally:
                self.subscriptions.pop(op.id, None)
                self._slots.release()

        self.nursery.start_soon(forward)


def _event_filter(agent: str | None, kinds: list[str] | None) -> Callable[[Event], bool]:
    """What a subscription passes on: a gap always; with ``agent``, only that agent's own
    events (never another's, nor the broker's own such as ``store_error``); with ``kinds``,
    only those kinds."""
    wanted_kinds = frozenset(kinds) if kinds else None

    def wanted(event: Event) -> bool:
        if type(event) is Gap:
            return True
        if agent is not None and (not isinstance(event, AgentEvent) or event.agent != agent):
            return False
        return wanted_kinds is None or type(event).__struct_config__.tag in wanted_kinds

    return wanted


async def _unix_listener(path: str) -> trio.SocketListener:
    """A listening Unix socket at ``path`` (mode 0600), replacing a stale socket file."""
    _unlink_socket(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        os.chmod(path, 0o600)  # the state directory (0700) already keeps others out
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def _unlink_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass  # nothing to replace or remove


def _info(info: Any) -> Any:
    """A result as the encoder takes it: Structs as they are, dataclasses as dicts."""
    return info if isinstance(info, msgspec.Struct) else asdict(info)


def _peer(request: WebSocketRequest) -> str:
    try:
        return str(request.remote)
    except OSError:  # the peer is already gone: its address cannot be read any more
        return "a departed client"
    except ValueError:  # a Unix socket's peer has no address
        return "the Unix socket"
