"""The HTTP port: one starlette app on hypercorn's Trio worker.

Routes: agent-relay's API (compat.py) and its ``/ws`` event stream (compat_events.py), the
native control protocol at ``/control`` (native.py), and the dashboard (dashboard.py).
Every refusal and error has agent-relay's shape (guard.error_body); an unexpected
exception is logged and answered 500, and never reaches another request nor the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from trio_relay.control.server import DEFAULT_MAX_MESSAGE, ControlServer
from trio_relay.http import compat, compat_events, dashboard
from trio_relay.http.callers import Callers
from trio_relay.http.guard import Caller, Guard, Refused, error_body
from trio_relay.http.native import serve_control
from trio_relay.http.sessions import Sessions

log = logging.getLogger(__name__)

#: Seconds open requests get to finish when the broker stops.
GRACEFUL_TIMEOUT = 2.0


class Site:
    """The HTTP port of one broker (``server``'s). ``host`` is what it listens on;
    ``allowed_origins``: browser origins allowed besides its own; ``api_keys``: keys that
    act as the owner besides its token. ``url`` is set once serving."""

    def __init__(
        self,
        server: ControlServer,
        token: str,
        *,
        host: str,
        allowed_origins: Collection[str] = (),
        api_keys: Collection[str] = (),
    ) -> None:
        self.server = server
        self.sessions = Sessions()
        self.guard = Guard(
            token, self.sessions, host=host, allowed_origins=allowed_origins, api_keys=api_keys
        )
        self.url = ""
        self.closing = trio.Event()
        self.bodies = compat_events.Bodies(self)
        self.callers = Callers(server.broker.agent_processes)
        self.streams = 0  # open /ws streams
        routes: list[BaseRoute] = [
            *compat.routes(self),
            WebSocketRoute("/ws", self._events),
            WebSocketRoute("/control", self._control),
            *dashboard.routes(self),
        ]
        self.app = Starlette(
            routes=routes,
            exception_handlers={
                Refused: _refused,
                HTTPException: _http_error,
                Exception: _internal,
            },
        )

    async def caller(self, connection: HTTPConnection, *, websocket: bool = False) -> Caller:
        """Who sent ``connection`` (a request or a WebSocket handshake): see guard.py and
        callers.py. Raises Refused."""
        headers = {k.lower(): v for k, v in connection.headers.items()}
        method = connection.scope.get("method", "GET")
        client, server = connection.scope.get("client"), connection.scope.get("server")
        process_of = await self.callers.agent_of(client, server)
        return self.guard.caller(headers, method, websocket=websocket, process_of=process_of)

    def login_url(self) -> str:
        """A one-time dashboard login URL (see sessions.py)."""
        return f"{self.url}/login?code={self.sessions.mint_code()}"

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled or :attr:`closing` is set (then open requests get
        GRACEFUL_TIMEOUT seconds); ``started`` gives the url. Raises OSError if the
        address cannot be bound."""
        config = Config()
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        config.websocket_max_message_size = DEFAULT_MAX_MESSAGE
        config.graceful_timeout = GRACEFUL_TIMEOUT
        config.accesslog = None
        config.errorlog = log
        config.include_server_header = False
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                lambda task_status: serve(
                    self.app, config, shutdown_trigger=self.closing.wait, task_status=task_status
                )
            )
            self.url = urls[0]
            task_status.started(self.url)

    async def _events(self, websocket: WebSocket) -> None:
        await compat_events.serve_events(websocket, self)

    async def _control(self, websocket: WebSocket) -> None:
        await serve_control(websocket, self)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return JSONResponse(error_body(exc.code, str(exc)), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body("internal_error", f"{type(exc).__name__}: {exc}"), status_code=500
    )
