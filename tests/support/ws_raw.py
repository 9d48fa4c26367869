"""A bare WebSocket connection to the control channel, with no client library of ours."""

from __future__ import annotations

from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
from trio_websocket import wrap_client_stream

TOKEN = "test-token-" + "x" * 32


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
