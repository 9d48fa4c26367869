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


# ---------------------------------------------------------------- what xterm would show


def test_csi_s_and_t_scroll_the_whole_screen_without_moving_the_cursor() -> None:
    screen = TerminalScreen(5, 10)
    screen.feed("1\r\n2\r\n3\r\n4\r\n5")
    screen.feed("\x1b[2S")  # scroll up 2: blank rows come in at the bottom
    assert screen.lines() == ["3", "4", "5", "", ""]
    assert screen.cursor == (4, 1)
    screen.feed("\x1b[T")  # scroll down, default 1: a blank row comes in at the top
    assert screen.lines() == ["", "3", "4", "5", ""]
    screen.feed("\x1b[0S")  # 0 is taken as 1
    assert screen.lines() == ["3", "4", "5", "", ""]
    screen.feed("x")  # the cursor did not move
    assert screen.lines() == ["3", "4", "5", "", " x"]
    screen.feed("\x1b[99T")  # more than the screen: all blank
    assert screen.lines() == ["", "", "", "", ""]
    assert screen.parse_errors == 0


def test_csi_s_and_t_scroll_only_inside_the_scrolling_margins() -> None:
    screen = TerminalScreen(5, 10)
    screen.feed("1\r\n2\r\n3\r\n4\r\n5")
    screen.feed("\x1b[2;4r")  # margins: rows 2 to 4; the cursor goes home
    screen.feed("\x1b[S")
    assert screen.lines() == ["1", "3", "4", "", "5"]
    screen.feed("\x1b[2T")
    assert screen.lines() == ["1", "", "", "3", "5"]
    screen.feed("\x1b[5S")  # capped at the region's height
    assert screen.lines() == ["1", "", "", "", "5"]
    assert screen.cursor == (0, 0)


def test_private_and_modifier_sequences_are_not_scrolls_or_attributes() -> None:
    screen = TerminalScreen(3, 10)
    screen.feed("a\r\nb\r\nc")
    screen.feed("\x1b[?1;1S\x1b[>0T\x1b[1;2;3;4;5T")  # XTSMGRAPHICS, title modes, mouse
    assert screen.lines() == ["a", "b", "c"]
    screen.feed("\x1b[>4;2m\x1b[>1ud")  # modifyOtherKeys, kitty keys: no underline, no dim
    assert screen.ansi_text() == "a\nb\ncd"
    assert screen.feed("\x1b[>4;") == [] and screen.held == 5  # split: held back
    screen.feed("2me")
    assert screen.ansi_text() == "a\nb\ncde" and screen.held == 0


def test_shrinking_keeps_the_rows_around_the_cursor_at_the_bottom() -> None:
    screen = TerminalScreen(6, 20)
    screen.feed("top\r\nrow1\r\nrow2\r\nrow3\r\nrow4\r\n> prompt")
    screen.resize(3, 20)  # xterm: the top rows go (to the scrollback) so the cursor stays
    assert screen.lines() == ["row3", "row4", "> prompt"]
    assert screen.cursor == (2, 8)
    screen.feed("!\r\nnext")  # output goes on where the cursor is
    assert screen.lines() == ["row4", "> prompt!", "next"]
    screen.resize(6, 20)  # growing adds blank rows at the bottom; nothing comes back
    assert screen.lines() == ["row4", "> prompt!", "next", "", "", ""]
    assert screen.cursor == (2, 4)


def test_shrinking_drops_rows_below_the_cursor_before_any_at_the_top() -> None:
    screen = TerminalScreen(6, 20)
    screen.feed("title\r\nline 1\r\n> ")
    screen.resize(4, 20)  # the blank rows below the cursor go: nothing moves
    assert screen.lines() == ["title", "line 1", ">", ""]
    assert screen.cursor == (2, 2)
    screen.feed("\x1b[5;1Hbelow\x1b[3;3H")  # clamped to the last row
    screen.resize(3, 20)  # the row below the cursor goes, content or not
    assert screen.lines() == ["title", "line 1", ">"]
    screen.resize(2, 20)  # then the top one, and the cursor moves up with its row
    assert screen.lines() == ["line 1", ">"]
    assert screen.cursor == (1, 2)
    screen.resize(4, 20)
    assert screen.lines() == ["line 1", ">", "", ""]
    screen.feed("\x1b[4;1Hend")
    assert screen.lines() == ["line 1", ">", "", "end"]


