"""The screen's own drawing of ASCII text makes the same cells and cursor as pyte's, and its
rows, plain and with ANSI attributes, read as every cell reads."""

from __future__ import annotations

import pyte
from hypothesis import example, given, settings
from hypothesis import strategies as st
from screen_cells import cells_of

from trio_relay.worker.pty import screen as screen_module
from trio_relay.worker.pty.screen import TerminalScreen

# Text, and the sequences that change how it is drawn: colours and attributes, cursor
# moves (to the last column too), autowrap off and on, insert mode, a character set,
# scrolling regions, wide and combining characters, control characters.
PIECES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.sampled_from(
        [
            "\x1b[31m",
            "\x1b[1;44m",
            "\x1b[2m",
            "\x1b[0m",
            "\x1b[7m",
            "\x1b[?7l",
            "\x1b[?7h",
            "\x1b[4h",
            "\x1b[4l",
            "\x1b(0",
            "\x1b(B",
            "\x1b[2;5r",
            "\x1b[r",
            "\x1b[H",
            "\x1b[3;9H",
            "\x1b[1;10H",
            "\x1b[5;8H",
            "\r\n",
            "\x08",
            "\t",
            "漢字",
            "e\u0301",
            "│…⠹",
            "──────",
            "\x1b[K",
            "\x1b[?5h",
        ]
    ),
)


def _pyte_draw(self: pyte.Screen, data: str) -> None:
    pyte.Screen.draw(self, data)


def _state(screen: TerminalScreen) -> tuple[object, ...]:
    inner = screen._screen
    return cells_of(screen), inner.cursor.x, inner.cursor.y, tuple(inner.cursor.attrs)


@settings(max_examples=200, deadline=None)
@given(st.lists(PIECES, max_size=30), st.integers(1, 12))
@example(["\x1b[?7l", "漢字"], 1)  # pyte puts the wide character at x -1: not on the row
def test_drawing_matches_pyte(pieces: list[str], cols: int) -> None:
    ours, theirs = TerminalScreen(6, cols), TerminalScreen(6, cols)
    theirs._screen.draw = _pyte_draw.__get__(theirs._screen)  # pyte's own draw
    theirs._stream._initialize_parser()  # its parser keeps the draw it was made with
    for piece in pieces:
        ours.feed(piece)
        theirs.feed(piece)
        assert _state(ours) == _state(theirs), piece
    inner = ours._screen
    every_cell = [
        "".join(inner.buffer[y][x].data for x in range(inner.columns)).rstrip()
        for y in range(inner.lines)
    ]
    assert ours.lines() == every_cell
    assert ours.ansi_text() == _ansi_of_every_cell(inner)


def _ansi_of_every_cell(inner: pyte.Screen) -> str:
    """The ANSI rendering read cell by cell: an SGR at each change of attributes, a reset
    at the end of a row that changed them, trailing blank cells left out."""
    blank = inner.default_char
    rows = []
    for y in range(inner.lines):
        row = [inner.buffer[y][x] for x in range(inner.columns)]
        while row and row[-1] == blank:
            row.pop()
        parts, current = [], tuple(blank[1:])
        for cell in row:
            if cell.data == "":  # the stub after a wide character
                continue
            if tuple(cell[1:]) != current:
                parts.append(screen_module._sgr(cell))
                current = tuple(cell[1:])
            parts.append(cell.data)
        if current != tuple(blank[1:]):
            parts.append("\x1b[0m")
        rows.append("".join(parts))
    return "\n".join(rows)


def test_the_cell_cache_is_bounded() -> None:
    screen = TerminalScreen(4, 20)
    for n in range(700):  # 700 distinct colours
        screen.feed(f"\x1b[38;5;{n % 256}m\x1b[48;5;{n // 256}mx")
    assert len(screen_module._CELLS) <= 512
