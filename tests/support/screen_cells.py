"""What a TerminalScreen holds, cell by cell, for tests that compare two screens."""

from __future__ import annotations

from trio_relay.worker.pty.screen import TerminalScreen


def cells_of(screen: TerminalScreen) -> dict[tuple[int, int], tuple[object, ...]]:
    """Every cell written on the screen, (row, column) -> its fields, inside the columns."""
    inner = screen._screen
    return {
        (y, x): tuple(char)
        for y in range(inner.lines)
        for x, char in inner.buffer[y].items()
        if x < inner.columns
    }
