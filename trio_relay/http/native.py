"""The native control protocol over the HTTP port's WebSocket at ``/control``: the same
connections, limits and answers as the control listener (control/connection.py), over an
ASGI WebSocket instead of trio-websocket's.

A handshake is refused (with its HTTP status and reason, before it is accepted) for a bad
credential, a foreign origin or a full broker; once accepted the connection is served until
the client leaves. Cancellation ends it, like the listener's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect
from trio_websocket import CloseReason, ConnectionClosed

from trio_relay.control.auth import Principal
from trio_relay.http.guard import Refused

if TYPE_CHECKING:
    from trio_relay.http.site import Site

log = logging.getLogger(__name__)


class AsgiWebSocket:
    """trio-websocket's ``get_message`` / ``send_message`` / ``aclose`` over an accepted
    starlette WebSocket. Each raises ConnectionClosed once the client is gone."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket
        self._closed: CloseReason | None = None

    async def get_message(self) -> str | bytes:
        if self._closed is not None:
            raise ConnectionClosed(self._closed)
        message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            self._closed = CloseReason(message.get("code") or 1005, message.get("reason"))
            raise ConnectionClosed(self._closed)
        text = message.get("text")
        return text if text is not None else (message.get("bytes") or b"")

    async def send_message(self, message: str | bytes) -> None:
        if self._closed is not None:
            raise ConnectionClosed(self._closed)
        try:
            if isinstance(message, str):
                await self._ws.send_text(message)
            else:
                await self._ws.send_bytes(message)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            # starlette raises RuntimeError for a send after the close it saw
            self._closed = CloseReason(1006, f"the client is gone: {exc}")
            raise ConnectionClosed(self._closed) from exc

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        if self._closed is not None:
            return
        self._closed = CloseReason(code, reason)
        try:
            await self._ws.close(code, reason)
        except (RuntimeError, OSError) as exc:
            log.debug("closing a /control connection: %s", exc)


async def serve_control(websocket: WebSocket, site: Site) -> None:
    """One ``/control`` connection, from handshake to close."""
    server = site.server
    try:
        caller = await site.caller(websocket, websocket=True)
    except Refused as exc:
        log.warning("refused a /control connection: %s", exc)
        await websocket.send_denial_response(_denial(exc.status, str(exc)))
        return
    admitted = server.admit(caller.principal)
    if not isinstance(admitted, Principal):
        status, reason = admitted
        await websocket.send_denial_response(_denial(status, reason))
        return
    await websocket.accept()
    await server.run_connection(AsgiWebSocket(websocket), admitted)


def _denial(status: int, reason: str) -> PlainTextResponse:
    return PlainTextResponse(reason, status_code=status)
