"""Newline-delimited frames over a byte stream, with a maximum line length.

:class:`LineSplitter` is the pure part: feed it chunks of any size, get back complete lines.
A line longer than the maximum is discarded up to its newline and reported once as an
:class:`OversizedLine`; the lines after it come through as usual. The broker drives one from a
Trio stream (:func:`trio_relay.broker.lines.read_lines`); the workers drive one from a selector.
"""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_MAX_LINE = 1024 * 1024


class OversizedLine(NamedTuple):
    """A line that exceeded the maximum; ``length`` is how many bytes it had (newline excluded)."""

    length: int
    head: bytes


class LineSplitter:
    """Splits a byte stream into lines (without their newline). Blank lines are skipped."""

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self._partial = b""
        self._discarding: int | None = None  # bytes of an oversized line seen so far
        self._discard_head = b""

    def feed(self, chunk: bytes) -> list[bytes | OversizedLine]:
        out: list[bytes | OversizedLine] = []
        if self._discarding is not None:
            newline = chunk.find(b"\n")
            if newline < 0:
                self._discarding += len(chunk)
                return out
            out.append(OversizedLine(self._discarding + newline, self._discard_head))
            self._discarding = None
            self._discard_head = b""
            chunk = chunk[newline + 1 :]
        data = self._partial + chunk if self._partial else chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        limit = self.max_line
        for line in lines:
            if len(line) > limit:
                out.append(OversizedLine(len(line), line[:200]))
            elif line:
                out.append(line)
        if len(self._partial) > limit:
            self._discarding = len(self._partial)
            self._discard_head = self._partial[:200]
            self._partial = b""
        return out

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete line held (or being discarded)."""
        return self._discarding if self._discarding is not None else len(self._partial)
