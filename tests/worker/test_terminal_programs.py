"""Real terminal programs under the real PTY worker, each screen compared with tmux's.

tmux is the reference terminal. The same command, in the same clean environment
(``env -i``, a fresh HOME, TERM=xterm-256color), runs under the worker (through a broker)
and in a detached tmux session of the same size, on a tmux server of its own; both get the
same bytes as input. The worker's snapshot must then show what ``tmux capture-pane -p``
shows, row for row (trailing blanks removed), with the cursor in the same place. Where
attributes matter, tmux's ``capture-pane -e`` (text and SGR sequences only) is read into a
screen model of the same size and rendered as the worker renders its ``ansi`` snapshot.

A screen is compared once both have settled on it: every wait polls with a deadline, and
a failure shows both screens. A missing tmux, vim or htop skips the tests that need it,
naming it. Every tmux server is killed at the end of its test, and its programs are gone
before the test ends.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from helpers import pid_alive, wait_until

from trio_relay import Broker, open_broker
from trio_relay.linux.procfs import session_members
from trio_relay.wire import AgentExited, AgentReady
from trio_relay.worker.pty.screen import TerminalScreen

PTY_WORKER = [sys.executable, "-m", "trio_relay.worker.pty"]
ROWS, COLS = 24, 80
TMUX_CONFIG = """\
set -g status off
set -g default-terminal xterm-256color
set -g escape-time 0
set -g exit-empty on
"""


def needs(*programs: str) -> pytest.MarkDecorator:
    """Skip the test, naming what is missing, unless every program is installed. (A mark,
    not pytest.skip inside the test: pytest-trio drops the reason of a skip raised there.)"""
    missing = [name for name in programs if shutil.which(name) is None]
    reason = f"not installed: {', '.join(missing)} (needed to compare with a real terminal)"
    return pytest.mark.skipif(bool(missing), reason=reason)


def clean(home: Path, *command: str) -> list[str]:
    """``command`` in the same environment under the worker and in tmux."""
    return [
        "env",
        "-i",
        f"HOME={home}",
        "TERM=xterm-256color",
        "LANG=C.UTF-8",
        f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}",
        *command,
    ]


@dataclass(frozen=True)
class Screen:
    lines: list[str]
    cursor: tuple[int, int]  # (row, col), 0-based, the column clamped to the screen
    size: tuple[int, int]  # (rows, cols)


def from_capture(captured: str, rows: int, cols: int) -> list[str]:
    """tmux's ``capture-pane -e -N`` output rendered as the worker renders an ``ansi``
    snapshot: read into a screen model of the same size (it holds only text and SGR)."""
    model = TerminalScreen(rows, cols)
    model.feed("\r\n".join(captured.split("\n")[:rows]))
    return model.ansi_text().split("\n")


STYLED = re.compile(r"\x1b\[([0-9;]*)m|(.)")
#: Styles that show nothing on a space but a background colour (or nothing at all).
BACKGROUND_ONLY = re.compile(r"(?:0(?:;(?:4[0-7]|10[0-7]|48;5;\d+|48;2;\d+;\d+;\d+))?)?")


def comparable(row: str) -> str:
    """An ``ansi`` row without its trailing spaces that show at most a background colour.
    ``capture-pane`` leaves out the cells tmux erased, whatever their background (tmux, as
    xterm, erases in the current background colour, as the worker's screen does), so both
    sides drop them."""
    cells: list[tuple[str, str]] = []
    style = "0"
    for match in STYLED.finditer(row):
        if match[2] is None:
            style = match[1] or "0"
        else:
            cells.append((match[2], style))
    while cells and cells[-1][0] == " " and BACKGROUND_ONLY.fullmatch(cells[-1][1]):
        cells.pop()
    out, style = [], "0"
    for char, wanted in cells:
        if wanted != style:
            out.append(f"\x1b[{wanted}m")
            style = wanted
        out.append(char)
    if style != "0":
        out.append("\x1b[0m")
    return "".join(out)


SGR = re.compile(r"\x1b\[[0-9;]*m")


def plain(lines: list[str]) -> list[str]:
    """Rows without their SGR sequences."""
    return [SGR.sub("", line).rstrip() for line in lines]


# ---------------------------------------------------------------- the two terminals


@dataclass
class Agent:
    """A command under the PTY worker, through the broker."""

    broker: Broker
    name: str

    async def screen(self, ansi: bool = False) -> Screen:
        snap = await self.broker.request_worker(self.name, "snapshot", {"ansi": ansi})
        rows = snap["text"].split("\n")
        if ansi:
            rows = [comparable(row) for row in rows]
        return Screen(rows, tuple(snap["cursor"]), (snap["rows"], snap["cols"]))

    async def send(self, data: str) -> None:
        await self.broker.write_input(self.name, data)

    async def resize(self, rows: int, cols: int) -> None:
        await self.broker.resize(self.name, rows, cols)


class Tmux:
    """One detached tmux session, on a server of its own: its socket is in a directory of
    its own (short, for the length limit of a socket path), removed with it."""

    def __init__(self, config: Path) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="trio-relay-tmux-"))
        self.socket = self.directory / "socket"
        self.config = config
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}
        self.pids: list[int] = []  # the server's and the program's

    async def run(self, *args: str, check: bool = True) -> str:
        with trio.fail_after(10):
            result = await trio.run_process(
                ["tmux", "-S", str(self.socket), "-f", str(self.config), *args],
                capture_stdout=True,
                capture_stderr=True,
                env=self.env,
                check=check,
            )
        return result.stdout.decode()

    async def screen(self, ansi: bool = False) -> Screen:
        shape = "#{pane_height} #{pane_width} #{cursor_y} #{cursor_x}"
        rows, cols, y, x = map(int, (await self.run("display", "-p", shape)).split())
        captured = await self.run("capture-pane", "-p", *(["-e", "-N"] if ansi else []))
        if ansi:
            lines = [comparable(row) for row in from_capture(captured, rows, cols)]
        else:
            lines = [line.rstrip() for line in captured.split("\n")[:rows]]
        return Screen(lines, (y, min(x, cols - 1)), (rows, cols))

    async def send(self, data: str) -> None:
        await self.run("send-keys", "-H", *(f"{byte:02x}" for byte in data.encode()))

    async def resize(self, rows: int, cols: int) -> None:
        await self.run("resize-window", "-x", str(cols), "-y", str(rows))


@dataclass
class Pair:
    """The same command under the worker and in tmux; input goes to both."""

    agent: Agent
    tmux: Tmux

    async def send(self, data: str) -> None:
        await self.agent.send(data)
        await self.tmux.send(data)

    async def resize(self, rows: int, cols: int) -> None:
        await self.agent.resize(rows, cols)
        await self.tmux.resize(rows, cols)

    async def same(
        self,
        until: Callable[[list[str]], bool],
        ansi: bool = False,
        cursor: tuple[int, int] | None = None,
        timeout: float = 10,
    ) -> Screen:
        """Wait until the worker's screen satisfies ``until`` (given its rows without
        attributes), with the cursor at ``cursor`` if given, and tmux shows the same
        screen: rows, cursor and size; return it. At the deadline, fail showing where
        they differ."""

        def there(screen: Screen) -> bool:
            return until(plain(screen.lines)) and cursor in (None, screen.cursor)

        ours = theirs = None
        with trio.move_on_after(timeout):
            while True:
                ours, theirs = await self.agent.screen(ansi), await self.tmux.screen(ansi)
                if there(ours) and ours == theirs:
                    return ours
                await trio.sleep(0.02)
        assert ours is not None and theirs is not None
        shown = "\n".join(ours.lines)
        assert there(ours), f"the worker's screen never got there ({ours.cursor}):\n{shown}"
        assert ours.lines == theirs.lines  # pytest shows the rows that differ
        assert (ours.cursor, ours.size) == (theirs.cursor, theirs.size)
        raise AssertionError("unreachable")

    async def both_exit(self, since: int) -> None:
        """Wait for the program to end by itself in both terminals."""
        with trio.fail_after(10):
            await self.agent.broker.events.wait_for(
                lambda e: isinstance(e, AgentExited) and e.agent == self.agent.name, since=since
            )
        await wait_until(lambda: not any(pid_alive(p) for p in self.tmux.pids))


@asynccontextmanager
async def open_tmux(
    tmp_path: Path, command: Sequence[str], rows: int, cols: int
) -> AsyncIterator[Tmux]:
    """``command`` in a new detached tmux session of ``rows`` x ``cols`` (no status line);
    on the way out the server is killed, and it and the program are waited for."""
    config = tmp_path / "tmux.conf"
    config.write_text(TMUX_CONFIG)
    tmux = Tmux(config)
    try:
        size = ("-x", str(cols), "-y", str(rows))
        await tmux.run("new-session", "-d", *size, "-c", str(tmp_path), *command)
        shown = await tmux.run("display", "-p", "#{pid} #{pane_pid}")
        tmux.pids = [int(pid) for pid in shown.split()]
        yield tmux
    finally:
        with trio.CancelScope(shield=True):
            await tmux.run("kill-server", check=False)  # it may have ended with its program
            try:
                await wait_until(lambda: not any(pid_alive(p) for p in tmux.pids), timeout=5)
            finally:
                for pid in tmux.pids:
                    if pid_alive(pid):
                        os.kill(pid, signal.SIGKILL)
                shutil.rmtree(tmux.directory, ignore_errors=True)


@asynccontextmanager
async def open_pair(
    tmp_path: Path, command: Sequence[str], rows: int = ROWS, cols: int = COLS, **options: object
) -> AsyncIterator[Pair]:
    """``command`` under the PTY worker, through a broker (ready once quiet, or at
    ``prompt=``), and in tmux, both ``rows`` x ``cols`` and in ``tmp_path``. Nothing of
    either is left once it returns."""
    flags = [item for k, v in options.items() for item in (f"--{k.replace('_', '-')}", str(v))]
    size = ["--rows", str(rows), "--cols", str(cols)]
    argv = [*PTY_WORKER, *size, "--cwd", str(tmp_path), *flags, "--", *command]
    sid = None
    async with open_broker() as broker:
        since = broker.events.last_seq
        await broker.spawn("prog", argv)
        hello = broker.supervisor.get("prog").hello
        assert hello is not None and hello.program_pid
        sid = hello.program_pid
        with trio.fail_after(10):
            await broker.events.wait_for(
                lambda e: isinstance(e, AgentReady) and e.agent == "prog", since=since
            )
        async with open_tmux(tmp_path, command, rows, cols) as tmux:
            yield Pair(Agent(broker, "prog"), tmux)
    if sid is not None:  # the broker released the agent: nothing of the program is left
        await wait_until(lambda: not session_members(sid), timeout=5)


def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(exist_ok=True)
    return path


def python(tmp_path: Path, name: str, source: str) -> list[str]:
    """The command line of a Python program, written to ``tmp_path``."""
    script = tmp_path / name
    script.write_text(source)
    return [sys.executable, str(script)]


# ---------------------------------------------------------------- vim


NOTES = "alpha\nbeta\ngamma delta\n"


@needs("tmux", "vim")
async def test_vim_screens_match_tmux(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text(NOTES)
    # The worker answers vim's background colour query (black) and tmux does not: say it.
    vim = "vim -u NONE -N -i NONE -n --cmd 'set background=dark' notes.txt"
    script = f"echo before vim; {vim}; echo vim exited $?; read line"
    command = clean(home(tmp_path), "sh", "-c", script)
    async with open_pair(tmp_path, command, prompt="notes.txt") as pair:
        opened = await pair.same(lambda s: s[0] == "alpha" and '"notes.txt" 3L' in s[-1])
        assert opened.lines[:4] == ["alpha", "beta", "gamma delta", "~"]
        await pair.same(lambda s: s[3] == "~", ansi=True)  # the tildes' colour

        await pair.send("ihello wörld 日本\rsecond ")
        typed = await pair.same(lambda s: s[1] == "second alpha" and "-- INSERT --" in s[-1])
        assert typed.lines[0] == "hello wörld 日本"
        assert typed.cursor == (1, 7)
        await pair.same(lambda s: "-- INSERT --" in s[-1], ansi=True)  # bold mode message

        await pair.send("\x1b:set number\r")
        numbered = await pair.same(lambda s: s[0].endswith("1 hello wörld 日本"))
        assert numbered.lines[:3] == ["  1 hello wörld 日本", "  2 second alpha", "  3 beta"]
        await pair.same(lambda s: "  1 " in s[0], ansi=True)  # the line numbers' colour

        await pair.send(":q!\r")  # the screen from before vim comes back
        done = await pair.same(lambda s: "vim exited 0" in s)
        assert done.lines[:2] == ["before vim", "vim exited 0"]
        since = pair.agent.broker.events.last_seq
        await pair.send("\r")
        await pair.both_exit(since)


@needs("tmux", "vim")
async def test_vim_after_a_shrinking_resize_matches_tmux(tmp_path: Path) -> None:
    # vim redraws itself smaller; after it quits the screen from before it comes back,
    # shrunk as it would have been had it shown: the rows near the cursor are kept.
    (tmp_path / "numbers.txt").write_text("".join(f"line {n:02}\n" for n in range(1, 41)))
    vim = "vim -u NONE -N -i NONE -n --cmd 'set background=dark' numbers.txt"
    script = f"seq 1 20; {vim}; echo vim exited $?; read line"
    command = clean(home(tmp_path), "sh", "-c", script)
    async with open_pair(tmp_path, command, prompt="numbers.txt") as pair:
        await pair.same(lambda s: s[0] == "line 01" and "numbers.txt" in s[-1])
        await pair.send("\x05\x05\x05")  # Ctrl-E: the text scrolls up three lines
        await pair.same(lambda s: s[0] == "line 04" and s[22] == "line 26", ansi=True)
        await pair.send("\x19")  # Ctrl-Y: down one
        await pair.same(lambda s: s[0] == "line 03")
        await pair.send("20G")
        await pair.same(lambda s: s[17] == "line 20", cursor=(17, 0))
        await pair.resize(10, 60)
        shrunk = await pair.same(lambda s: len(s) == 10 and s[-1] == "" and "line 20" in s)
        assert shrunk.size == (10, 60) and shrunk.lines[shrunk.cursor[0]] == "line 20"
        await pair.same(lambda s: len(s) == 10, ansi=True)

        await pair.send(":q!\r")
        done = await pair.same(lambda s: "vim exited 0" in s)
        assert done.lines[done.lines.index("vim exited 0") - 1] == "20"
        since = pair.agent.broker.events.last_seq
        await pair.send("\r")
        await pair.both_exit(since)


# ---------------------------------------------------------------- scrolling: CSI S and CSI T

SCROLLS = r"""
import os, sys
rows = os.get_terminal_size().lines
out = [f"line {n}\r\n" for n in range(1, rows)] + [f"line {rows}"]
out[4] = "\x1b[1;31mline 5\x1b[m\r\n"  # attributes move with their row
out += [
    "\x1b[3;8r",  # a scrolling region, rows 3 to 8 (the cursor goes home)
    "\x1b[5;3H",
    "\x1b[2S",  # the region up 2: lines 3 and 4 leave it, two blank rows come in at 7-8
    "\x1b[T",  # down 1 (the default count)
    "X",  # the cursor has not moved: row 5, column 3
    "\x1b[r",  # no region: the whole screen (the cursor home again)
    "\x1b[S\x1b[2T",
    "\x1b[10;11r\x1b[9S",  # more than the region holds: all of it blank
    f"\x1b[r\x1b[{rows};1H\x1b[2Kdone",
]
sys.stdout.write("".join(out))
sys.stdout.flush()
os.read(0, 1)
"""


@needs("tmux")
async def test_csi_s_and_t_in_a_scrolling_region_match_tmux(tmp_path: Path) -> None:
    command = clean(home(tmp_path), *python(tmp_path, "scrolls.py", SCROLLS))
    async with open_pair(tmp_path, command, rows=12, cols=40, prompt="done") as pair:
        screen = await pair.same(lambda s: s[-1] == "done")
        assert screen.lines == [
            *("", "", "line 2", "", "line 5", "liXe 6", "line 7", "line 8"),
            *("", "", "", "done"),
        ]
        await pair.same(lambda s: s[-1] == "done", ansi=True)  # line 5 still red


@needs("tmux", "htop")
async def test_htop_shows_what_tmux_shows_and_no_stray_sequences(tmp_path: Path) -> None:
    # htop (ncurses) redraws its process list as it scrolls. The processes and meters
    # differ between the two terminals; the frame around them does not.
    command = clean(home(tmp_path), "htop", "-t", "-d", "100")
    async with open_pair(tmp_path, command, rows=14, cols=100, prompt="F10Quit") as pair:

        def frame(lines: list[str]) -> list[str]:
            return [lines[-1], *(line for line in lines if re.match(r"\s*PID.USER", line))]

        async def same_frame(bottom: str) -> list[str]:
            """Wait until both show ``bottom`` in the last row and the same frame."""
            with trio.fail_after(10):
                while True:
                    ours, theirs = await pair.agent.screen(), await pair.tmux.screen()
                    if bottom in ours.lines[-1] and frame(ours.lines) == frame(theirs.lines):
                        break
                    await trio.sleep(0.02)
                ours_ansi = await pair.agent.screen(ansi=True)
                theirs_ansi = await pair.tmux.screen(ansi=True)
            assert ours_ansi.lines[-1] == theirs_ansi.lines[-1]  # the function keys' colours
            assert len(frame(ours.lines)) == 2, ours.lines  # the list's header shows
            stray = [line for line in ours.lines if re.search(r"\x1b|\[\d*[ST]\b|\[\?\d", line)]
            assert not stray, ours.lines
            return ours.lines

        await same_frame("F10Quit")
        moves = ["\x1b[B" * 30, "\x1b[6~", "\x1b[5~", "\x1b[A" * 30, "\x1b[F", "\x1b[H"]
        for keys in moves:  # down the list and back: it scrolls
            # "/" opens the search bar: once it shows, htop has drawn what the keys did
            await pair.send(keys + "/")
            await same_frame("Search:")
            await pair.send("\x1b")
            await same_frame("F10Quit")


# ---------------------------------------------------------------- shrinking the terminal

FILL = r"""
import os, sys
rows = os.get_terminal_size().lines
lines = [f"line {n:02}" for n in range(1, rows + 1)]
sys.stdout.write("\r\n".join(lines))
sys.stdout.write(sys.argv[1])  # where the cursor is left
sys.stdout.write("> typed")
sys.stdout.flush()
os.read(0, 1)  # SIGWINCH is ignored: nothing is redrawn
"""


@needs("tmux")
@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("\x1b[22;1H\x1b[K\x1b[J", id="bottom-blank-below"),
        pytest.param("\x1b[24;1H\x1b[K", id="last-row"),
        pytest.param("\x1b[15;1H\x1b[K", id="middle-text-below"),
    ],
)
async def test_a_shrinking_resize_keeps_the_rows_near_the_cursor_as_tmux(
    tmp_path: Path, cursor: str
) -> None:
    command = clean(home(tmp_path), *python(tmp_path, "fill.py", FILL), cursor)
    async with open_pair(tmp_path, command, prompt="> typed") as pair:
        before = await pair.same(lambda s: "> typed" in s)
        await pair.resize(10, 60)
        after = await pair.same(lambda s: len(s) == 10)
        row, col = after.cursor
        assert after.lines[row] == "> typed" and col == 7
        assert before.lines[before.cursor[0] - row : before.cursor[0]] == after.lines[:row]


BOX_TUI = r"""
import os, signal, sys, termios, tty

