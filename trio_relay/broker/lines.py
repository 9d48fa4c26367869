"""Reading newline-delimited frames from a Trio receive stream (the splitting itself is
:class:`trio_relay.wire.lines.LineSplitter`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from trio_relay.wire.lines import DEFAULT_MAX_LINE, LineSplitter, OversizedLine

READ_SIZE = 65536


async def read_lines(
    stream: trio.abc.ReceiveStream, max_line: int = DEFAULT_MAX_LINE
) -> AsyncIterator[list[bytes | OversizedLine]]:
    """Yield batches of lines from ``stream`` until end of file.

    A final line without a newline is yielded at end of file. Cancellation: cancellable at
    each read; lines already read and yielded are not read again. Errors: whatever the
    stream's ``receive_some`` raises (for example ``trio.ClosedResourceError``).
    """
    splitter = LineSplitter(max_line)
    while True:
        chunk = await stream.receive_some(READ_SIZE)
        if not chunk:
            rest = splitter.feed(b"\n") if splitter.buffered else []
            if rest:
                yield rest
            return
        lines = splitter.feed(chunk)
        if lines:
            yield lines
