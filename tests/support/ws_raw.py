"""The control channel for tests: an in-process broker and server (:func:`serving`), and a
bare WebSocket connection to it with no client library of ours (:func:`raw`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import wrap_client_stream

from trio_relay import Broker, open_broker
from trio_relay.control.server import ControlServer

TOKEN = "test-token-" + "x" * 32


@asynccontextmanager
async def serving(
    token: str = TOKEN, allowed_origins: tuple[str, ...] = (), **options: Any
) -> AsyncIterator[tuple[Broker, ControlServer, str]]:
    """A broker (``options`` go to open_broker) and its control server on a free loopback
    port, for the block: yields the broker, the server and its url."""
    async with open_broker(**options) as broker:
        server = ControlServer(broker, token, allowed_origins=allowed_origins)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve, "127.0.0.1", 0)
            yield broker, server, url
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw(url: str, token: str | None = TOKEN, origin: str | None = None):  # type: ignore[no-untyped-def]
    """A bare WebSocket connection (no client library), closed however the block ends."""
    headers = []
    if token is not None:
        headers.append((b"Authorization", f"Bearer {token}".encode()))
    if origin is not None:
        headers.append((b"Origin", origin.encode()))
    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, parts.netloc, "/", extra_headers=headers)
            try:
                yield ws
            finally:
                with trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        await stream.aclose()