saved = termios.tcgetattr(0)
tty.setraw(0)
drawn = 0  # rows of the box on screen (the cursor is on its last one)


def box():
    size = os.get_terminal_size()
    width = min(size.columns, 40)
    text = f"> your message ({size.lines}x{size.columns})"
    return [
        "╭" + "─" * (width - 2) + "╮",
        "│ " + text.ljust(width - 4) + " │",
        "╰" + "─" * (width - 2) + "╯",
    ]


def draw(*_):
    # As Ink does: back up to the box's first row, erase down, draw it again.
    global drawn
    out = f"\r\x1b[{drawn - 1}A\x1b[J" if drawn else ""
    lines = box()
    os.write(1, (out + "\r\n".join(lines)).encode())
    drawn = len(lines)


os.write(1, "".join(f"log {n}\r\n" for n in range(1, 31)).encode())  # more than a screen
draw()
signal.signal(signal.SIGWINCH, draw)
while os.read(0, 1) != b"q":
    pass
termios.tcsetattr(0, termios.TCSADRAIN, saved)
"""

FULL_SCREEN_TUI = r"""
import os, signal, sys, termios, tty

saved = termios.tcgetattr(0)
tty.setraw(0)


def draw(*_):
    # In the alternate screen: a title at the top, the box at the bottom, the cursor in
    # the box. Only from the box's new first row down is erased before it is drawn.
    size = os.get_terminal_size()
    width, top = min(size.columns, 40), size.lines - 3
    text = f"> your message ({size.lines}x{size.columns})"
    out = "\x1b[H\x1b[2Kfull-screen tui" + f"\x1b[{top};1H\x1b[J"
    out += "╭" + "─" * (width - 2) + "╮\r\n"
    out += "│ " + text.ljust(width - 4) + " │\r\n"
    out += "╰" + "─" * (width - 2) + "╯\r\n"
    out += "ready" + f"\x1b[{top + 1};17H"
    os.write(1, out.encode())


