"""The screen model on its own: queries (also split across chunks), drawing, snapshots."""

from __future__ import annotations

import pytest

from trio_relay.worker.pty.screen import ListenerError, TerminalScreen


def test_a_query_split_across_two_chunks_is_answered_once_whole() -> None:
    screen = TerminalScreen(24, 80)
    assert screen.feed("abc\x1b[") == []
    assert screen.held == 2  # held back: it may be the start of a query
    assert screen.text().startswith("abc")
    assert screen.feed("6n") == ["\x1b[1;4R"]
    assert screen.held == 0
    for split in range(1, len("\x1b]11;?\x07")):  # every split point of an OSC query
        query = "\x1b]11;?\x07"
        assert screen.feed(query[:split]) == []
        assert screen.feed(query[split:]) == ["\x1b]11;rgb:0000/0000/0000\x07"]


def test_the_queries_and_their_answers() -> None:
    screen = TerminalScreen(24, 80)
    assert screen.feed("\x1b[5n\x1b[c\x1b[>c\x1b[?6n") == [
        "\x1b[0n",
        "\x1b[?62;22c",
        "\x1b[>1;10;0c",
        "\x1b[?1;1;1R",
    ]
    assert screen.feed("\x1b[?2004$p") == ["\x1b[?2004;2$y"]
    screen.feed("\x1b[?2004h")
    assert screen.bracketed_paste
    assert screen.feed("\x1b[?2004$p\x1b]10;?\x1b\\") == [
        "\x1b[?2004;1$y",
        "\x1b]10;rgb:ffff/ffff/ffff\x1b\\",
    ]


def test_finish_applies_what_was_held_back() -> None:
    screen = TerminalScreen(2, 10)
    screen.feed("x\x1b[")
    screen.finish()
    assert screen.held == 0 and screen.text().split("\n")[0] == "x"


def test_snapshot_plain_and_ansi_and_resize() -> None:
    screen = TerminalScreen(3, 20)
    screen.feed("plain \x1b[1;31mred\x1b[0m\r\n\x1b[44mblue bg\x1b[0m")
    snap = screen.snapshot()
    assert snap == {"text": "plain red\nblue bg\n", "rows": 3, "cols": 20, "cursor": [1, 7]}
    ansi = screen.snapshot(ansi=True)["text"].split("\n")
    assert ansi[0] == "plain \x1b[0;1;31mred\x1b[0m"
    assert ansi[1] == "\x1b[0;44mblue bg\x1b[0m"
    screen.resize(5, 30)
    assert (screen.rows, screen.cols) == (5, 30)
    with pytest.raises(ValueError):
        screen.resize(0, 10)
    with pytest.raises(ValueError):
        TerminalScreen(1, 0)


def test_wide_characters_and_the_listener() -> None:
    screen = TerminalScreen(2, 10)
    drawn: list[str] = []
    screen.on_draw = drawn.append
    screen.feed("日本x")
    assert screen.text().split("\n")[0] == "日本x"
    assert screen.cursor == (0, 5)
    assert "".join(drawn) == "日本x"


def test_a_bad_sequence_is_counted_but_a_listener_bug_is_not_swallowed() -> None:
    screen = TerminalScreen(2, 20)
    before = screen.parse_errors
    screen.feed("\x1b[?1X")  # pyte calls erase_characters(private=True): a TypeError
    screen.feed("after")
    assert screen.parse_errors == before + 1 and screen.last_parse_error
    assert "after" in screen.text()

    def broken(text: str) -> None:
        raise RuntimeError("listener bug")

    screen.on_draw = broken
    with pytest.raises(ListenerError):
        screen.feed("more")
    assert screen.parse_errors == before + 1
