"""The screen's shortcut for simple CSI and OSC sequences, and its memo of SGRs, leave the
screen as pyte's own parser and SGR do: cells, cursor, attributes, modes, margins, title,
parse errors, answers."""

from __future__ import annotations

import pyte
from hypothesis import example, given, settings
from hypothesis import strategies as st
from screen_cells import cells_of

from trio_relay.worker.pty.screen import TerminalScreen

PARAM = st.one_of(st.just(""), st.integers(0, 30).map(str), st.sampled_from(["9999", "12345"]))
# Finals the shortcut takes, and a few it leaves to pyte's parser.
FINAL = st.sampled_from("ABCDEFGHJKLMPSTXZ@`abcdfghlmnqrsu" + "[~|")
CSI = st.builds(
    lambda private, params, final, cut: (
        "\x1b[" + ("?" if private else "") + ";".join(params) + cut + final
    ),
    st.booleans(),
    st.lists(PARAM, max_size=4),
    FINAL,
    st.sampled_from(["", "", "", "\r", "\x08", " ", ">", "$", "\x18"]),
)
OSC = st.builds(
    lambda code, text, end: f"\x1b]{code};{text}{end}",
    st.sampled_from("0124"),
    st.text(alphabet="ab ⠹…;", max_size=8),
    st.sampled_from(["\x07", "\x1b\\", "\x9c", "\x1bx", ""]),
)
TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
CONTROL = st.sampled_from(
    ["\r\n", "\x08", "\t", "\x1b7", "\x1b8", "\x1bM", "\x1b(0", "\x1b(B", "\x1b[?5h", "\x1b[?5l"]
)
PIECE = st.one_of(CSI, CSI, OSC, TEXT, CONTROL, st.sampled_from(["漢", "e\u0301", "\x9b2J"]))


def _state(screen: TerminalScreen) -> tuple[object, ...]:
    inner = screen._screen
    return (
        cells_of(screen),
        (inner.cursor.x, inner.cursor.y, tuple(inner.cursor.attrs)),
        sorted(inner.mode),
        inner.margins,
        inner.title,
        inner.icon_name,
        screen.parse_errors,
    )


def _pyte_parser_only(screen: TerminalScreen) -> TerminalScreen:
    """The screen with pyte's parser and no memo of SGRs: every sequence parsed and every
    SGR applied as pyte does."""
    stream, inner = screen._stream, screen._screen
    stream.feed = pyte.Stream.feed.__get__(stream)  # type: ignore[method-assign]
    inner.select_graphic_rendition = (  # type: ignore[method-assign]
        lambda *attrs, private=False: None if private else inner._apply_sgr(attrs)
    )
    stream._initialize_parser()  # its parser binds the handlers when it is made
    return screen


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECE, max_size=25), st.lists(st.integers(0, 400), max_size=4))
@example(["\x1b[?6n", "\x1b[5K", "\x1b[;7H", "\x1b[12345C"], [])
@example(["\x1b[0m", "\x1b[?5h", "\x1b[27m", "\x1b[0m", "x"], [])  # SGR 0 in reverse video
@example(["\x1b]2;title\x07", "\x1b]0;both\x1b\\", "\x1b]1;ic", "on\x07"], [3])
def test_the_shortcut_leaves_the_screen_as_pyte_parser_does(
    pieces: list[str], cuts: list[int]
) -> None:
    ours, theirs = TerminalScreen(6, 14), _pyte_parser_only(TerminalScreen(6, 14))
    data = "".join(pieces)
    points = sorted({c % (len(data) + 1) for c in cuts})
    for start, end in zip([0, *points], [*points, len(data)]):  # chunks cut anywhere
        assert ours.feed(data[start:end]) == theirs.feed(data[start:end])
        assert _state(ours) == _state(theirs), repr(data[start:end])
    ours.finish()
    theirs.finish()
    assert _state(ours) == _state(theirs)


def test_a_parameter_too_long_for_int_is_a_parse_error_as_through_pyte() -> None:
    ours, theirs = TerminalScreen(4, 20), _pyte_parser_only(TerminalScreen(4, 20))
    for screen in (ours, theirs):
        screen.feed("\x1b[" + "1" * 5000 + "mafter")
    assert ours.parse_errors == theirs.parse_errors == 1
    assert ours.lines()[0] == theirs.lines()[0] == "after"


def test_the_shortcut_is_taken() -> None:
    screen = TerminalScreen(4, 20)
    sent: list[str] = []
    parser_send = screen._stream._send_to_parser
    screen._stream._send_to_parser = lambda char: sent.append(char) or parser_send(char)  # type: ignore[method-assign]
    screen.feed("\x1b]0;⠹ Working\x07\x1b[2;3H\x1b[1;38;5;208mhi\x1b[0m\x1b[K\x1b[?25l")
    assert sent == []
    assert screen.lines()[1] == "  hi" and screen.title == "⠹ Working"