os.write(1, b"\x1b[?1049h")
draw()
signal.signal(signal.SIGWINCH, draw)
while os.read(0, 1) != b"q":
    pass
os.write(1, b"\x1b[?1049l")
termios.tcsetattr(0, termios.TCSADRAIN, saved)
"""


@needs("tmux")
@pytest.mark.parametrize("tui", ["inline", "full-screen"])
async def test_a_tui_redrawing_after_a_shrink_shows_its_box_once(tmp_path: Path, tui: str) -> None:
    source = BOX_TUI if tui == "inline" else FULL_SCREEN_TUI
    program = shlex.join(python(tmp_path, "tui.py", source))
    script = f"seq 1 30; {program}; echo tui exited $?; read line"
    command = clean(home(tmp_path), "sh", "-c", script)
    async with open_pair(tmp_path, command, prompt="> your message") as pair:
        await pair.same(lambda s: "> your message (24x80)" in "".join(s))
        await pair.resize(10, 60)
        shrunk = await pair.same(lambda s: "> your message (10x60)" in "".join(s))
        assert sum("╭" in line for line in shrunk.lines) == 1, shrunk.lines
        assert sum("╰" in line for line in shrunk.lines) == 1, shrunk.lines
        if tui == "full-screen":
            assert shrunk.lines[0] == "full-screen tui" and shrunk.lines[-1] == "ready"
        await pair.same(lambda s: len(s) == 10, ansi=True)

        await pair.send("q")  # the main screen again, shrunk as it would have been
        done = await pair.same(lambda s: any(line.endswith("tui exited 0") for line in s))
        assert sum("╭" in line for line in done.lines) == (tui == "inline")
        since = pair.agent.broker.events.last_seq
        await pair.send("\r")
        await pair.both_exit(since)
