"""The control server: listening on TCP and a Unix socket, handshakes, connection limits,
and shutdown. What a connection then does is connection.py's.

A handshake carrying an ``Origin`` header that is not explicitly allowed is refused, and so
is a wrong token (auth.py). One connection's failure never reaches another, nor the server.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, wrap_server_stream

from trio_relay.broker.broker import Broker
from trio_relay.control.auth import Principal, Refusal, agent_token, authenticate, identify
from trio_relay.control.connection import Connection
from trio_relay.control.operations import Operations
from trio_relay.profiles.catalog import Catalog

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE = 1024 * 1024
MAX_CONNECTIONS = 1024
MAX_CONNECTIONS_PER_AGENT = 8
HANDSHAKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0


class ControlServer:
    """Serves one broker over WebSocket. Run :meth:`serve` with ``nursery.start``.

    ``token`` is the owner's; :meth:`agent_token` derives each agent's from it.
    ``retention`` is what ``prune`` without an age deletes: older than this (seconds;
    None: nothing). ``profiles``: where spawn finds agent profiles (default: the built-ins
    and the user's config directory). ``overlays``: where ``spawn --mcp`` writes agents'
    MCP configuration (default: a temporary directory). ``shutdown_requested`` is set when a client asks the broker to stop.
    """

    def __init__(
        self,
        broker: Broker,
        token: str,
        *,
        allowed_origins: Iterable[str] = (),
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        retention: float | None = None,
        profiles: Catalog | None = None,
        overlays: Path | None = None,
    ) -> None:
        self.broker = broker
        self.operations = Operations(
            broker, retention=retention, profiles=profiles, overlays=overlays
        )
        self.shutdown_requested = self.operations.shutdown_requested
        self._token = token
        self._allowed_origins = frozenset(allowed_origins)
        self._max_message_size = max_message_size
        self._connections: set[Connection] = set()
        #: Tokens besides the owner's that act as the owner (see auth.authenticate).
        self.also_owner: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        """The TCP url once serving (``ws://HOST:PORT``), else empty."""
        return self.operations.url

    def agent_token(self, agent: str) -> str:
        """A token that lets agent ``agent`` send as itself and read its own state only."""
        return agent_token(self._token, agent)

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
        OSError if either cannot be bound. On cancellation the listeners close and the
        socket file is removed; open connections end with the nursery."""
        listeners: list[trio.SocketListener] = await trio.open_tcp_listeners(port, host=host)
        address = listeners[0].socket.getsockname()
        self.operations.url = f"ws://{address[0]}:{address[1]}"
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

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        """One connection, from accept to close. Whatever goes wrong here stays here: it is
        logged and ends this connection, never the server or another connection."""
        try:
            agent = await identify(stream, self.broker.agent_processes())
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

    async def _handle(self, request: WebSocketRequest, process_of: str | None) -> None:
        principal = authenticate(
            self._token,
            request.headers,
            allowed_origins=self._allowed_origins,
            process_of=process_of,
            also_owner=self.also_owner,
        )
        if isinstance(principal, Principal):
            principal = self.admit(principal)
        if not isinstance(principal, Principal):
            status, reason = principal
            log.warning("refused a connection from %s: %s", _peer(request), reason)
            await request.reject(status, body=reason.encode())
            return
        ws = await request.accept()
        await self.run_connection(ws, principal)

    async def run_connection(self, ws: Any, principal: Principal) -> None:
        """Serve one accepted connection (``ws``: a trio-websocket connection, or anything
        with its ``get_message``, ``send_message`` and ``aclose``) until it ends, then
        close it (shielded, at most CLOSE_TIMEOUT)."""
        connection = Connection(self.operations, ws, principal)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await ws.aclose()

    def admit(self, principal: Principal) -> Principal | Refusal:
        """The connection limits, in all and per agent: ``principal`` if one more
        connection of its fits, else the refusal."""
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


def _peer(request: WebSocketRequest) -> str:
    try:
        return str(request.remote)
    except OSError:  # the peer is already gone: its address cannot be read any more
        return "a departed client"
    except ValueError:  # a Unix socket's peer has no address
        return "the Unix socket"
