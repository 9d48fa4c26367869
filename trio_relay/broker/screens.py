"""The last screen an agent's PTY worker showed, kept to answer the next snapshot while
nothing has changed.

A PTY worker's snapshot carries ``offset``: the output byte offset its screen reflects. The
frame reader records each ``output`` frame the run sends (:meth:`LastScreens.saw_output`),
so the broker knows where the output it has seen ends. A kept snapshot whose ``offset`` is
that end, taken at the terminal size the broker last asked for, is what the worker would
answer now, as far as anything the broker has reported can tell: the screen changes only
with output (which reaches the broker before it can be seen anywhere) and with a resize.
So a snapshot of an agent that has drawn nothing since costs no round trip to its worker,
and a client that polls idle agents' screens wakes only the broker.
"""

from __future__ import annotations

from typing import Any

from trio_relay.wire import Output


class LastScreens:
    """One run's kept snapshots (plain and ANSI) and what makes them stale. Sans-IO."""

    __slots__ = ("_last_output", "_resizes", "_kept")

    def __init__(self) -> None:
        self._last_output: Output | None = None
        self._resizes = 0  # resizes asked for in this run
        self._kept: dict[bool, dict[str, Any]] = {}  # ansi -> the worker's payload

    def saw_output(self, frame: Output) -> None:
        """The run sent ``frame`` (called for each, in order; the end is computed when asked)."""
        self._last_output = frame

    def resized(self) -> None:
        """A resize is about to be written: what was kept is stale, and so is any snapshot
        already asked for."""
        self._resizes += 1
        self._kept.clear()

    def asking(self) -> int:
        """A token to give :meth:`keep` with the answer of the snapshot about to be asked."""
        return self._resizes

    def keep(self, ansi: bool, token: int, payload: dict[str, Any]) -> None:
        """Keep a worker's snapshot, unless a resize was asked for since its ``token``."""
        if token == self._resizes and type(payload.get("offset")) is int:
            self._kept[ansi] = payload

    def current(self, ansi: bool) -> dict[str, Any] | None:
        """The kept snapshot if it still shows the screen (None: ask the worker). The
        payload is shared: callers must not change it."""
        kept = self._kept.get(ansi)
        if kept is None:
            return None
        last = self._last_output
        end = 0 if last is None else last.offset + len(last.data.encode())
        return kept if kept["offset"] == end else None
