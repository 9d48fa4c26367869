"""The program's output on its two ways out: ``output`` frames, and the screen model's backlog.

:class:`OutputStream` decodes what was read from the terminal (UTF-8 safe across reads; each
invalid byte becomes U+FFFD), batches it into ``output`` frames and keeps it for the screen
model. A frame goes out once the output has been quiet for 2 ms (an echo, a prompt), 16 ms
after its first text (a flood), or at 4 KiB. Offsets count the bytes of the output as
reported (the UTF-8 of the frames' text), so ``offset + len(data in UTF-8)`` is always the
next frame's offset. The screen model (pyte, ~100-200 KB/s) takes the backlog in slices of
:data:`PARSE_SLICE` characters (:meth:`OutputStream.next_slice`), between the worker's other
work. Sans-IO: it is told the time and arms the ``coalesce`` deadline.
"""

from __future__ import annotations

import codecs
from collections import deque

from trio_relay.wire import Output
from trio_relay.worker.pty.deadlines import Deadlines
from trio_relay.worker.pty.outbox import Outbox

COALESCE_SECONDS = 0.016
COALESCE_BYTES = 4096
COALESCE_QUIET = 0.002
PARSE_SLICE = 256
# Reading pauses while more than this many characters wait for the screen model.
PARSE_BACKLOG = 8192


class OutputStream:
    """Output frames and the screen model's backlog, from the bytes the program wrote."""

    def __init__(self, deadlines: Deadlines, outbox: Outbox) -> None:
        self.deadlines, self.outbox = deadlines, outbox
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.emitted = 0  # byte offset where the next output frame starts
        self.batch: list[str] = []
        self.batch_bytes = 0  # UTF-8 bytes in batch
        self.batch_started = 0.0  # when the first text in batch was read
        self.backlog: deque[str] = deque()  # decoded output not yet fed to the screen
        self.backlog_chars = 0
        self.parsed = 0  # bytes of output handed to the screen model

    @property
    def may_read(self) -> bool:
        """Whether the screen model keeps up: reading pauses while it does not."""
        return self.backlog_chars < PARSE_BACKLOG

    def feed(self, data: bytes, now: float) -> None:
        """Take bytes read from the terminal."""
        self._add(self.decoder.decode(data), now)
        if self.batch_bytes >= COALESCE_BYTES:
            self.flush()

    def finish(self, now: float) -> None:
        """The output has ended: take what the decoder held back (an incomplete character)."""
        self._add(self.decoder.decode(b"", final=True), now)

    def _add(self, text: str, now: float) -> None:
        if not text:
            return
        size = len(text.encode())
        if self.batch and self.batch_bytes + size > COALESCE_BYTES:
            self.flush()
        if not self.batch:
            self.batch_started = now
        self.deadlines.set(
            "coalesce", min(self.batch_started + COALESCE_SECONDS, now + COALESCE_QUIET)
        )
        self.batch.append(text)
        self.batch_bytes += size
        self.backlog.append(text)
        self.backlog_chars += len(text)

    def flush(self) -> None:
        """Send the batch as one ``output`` frame (nothing if it is empty)."""
        self.deadlines.cancel("coalesce")
        data = "".join(self.batch)
        size = self.batch_bytes
        self.batch.clear()
        self.batch_bytes = 0
        if data:
            self.outbox.send(Output(offset=self.emitted, data=data))
            self.emitted += size

    def next_slice(self) -> str | None:
        """Up to PARSE_SLICE characters of the backlog for the screen model (None: none)."""
        if not self.backlog:
            return None
        text = self.backlog.popleft()
        if len(text) > PARSE_SLICE:
            self.backlog.appendleft(text[PARSE_SLICE:])
            text = text[:PARSE_SLICE]
        self.backlog_chars -= len(text)
        self.parsed += len(text.encode())
        return text
