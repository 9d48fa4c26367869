"""Reading newline-delimited frames from a Trio receive stream (the splitting itself is
:class:`trio_relay.wire.lines.LineSplitter`)."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import trio

from trio_relay.wire.lines import DEFAULT_MAX_LINE, LineSplitter, OversizedLine

READ_SIZE = 65536


async def read_lines(
    stream: trio.abc.ReceiveStream, max_line: int = DEFAULT_MAX_LINE
) -> AsyncIterator[list[bytes | OversizedLine]]:
    """Yield batches of lines from ``stream`` until end of file.

    A final line without a newline is yielded at end of file. Cancellation: cancellable at
    each read; lines already read and yielded are not read again. Errors: from a pipe
    (``trio.lowlevel.FdStream``, read by :func:`receive_when_readable`),
    ``trio.ClosedResourceError`` once it is closed and the read's other ``OSError``; from any
    other stream, what its ``receive_some`` raises.
    """
    receive: Callable[[], Awaitable[bytes]]
    if isinstance(stream, trio.lowlevel.FdStream):
        receive = partial(receive_when_readable, stream)
    else:
        receive = partial(stream.receive_some, READ_SIZE)
    splitter = LineSplitter(max_line)
    while True:
        chunk = await receive()
        if not chunk:
            rest = splitter.feed(b"\n") if splitter.buffered else []
            if rest:
                yield rest
            return
        lines = splitter.feed(chunk)
        if lines:
            yield lines


async def receive_when_readable(stream: trio.lowlevel.FdStream) -> bytes:
    """Wait until ``stream``'s pipe is readable, then read up to :data:`READ_SIZE` bytes
    (``b""`` at end of file).

    A worker's frames mostly come one at a time. ``FdStream.receive_some`` reads first,
    fails (``EAGAIN``, an exception) once per frame, waits, reads, then yields to the
    scheduler once more; this waits and reads once per frame.
    Cancellation: a cancel point while waiting, none once data was read. Errors:
    ``trio.ClosedResourceError`` if the stream is or gets closed (``FdStream.aclose`` wakes
    the wait with it), ``trio.BusyResourceError`` if another task waits on the pipe, and
    the read's other ``OSError``.
    """
    while True:
        fd = stream.fileno()  # -1 once closed
        if fd < 0:
            raise trio.ClosedResourceError("the pipe was closed")
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, READ_SIZE)
        except BlockingIOError:
            continue  # woken without data: wait again
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("the pipe was closed") from None
            raise
