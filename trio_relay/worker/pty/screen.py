"""The screen model of the PTY worker: what a person looking at the terminal would see.

:class:`TerminalScreen` wraps a pyte screen. It is fed the program's output as text and

- answers the terminal queries a full-screen program sends and then blocks on: cursor
  position (``ESC[6n``, ``ESC[?6n``), status (``ESC[5n``), primary and secondary device
  attributes (``ESC[c``, ``ESC[>c``), DEC private mode reports (``ESC[?Pn$p``) and the
  foreground/background colour queries (``OSC 10;?`` / ``OSC 11;?``). Queries split across
  two chunks are recognised: an incomplete escape sequence at the end of a chunk is held back
  until the next one (an incomplete sequence draws nothing, so the screen looks the same);
- tells a listener every run of printable text drawn (:attr:`on_draw`), which is how the
  worker sees a typed message echoed;
- renders snapshots as plain text or with ANSI attributes.

Where pyte 0.8.2 differs from xterm, the screen does what xterm and tmux do:

- a resize to fewer rows drops the rows below the cursor first, then rows from the top only
  as needed to keep the cursor's row on screen (the cursor moves up with it); more rows are
  blank rows added at the bottom. (pyte drops rows from the top and leaves the cursor
  where it was, below the screen.)
- ``CSI n S`` and ``CSI n T`` scroll the scrolling region (DECSTBM) up and down n lines
  (default 1) without moving the cursor;
- the alternate screen (private modes 47, 1047 and 1049, which also saves and restores
  the cursor): a full-screen program draws on a screen of its own, and the screen from
  before it shows again when it leaves, resized as it would have been had it shown
  (pyte has one screen: vim's last screen stayed after it quit);
- erased cells (``CSI K``, ``CSI J``, ``CSI X``), and the rows and cells that scrolling,
  inserting and deleting bring in, take the current background colour and no other
  attribute, over the whole range (pyte gave erased cells every attribute of the cursor,
  underline and reverse too, and ``CSI 2 J`` only to the cells written before). Erase
  parameters it does not know are ignored (pyte raised on ``CSI 5 K``: the worker died);
  a character ``CSI @`` pushes off the right edge is gone (``CSI P`` brought it back);
- dim (SGR 2, ended by SGR 22 or 0) is kept with each cell and rendered as ``ESC[2m``;
- ``CSI > ... m`` and the other ``CSI >`` sequences (modifyOtherKeys, kitty keyboard
  flags, title modes) are dropped: pyte would take ``ESC[>4;2m`` for underline and dim;
  ``CSI ? ... m`` (xterm's private SGR) is ignored, where pyte raised.

It does no I/O. A sequence that pyte cannot handle is counted in :attr:`parse_errors` (the
last one in :attr:`last_parse_error`) and skipped; it never stops the output that follows.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from itertools import groupby
from operator import itemgetter
from typing import Any, NamedTuple

import pyte
from pyte import graphics
from pyte.screens import Cursor, StaticDefaultDict

_QUERY = re.compile(
    r"\x1b\[(?P<dsr>\??[56])n"
    r"|\x1b\[(?P<da>>?)0?c"
    r"|\x1b\[\?(?P<rqm>\d{1,5})\$p"
    r"|\x1b\](?P<osc>1[01]);\?(?P<st>\x07|\x1b\\)"
    r"|(?P<gt>\x1b\[>[\d;]{0,32}[@-~])"  # not a query: dropped (pyte ignores the ">")
)
# The end of a chunk that may be the start of a query or of a dropped ``CSI >``: held back
# until more text comes.
_PARTIAL = re.compile(r"\x1b(?:\[(?:\??\d{0,5}\$?|>[\d;]{0,32})|\](?:1[01]?(?:;\??\x1b?)?)?)?\Z")

PRIMARY_DA = "\x1b[?62;22c"  # VT220 with ANSI colour
SECONDARY_DA = "\x1b[>1;10;0c"  # VT220, firmware 10
FOREGROUND = "rgb:ffff/ffff/ffff"
BACKGROUND = "rgb:0000/0000/0000"
BRACKETED_PASTE = 2004 << 5  # how pyte stores private mode 2004 in Screen.mode
_ALTERNATE = frozenset({47, 1047, 1049})  # the alternate screen; 1049 saves the cursor too

_COLUMNS = list(range(1024))  # a row's first columns, to compare its cells' order with
_CELL_TEXT = itemgetter(0)  # a cell's character (``_Char.data``)
_FG_CODES = {name: code for code, name in {**graphics.FG_ANSI, **graphics.FG_AIXTERM}.items()}
_BG_CODES = {name: code for code, name in {**graphics.BG_ANSI, **graphics.BG_AIXTERM}.items()}
_HEX = re.compile(r"[0-9a-fA-F]{6}\Z")


class _Char(NamedTuple):
    """pyte's ``Char`` with ``dim``: what every cell holds (pyte only ever replaces fields of
    the screen's default character and the cursor's attributes, so the type carries over)."""

    data: str
    fg: str = "default"
    bg: str = "default"
    bold: bool = False
    italics: bool = False
    underscore: bool = False
    strikethrough: bool = False
    reverse: bool = False
    blink: bool = False
    dim: bool = False


class ListenerError(Exception):
    """The :attr:`TerminalScreen.on_draw` listener raised (its exception is the cause): a bug
    of the listener's, not a sequence pyte could not parse, so it is not swallowed."""