def test_shrinking_columns_and_rows_together_and_the_margins_reset() -> None:
    screen = TerminalScreen(4, 10)
    screen.feed("\x1b[2;3r\x1b[1;1Habcdefghij\x1b[4;1Hklmnopqrst")
    screen.resize(2, 5)
    assert screen.lines() == ["", "klmno"]  # rows 1-2 (0-based) dropped from the top
    screen.resize(3, 10)
    screen.feed("\x1b[3;1H\n\n")  # no margins left: a linefeed at the bottom scrolls all
    assert screen.lines() == ["", "", ""]


def test_dim_text_is_rendered_and_round_trips() -> None:
    screen = TerminalScreen(3, 40)
    screen.feed("a\x1b[2mdim\x1b[22mb\x1b[1;2mbd\x1b[22mc\x1b[2;31mr\x1b[0mz")
    ansi = screen.ansi_text()
    first = ansi.split("\n")[0]
    assert first == "a\x1b[0;2mdim\x1b[0mb\x1b[0;1;2mbd\x1b[0mc\x1b[0;2;31mr\x1b[0mz"
    again = TerminalScreen(3, 40)
    again.feed(ansi)
    assert again.ansi_text() == ansi
    screen.feed("\r\n\x1b[38;5;2mg\x1b[48;2;0;2;2mh\x1b[m")  # a colour's 2 is not dim
    green = "38;2;0;205;0"  # pyte keeps colour 2 of the 256 as its RGB value
    assert screen.ansi_text().split("\n")[1] == (
        f"\x1b[0;{green}mg\x1b[0;{green};48;2;0;2;2mh\x1b[0m"
    )
    screen.feed("\r\n\x1b[2mx\x1b[m")  # dim survives a scroll, and a reset ends it
    screen.feed("\r\n")
    assert screen.ansi_text().split("\n")[1] == "\x1b[0;2mx\x1b[0m"


def test_erasing_leaves_only_the_background_colour() -> None:
    # As xterm and tmux (background colour erase): erased cells take the current background
    # and nothing else, however much of the line was written (pyte gave them every
    # attribute of the cursor, and ESC[2J only to the cells written before).
    screen = TerminalScreen(3, 8)
    screen.feed("\x1b[4;7;31mab\x1b[K")  # underline, reverse, red: not for the blanks
    assert screen.ansi_text() == "\x1b[0;4;7;31mab\x1b[0m\n\n"
    screen.feed("\r\x1b[44mx\x1b[K\x1b[m")
    assert screen.ansi_text().split("\n")[0] == "\x1b[0;4;7;31;44mx\x1b[0;44m       \x1b[0m"
    screen.feed("\x1b[1;32;44m\x1b[2J\x1b[m")  # the whole screen blue, not bold or green
    assert screen.ansi_text() == "\n".join(["\x1b[0;44m        \x1b[0m"] * 3)
    screen.feed("\x1b[m\x1b[2J\x1b[H1234567\x1b[1;3H\x1b[41m\x1b[2X\x1b[1J\x1b[m")
    assert screen.ansi_text().split("\n")[0] == "\x1b[0;41m    \x1b[0m567"
    assert screen.lines() == ["    567", "", ""]


def test_unknown_erase_parameters_are_ignored() -> None:
    screen = TerminalScreen(2, 10)
    screen.feed("abc\x1b[5K\x1b[9J\x1b[?7K")  # pyte failed with UnboundLocalError on these
    assert screen.lines() == ["abc", ""] and screen.parse_errors == 0


def test_a_character_pushed_off_the_line_is_gone() -> None:
    screen = TerminalScreen(2, 4)
    screen.feed("abcd\x1b[1G\x1b[@")  # insert a blank: the d is pushed off
    assert screen.lines()[0] == " abc"
    screen.feed("\x1b[P")  # delete it again: a blank comes in at the end, not the d
    assert screen.lines()[0] == "abc"