# What pyte's handlers raise for sequences they cannot take (a handler called with keyword
# arguments it does not accept, e.g. ``ESC[?6n``; odd parameters).
_PARSE_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError)


# The two kinds of sequence an agent CLI's redraws are mostly made of, complete in one
# chunk: ``CSI [?] params final`` (colours, cursor moves, erasing) and ``OSC 0/1/2 ; text``
# ended by BEL or ST (the window title). pyte's parser takes every character of a sequence
# through a generator; these are dispatched as pyte would, and anything else (other
# intermediates, control characters inside, a sequence cut at the chunk's end) still goes
# through pyte's parser.
_SIMPLE_CSI = re.compile(r"\x1b\[(\?)?([0-9;]*)([@-Z`-z])")
_SIMPLE_OSC = re.compile(r"\x1b\]([012]);([^\x07\x1b\x9c]*)(?:\x07|\x1b\\|\x9c)")


class _Stream(pyte.Stream):
    """A pyte stream that survives sequences its screen rejects (pyte calls some handlers
    with keyword arguments they do not take, e.g. ``ESC[?6n``). pyte resets its parser
    before re-raising; this reports the error to ``on_error`` and goes on with the next
    character. Only the exceptions pyte's handlers raise are taken so: an error of the draw
    listener propagates as :class:`ListenerError`. Simple CSI and OSC title sequences take
    a shortcut past pyte's per-character parser (see ``_SIMPLE_CSI``), with the same
    effect."""

    csi = {**pyte.Stream.csi, "S": "scroll_up", "T": "scroll_down"}

    def __init__(self, screen: _Screen, on_error: Callable[[Exception], None]) -> None:
        super().__init__(screen)
        self.on_error = on_error

    def _initialize_parser(self) -> None:
        super()._initialize_parser()
        listener = self.listener
        assert listener is not None
        # Bound now, as pyte's parser binds its handlers when it is made.
        self._csi_handlers = defaultdict(
            lambda: listener.debug,
            {final: getattr(listener, name) for final, name in self.csi.items()},
        )
        self._set_icon_name, self._set_title = listener.set_icon_name, listener.set_title

    def feed(self, data: str) -> None:
        """pyte's ``feed``, with the shortcut for simple sequences met in plain text."""
        draw = self.listener.draw  # type: ignore[union-attr]
        match_text = self._text_pattern.match
        match_csi, match_osc = _SIMPLE_CSI.match, _SIMPLE_OSC.match
        send = self._send_to_parser
        plain = self._taking_plain_text
        length = len(data)
        offset = 0
        while offset < length:
            if not plain:
                plain = send(data[offset])
                offset += 1
            elif match := match_text(data, offset):
                offset = match.end()
                draw(match.group())
            elif data[offset] == "\x1b" and (match := match_csi(data, offset)):
                offset = match.end()
                self._csi(*match.groups())
            elif data[offset] == "\x1b" and (match := match_osc(data, offset)):
                offset = match.end()
                self._osc(*match.groups())
            else:
                plain = False
        self._taking_plain_text = plain

    def _csi(self, private: str | None, params: str, final: str) -> None:
        """Dispatch ``CSI [?] params final`` as pyte's parser does: each parameter an
        integer up to 9999, an empty one 0."""
        try:
            args = [min(int(p or 0), 9999) for p in params.split(";")]
            if private:
                self._csi_handlers[final](*args, private=True)
            else:
                self._csi_handlers[final](*args)
        except ListenerError:
            raise
        except _PARSE_ERRORS as exc:
            self.on_error(exc)

    def _osc(self, code: str, text: str) -> None:
        if code in "01":
            self._set_icon_name(text)
        if code in "02":
            self._set_title(text)

    def _send_to_parser(self, data: str) -> bool | None:
        try:
            return super()._send_to_parser(data)
        except ListenerError:
            raise
        except _PARSE_ERRORS as exc:  # counted and reported by the owner
            self.on_error(exc)
            return self._taking_plain_text


#: The cursor's attributes after an SGR, by the attributes before, reverse video, and the SGR's
#: parameters (see :meth:`_Screen.select_graphic_rendition`).
_SGR: dict[Any, Any] = {}
#: The cells :meth:`_Screen._draw_narrow` built, by attributes, then character.
_CELLS: dict[Any, dict[str, Any]] = {}


def _all_one_cell(text: str) -> bool:
    """Whether pyte gives every character of ``text`` one cell (its ``wcwidth``)."""
    width = pyte.screens.wcwidth
    return all(width(char) == 1 for char in text)


class _Screen(pyte.Screen):
    """pyte's screen, with a tap on drawn text, dim, ``CSI S``/``CSI T``, the alternate
    screen, xterm's erasing and xterm's resize. Queries are answered by TerminalScreen, so
    pyte's own (partial) answers are disabled."""

    on_draw: Callable[[str], None] | None = None

    @property
    def default_char(self) -> Any:
        return _Char(" ", reverse=pyte.modes.DECSCNM in self.mode)

    def reset(self) -> None:
        #: While the alternate screen shows: the main screen's rows and its size then.
        self._main: tuple[Any, int, int] | None = None
        #: The cursor ``CSI ? 1049 h`` saved, for ``CSI ? 1049 l`` to restore.
        self._saved_cursor: Any = None
        super().reset()
        self.cursor.attrs = self.default_char

    # -- the alternate screen (modes 47, 1047 and 1049, as tmux does them)

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private"):
            for mode in modes:
                if mode in _ALTERNATE:
                    self._enter_alternate(save_cursor=mode == 1049)
            modes = tuple(mode for mode in modes if mode not in _ALTERNATE)
        super().set_mode(*modes, **kwargs)

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private"):
            for mode in modes:
                if mode in _ALTERNATE:
                    self._leave_alternate(restore_cursor=mode == 1049)
            modes = tuple(mode for mode in modes if mode not in _ALTERNATE)
        super().reset_mode(*modes, **kwargs)

    def _enter_alternate(self, save_cursor: bool) -> None:
        """A blank screen shows; the main one is kept as it is (once: entering again while
        the alternate screen shows does nothing)."""
        if self._main is not None:
            return
        if save_cursor:
            self._saved_cursor = _copied(self.cursor)
        self._main = (self.buffer, self.lines, self.columns)
        self.buffer = defaultdict(lambda: StaticDefaultDict(self.default_char))
        self.dirty.update(range(self.lines))

    def _leave_alternate(self, restore_cursor: bool) -> None:
        """The main screen shows again, resized as it would have been had it shown when
        the terminal was resized."""
        if self._main is None:
            return
        lines, columns = self.lines, self.columns
        self.buffer, self.lines, self.columns = self._main
        self._main = None
        saved, self._saved_cursor = self._saved_cursor, None
        if restore_cursor and saved is not None:
            self.cursor.x, self.cursor.y, self.cursor.attrs = saved.x, saved.y, saved.attrs
        self.cursor.x = min(self.cursor.x, self.columns - 1)
        self.cursor.y = min(self.cursor.y, self.lines - 1)
        self.dirty.update(range(self.lines))
        self.resize(lines, columns)

    def select_graphic_rendition(self, *attrs: int, private: bool = False) -> None:
        if private:
            return  # CSI ? ... m (xterm's private SGR, Gemini CLI sends it): not an attribute
        # The new attributes depend only on the old ones, the parameters and the default
        # character (reverse or not): a redraw sets the same few colours again and again.
        if len(attrs) > 16:  # not a colour a redraw repeats: not worth keeping
            self._apply_sgr(attrs)
            return
        key = (self.cursor.attrs, pyte.modes.DECSCNM in self.mode, attrs)
        after = _SGR.get(key)
        if after is None:
            self._apply_sgr(attrs)
            if len(_SGR) >= 512:
                _SGR.clear()
            after = _SGR[key] = self.cursor.attrs
        self.cursor.attrs = after

    def _apply_sgr(self, attrs: tuple[int, ...]) -> None:
        super().select_graphic_rendition(*attrs)  # a 0 also ends dim (the default char's)
        if 2 not in attrs and 22 not in attrs:
            return
        dim = None
        params = iter(attrs)
        for attr in params:
            if attr == 2:
                dim = True
            elif attr == 0 or attr == 22:
                dim = False
            elif attr == 38 or attr == 48:  # 38;5;n or 38;2;r;g;b: its 2 and 5 are no SGR
                for _ in range({5: 1, 2: 3}.get(next(params, 0), 0)):
                    next(params, None)
        if dim is not None and self.cursor.attrs.dim != dim:
            self.cursor.attrs = self.cursor.attrs._replace(dim=dim)

    # -- blanks: what erasing leaves, and the rows and cells that scrolling brings in

    def _blank(self) -> Any:
        """The default character in the cursor's background colour and no other attribute:
        what xterm and tmux erase with (background colour erase). pyte erases with all the
        cursor's attributes, so underline, reverse or a foreground colour would leak into
        erased cells."""
        blank = self.default_char
        bg = self.cursor.attrs.bg
        return blank if bg == blank.bg else blank._replace(bg=bg)

    def _clear(self, y: int, columns: range) -> None:
        blank = self._blank()
        if blank != self.default_char:
            line = self.buffer[y]
            for x in columns:
                line[x] = blank
        elif len(columns) == self.columns:
            self.buffer.pop(y, None)
        elif (line := self.buffer.get(y)) is not None:
            start, stop = columns.start, columns.stop
            for x in [x for x in line if start <= x < stop]:
                del line[x]

    def _clear_rows(self, rows: range) -> None:
        """Blank rows that came in (their cells are already gone): in the background colour."""
        if self._blank() != self.default_char:
            for y in rows:
                self._clear(y, range(self.columns))

    def erase_in_line(self, how: int = 0, *args: Any, private: bool = False) -> None:
        """``CSI n K``: 0 from the cursor, 1 to the cursor, 2 the whole line; any other
        ``n`` is ignored (pyte fails on it)."""
        x = min(self.cursor.x, self.columns - 1)
        columns = {0: range(x, self.columns), 1: range(x + 1), 2: range(self.columns)}.get(how)
        if columns is not None:
            self.dirty.add(self.cursor.y)
            self._clear(self.cursor.y, columns)

    def erase_in_display(self, how: int = 0, *args: Any, private: bool = False) -> None:
        """``CSI n J``: 0 from the cursor, 1 to the cursor, 2 and 3 the whole screen, every
        cell of it (pyte gives only the cells written before the cursor's attributes)."""
        rows = {0: range(self.cursor.y + 1, self.lines), 1: range(self.cursor.y)}.get(how)
        if how in (2, 3):
            rows = range(self.lines)
        if rows is None:
            return
        self.dirty.update(rows)
        for y in rows:
            self._clear(y, range(self.columns))
        if how in (0, 1):
            self.erase_in_line(how)

    def erase_characters(self, count: int | None = None) -> None:
        """``CSI n X``."""
        x = self.cursor.x
        self.dirty.add(self.cursor.y)
        self._clear(self.cursor.y, range(x, min(x + (count or 1), self.columns)))

    def insert_characters(self, count: int | None = None) -> None:
        """``CSI n @``. What is pushed past the right edge is gone (pyte kept one cell
        there, which a ``CSI P`` then brought back)."""
        super().insert_characters(count)
        line = self.buffer[self.cursor.y]
        for x in [x for x in line if x >= self.columns]:
            del line[x]
        x = self.cursor.x
        self._clear_cells(range(x, min(x + (count or 1), self.columns)))

    def delete_characters(self, count: int | None = None) -> None:
        super().delete_characters(count)
        self._clear_cells(range(max(self.cursor.x, self.columns - (count or 1)), self.columns))

    def _clear_cells(self, columns: range) -> None:
        if self._blank() != self.default_char:
            self._clear(self.cursor.y, columns)

    def index(self) -> None:
        bottom = self.margins.bottom if self.margins else self.lines - 1
        scrolls = self.cursor.y == bottom
        super().index()
        if scrolls:
            self._clear_rows(range(bottom, bottom + 1))

    def reverse_index(self) -> None:
        top = self.margins.top if self.margins else 0
        scrolls = self.cursor.y == top
        super().reverse_index()
        if scrolls:
            self._clear_rows(range(top, top + 1))

    def insert_lines(self, count: int | None = None) -> None:
        top, bottom = self.margins or (0, self.lines - 1)
        y = self.cursor.y
        super().insert_lines(count)
        if top <= y <= bottom:
            self._clear_rows(range(y, min(y + (count or 1), bottom + 1)))

    def delete_lines(self, count: int | None = None) -> None:
        top, bottom = self.margins or (0, self.lines - 1)
        y = self.cursor.y
        super().delete_lines(count)
        if top <= y <= bottom:
            self._clear_rows(range(max(y, bottom + 1 - (count or 1)), bottom + 1))

    def scroll_up(self, count: int = 1, *more: int, private: bool = False) -> None:
        """``CSI n S``: the scrolling region's rows move up n; blank rows come in below."""
        if not private and not more:
            self._scroll(count or 1)

    def scroll_down(self, count: int = 1, *more: int, private: bool = False) -> None:
        """``CSI n T``: the rows move down n. (With more parameters it is xterm's mouse
        highlight tracking, not a scroll.)"""
        if not private and not more:
            self._scroll(-(count or 1))

    def _scroll(self, by: int) -> None:
        top, bottom = self.margins or (0, self.lines - 1)
        by = max(-(bottom - top + 1), min(by, bottom - top + 1))
        buffer = self.buffer
        rows = range(top, bottom + 1) if by > 0 else range(bottom, top - 1, -1)
        for y in rows:
            source = y + by
            if top <= source <= bottom and source in buffer:
                buffer[y] = buffer.pop(source)
            else:
                buffer.pop(y, None)
        self.dirty.update(range(top, bottom + 1))
        self._clear_rows(range(bottom + 1 - by, bottom + 1) if by > 0 else range(top, top - by))

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        """As xterm: fewer rows drop those below the cursor, then those above it only as
        needed to keep its row on screen; more rows are added blank at the bottom. The
        scrolling margins are reset."""
        lines = lines or self.lines
        columns = columns or self.columns
        if lines == self.lines and columns == self.columns:
            return
        if lines < self.lines:
            shift = max(0, self.cursor.y - (lines - 1))
            kept = {
                y - shift: line for y, line in self.buffer.items() if shift <= y < shift + lines
            }
            self.buffer.clear()
            self.buffer.update(kept)
            self.cursor.y -= shift
            for saved in self.savepoints:
                saved.cursor.y = max(0, min(saved.cursor.y - shift, lines - 1))
        if columns < self.columns:
            for line in self.buffer.values():
                for x in range(columns, self.columns):
                    line.pop(x, None)
        self.lines, self.columns = lines, columns
        self.dirty.update(range(lines))
        self.set_margins()

    def draw(self, data: str) -> None:
        if self.on_draw is not None:
            try:
                self.on_draw(data)
            except Exception as exc:
                raise ListenerError(f"the draw listener failed: {exc!r}") from exc
        text = data.translate(self.g1_charset if self.charset else self.g0_charset)
        if pyte.modes.IRM not in self.mode and (
            (text.isascii() and text.isprintable()) or _all_one_cell(text)
        ):
            self._draw_narrow(text)
        else:
            super().draw(data)

    def _draw_narrow(self, text: str) -> None:
        """pyte's ``draw`` for text whose every character is one cell wide (printable ASCII,
        box drawing, spinners, most letters) without insert mode, the same cells and cursor,
        faster: pyte builds each cell with ``_replace``; here a cell is built once per
        character and attributes, and shared (cells are immutable)."""
        cursor, columns = self.cursor, self.columns
        wrap = pyte.modes.DECAWM in self.mode
        attrs = cursor.attrs
        cells = _CELLS.get(attrs)
        if cells is None:
            if len(_CELLS) >= 512:
                _CELLS.clear()
            cells = _CELLS[attrs] = {}
        x, i, end = cursor.x, 0, len(text)
        while i < end:
            if x >= columns:
                if wrap:
                    self.dirty.add(cursor.y)
                    cursor.x = x
                    self.carriage_return()
                    self.linefeed()
                    x = cursor.x
                else:
                    x = columns - 1  # the last column is written over
            line = self.buffer[cursor.y]
            take = min(end - i, columns - x)
            for char in text[i : i + take]:
                cell = cells.get(char)
                if cell is None:
                    cell = cells[char] = attrs._replace(data=char)
                line[x] = cell
                x += 1
            i += take
        cursor.x = x
        self.dirty.add(cursor.y)

    def report_device_status(self, *args: Any, **kwargs: Any) -> None:
        pass  # answered by TerminalScreen._answer

    def report_device_attributes(self, *args: Any, **kwargs: Any) -> None:
        pass  # answered by TerminalScreen._answer