def test_rows_and_cells_scrolled_in_take_the_background_colour() -> None:
    blue = "\x1b[0;44m    \x1b[0m"
    screen = TerminalScreen(3, 4)
    screen.feed("a\r\nb\r\nc\x1b[44m\n\x1b[m")  # a linefeed at the bottom
    assert screen.ansi_text().split("\n") == ["b", "c", blue]
    screen.feed("\x1b[H\x1b[44m\x1bM\x1b[m")  # a reverse index at the top
    assert screen.ansi_text().split("\n") == [blue, "b", "c"]
    screen.feed("\x1b[2;1H\x1b[44m\x1b[L\x1b[m")  # insert a line
    assert screen.ansi_text().split("\n") == [blue, blue, "b"]
    screen.feed("\x1b[m\x1b[2J\x1b[Habc\x1b[1;1H\x1b[44m\x1b[S\x1b[m")  # CSI S
    assert screen.ansi_text().split("\n") == ["", "", blue]
    screen.feed("\x1b[m\x1b[2J\x1b[Habc\x1b[1;1H\x1b[44m\x1b[P\x1b[m")  # delete a character
    assert screen.ansi_text().split("\n")[0] == "bc \x1b[0;44m \x1b[0m"  # in at the end
    screen.feed("\x1b[1;1H\x1b[44m\x1b[@\x1b[m")  # insert one
    assert screen.ansi_text().split("\n")[0] == "\x1b[0;44m \x1b[0mbc"


def test_the_alternate_screen_hides_the_main_one_until_it_ends() -> None:
    # What a full-screen program (vim, htop, less) leaves: the screen from before it.
    screen = TerminalScreen(4, 20)
    screen.feed("$ vim notes\r\n")
    screen.feed("\x1b[?1049h")  # the cursor saved, a blank screen
    assert screen.lines() == ["", "", "", ""] and screen.cursor == (1, 0)
    screen.feed("\x1b[H\x1b[1;31m~ editing\x1b[?1049h\x1b[3;1Hmore")  # entered once only
    assert screen.lines() == ["~ editing", "", "more", ""]
    screen.feed("\x1b[?1049l")  # the main screen, the cursor and its attributes back
    assert screen.lines() == ["$ vim notes", "", "", ""] and screen.cursor == (1, 0)
    screen.feed("$ ")
    assert screen.ansi_text().split("\n")[1] == "$"
    screen.feed("\x1b[?1049l")  # not in the alternate screen: nothing happens
    assert screen.lines()[:2] == ["$ vim notes", "$"] and screen.cursor == (1, 2)
    screen.feed("\x1b[?47h\x1b[3;5Hx\x1b[?47l")  # 47 and 1047 keep the cursor where it is
    assert screen.lines() == ["$ vim notes", "$", "", ""] and screen.cursor == (2, 5)


def test_a_resize_in_the_alternate_screen_reaches_the_main_one_when_it_shows() -> None:
    # As tmux: the main screen is resized when it shows again, about its saved cursor.
    screen = TerminalScreen(6, 20)
    screen.feed("1\r\n2\r\n3\r\n4\r\n> ")
    screen.feed("\x1b[?1049h\x1b[H~ full screen")
    screen.resize(3, 10)
    assert screen.lines() == ["~ full scr", "", ""]
    screen.feed("\x1b[?1049l")
    assert screen.lines() == ["3", "4", ">"] and screen.cursor == (2, 2)
    screen.feed("\x1b[?1049h\x1bc")  # a reset ends the alternate screen with the rest
    assert screen.lines() == ["", "", ""]
    screen.feed("\x1b[?1049l")
    assert screen.lines() == ["", "", ""] and screen.cursor == (0, 0)


def test_a_private_sgr_is_ignored_not_a_parse_error() -> None:
    # Gemini CLI sends xterm's private SGR (CSI ? Pm m); pyte raised on it.
    screen = TerminalScreen(2, 20)
    screen.feed("\x1b[1mbold\x1b[?4m still bold")
    assert screen.parse_errors == 0
    assert screen.lines()[0] == "bold still bold"
    assert screen.ansi_text().startswith("\x1b[0;1mbold still bold\x1b[0m")