class TerminalScreen:
    """A ``rows`` x ``cols`` terminal screen. Raises ValueError for a size below 1x1."""

    def __init__(self, rows: int = 24, cols: int = 80) -> None:
        _check_size(rows, cols)
        self._screen = _Screen(cols, rows)
        self._stream = _Stream(self._screen, self._parse_error)
        self._held = ""
        #: Sequences pyte could not handle (skipped), and the last one's error.
        self.parse_errors = 0
        self.last_parse_error = ""

    def _parse_error(self, exc: Exception) -> None:
        self.parse_errors += 1
        self.last_parse_error = f"{type(exc).__name__}: {exc}"

    # -- input

    @property
    def on_draw(self) -> Callable[[str], None] | None:
        """Called with every run of printable text drawn, in order."""
        return self._screen.on_draw

    @on_draw.setter
    def on_draw(self, listener: Callable[[str], None] | None) -> None:
        self._screen.on_draw = listener

    def feed(self, text: str) -> list[str]:
        """Apply program output; return the answers to the queries in it, in order."""
        if self._held:
            text, self._held = self._held + text, ""
        partial = _PARTIAL.search(text)
        if partial is not None:
            text, self._held = text[: partial.start()], text[partial.start() :]
        answers: list[str] = []
        start = 0
        for match in _QUERY.finditer(text):
            if match["gt"] is not None:
                if start < match.start():
                    self._stream.feed(text[start : match.start()])
                start = match.end()
                continue
            self._stream.feed(text[start : match.end()])
            start = match.end()
            answers.append(self._answer(match))
        if start < len(text):
            self._stream.feed(text[start:])
        return answers

    def finish(self) -> None:
        """Apply what was held back: the output has ended, so it is not a query."""
        held, self._held = self._held, ""
        if held:
            self._stream.feed(held)

    @property
    def held(self) -> int:
        """Characters (all ASCII) held back as a possible incomplete query or `CSI >` sequence."""
        return len(self._held)

    def _answer(self, match: re.Match[str]) -> str:
        if (dsr := match["dsr"]) is not None:
            if dsr.endswith("5"):
                return "\x1b[0n"
            row, col = self.cursor
            return (
                f"\x1b[?{row + 1};{col + 1};1R" if dsr[0] == "?" else f"\x1b[{row + 1};{col + 1}R"
            )
        if (da := match["da"]) is not None:
            return SECONDARY_DA if da else PRIMARY_DA
        if (rqm := match["rqm"]) is not None:
            mode = int(rqm)
            if mode == 2004:
                state = 1 if self.bracketed_paste else 2
            else:
                state = 0  # not recognised
            return f"\x1b[?{mode};{state}$y"
        colour = FOREGROUND if match["osc"] == "10" else BACKGROUND
        return f"\x1b]{match['osc']};{colour}{match['st']}"

    def resize(self, rows: int, cols: int) -> None:
        """Raises ValueError for a size below 1x1."""
        _check_size(rows, cols)
        self._screen.resize(rows, cols)

    # -- state

    @property
    def rows(self) -> int:
        return self._screen.lines

    @property
    def cols(self) -> int:
        return self._screen.columns

    @property
    def cursor(self) -> tuple[int, int]:
        """(row, col), 0-based; the column is clamped to the screen."""
        cursor = self._screen.cursor
        return cursor.y, min(cursor.x, self._screen.columns - 1)

    @property
    def title(self) -> str:
        """The window title the program set (OSC 0 or 2), or ""."""
        return self._screen.title

    @property
    def bracketed_paste(self) -> bool:
        """Whether the program enabled bracketed paste (``ESC[?2004h``)."""
        return BRACKETED_PASTE in self._screen.mode

    def lines(self) -> list[str]:
        """The visible rows as text, trailing blanks removed. (Not pyte's ``display``, which
        measures every cell's width again.)"""
        screen = self._screen
        width = screen.columns
        buffer = screen.buffer
        out = []
        for y in range(screen.lines):
            line = buffer[y]
            if not line:
                out.append("")
                continue
            written = len(line)
            if written <= width and list(line) == _COLUMNS[:written]:
                # The row was written from its first column on, left to right (most rows):
                # its cells in order are the text, joined without a Python loop.
                out.append("".join(map(_CELL_TEXT, line.values())).rstrip())
                continue
            # Only the cells written are visited (a cell never written is a blank); a wide
            # character's stub cell holds "": joining skips it. pyte may write outside the
            # row (a wide character at the margin with autowrap off, at x -1): not shown.
            chars = [" "] * width
            for x, char in line.items():
                if 0 <= x < width:
                    chars[x] = char.data
            out.append("".join(chars).rstrip())
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def ansi_text(self) -> str:
        """The visible rows with SGR sequences for colours and attributes; each row that
        changed attributes ends with a reset."""
        screen = self._screen
        out: list[str] = []
        blank = screen.default_char
        plain = _style(blank)
        width = screen.columns
        for y in range(screen.lines):
            line = screen.buffer[y]
            written = len(line)
            if written <= width and list(line) == _COLUMNS[:written]:
                cells = list(line.values())  # written left to right from the first column
            else:
                last = max((x for x, ch in line.items() if ch != blank), default=-1)
                cells = [line[x] for x in range(min(last + 1, width))]
            while cells and cells[-1] == blank:
                cells.pop()
            parts: list[str] = []
            current = plain
            # runs of cells of one style (the stub cells after wide characters left out)
            for style, run in groupby(filter(_CELL_TEXT, cells), _style):
                same = list(run)
                if style != current:
                    parts.append(_sgr(same[0]))
                    current = style
                parts.append("".join(map(_CELL_TEXT, same)))
            if current != plain:
                parts.append("\x1b[0m")
            out.append("".join(parts))
        return "\n".join(out)

    def snapshot(self, ansi: bool = False) -> dict[str, Any]:
        """``{text, rows, cols, cursor: [row, col]}`` (0-based cursor)."""
        row, col = self.cursor
        return {
            "text": self.ansi_text() if ansi else self.text(),
            "rows": self.rows,
            "cols": self.cols,
            "cursor": [row, col],
        }


def _check_size(rows: int, cols: int) -> None:
    if rows < 1 or cols < 1:
        raise ValueError(f"terminal size {rows}x{cols} is below 1x1")


#: A cell's attributes, all but its character: ``_style(cell)`` is ``cell[1:]``.
_style: Callable[[_Char], tuple[Any, ...]] = itemgetter(slice(1, None))


def _colour(value: str, codes: dict[str, int], extended: int) -> str | None:
    if value == "default":
        return None
    if value in codes:
        return str(codes[value])
    if _HEX.match(value):
        r, g, b = (int(value[i : i + 2], 16) for i in (0, 2, 4))
        return f"{extended};2;{r};{g};{b}"
    return None


def _sgr(char: _Char) -> str:
    codes = ["0"]
    for flag, code in (
        (char.bold, "1"),
        (char.dim, "2"),
        (char.italics, "3"),
        (char.underscore, "4"),
        (char.blink, "5"),
        (char.reverse, "7"),
        (char.strikethrough, "9"),
    ):
        if flag:
            codes.append(code)
    for colour in (_colour(char.fg, _FG_CODES, 38), _colour(char.bg, _BG_CODES, 48)):
        if colour is not None:
            codes.append(colour)
    return f"\x1b[{';'.join(codes)}m"


def _copied(cursor: Cursor) -> Cursor:
    """A copy of ``cursor`` (its attributes are an immutable ``Char``), without the copy
    module, which the worker does not otherwise load (:mod:`.process_imports`)."""
    saved = Cursor(cursor.x, cursor.y, cursor.attrs)
    saved.hidden = cursor.hidden
    return saved
