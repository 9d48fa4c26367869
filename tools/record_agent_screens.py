#!/usr/bin/env python3
"""Record real agent CLIs' screens, stage by stage, as test fixtures.

    python3 tools/dev.py run python tools/agent_clis.py             install the pinned CLIs
    python3 tools/dev.py run python tools/record_agent_screens.py   record all of them
    python3 tools/dev.py run python tools/record_agent_screens.py codex --out DIR

Each CLI runs under the PTY worker (``python -m trio_relay.worker.pty --rows 40 --cols 120``)
through an in-process broker, with a fresh HOME and project directory (temporary), dummy
API keys, the model's base URL pointed at a closed local port and, where ``unshare -n`` works,
no network at all: the model call fails visibly, which is a stage too. The script answers
each dialog with the keys a person would press, waiting for screen conditions (a regular
expression, 30 s at most), never for fixed times (except the pause between a paste and its
Enter), and writes ``tests/agents/screens/<cli>-<stage>.txt``: a header line (CLI, version,
size, how the stage was reached), then the screen's 40 rows as plain text.

Printed at the end, per CLI: the stages recorded, the ones missed (with the screen that was
there instead), times from spawn to first draw and to the idle prompt, and what the raw
output stream held that a screen does not show (window titles, keyboard-protocol queries).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import agent_clis

from trio_relay import open_broker
from trio_relay.wire.events import AgentOutput

ROWS, COLS = 40, 120
OUT = ROOT / "tests" / "agents" / "screens"
WAIT = 30.0
PASTE_PAUSE = 0.3
#: 600 characters, no newline, easy to spot on screen.
LONG = ("This is a long pasted message for the recorder. " * 13)[:600]
DRAFT = "hello from the recorder"
MESSAGE = "say hi"
#: Nothing listens here: a model call fails at once instead of reaching a real endpoint.
DEAD = "http://127.0.0.1:9"

#: Arrows as SS3 (application cursor keys): Claude Code ignores ESC [ B here.
ENTER, ESC, DOWN, UP = "\r", "\x1b", "\x1bOB", "\x1bOA"


class StageMissed(Exception):
    def __init__(self, pattern: str, text: str) -> None:
        super().__init__(f"no match for {pattern!r} within {WAIT:.0f} s")
        self.text = text


@dataclass
class Session:
    broker: object
    cli: agent_clis.Cli
    out: Path
    t0: float
    name: str
    raw: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)
    missed: list[tuple[str, str, str]] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)
    last: str = ""

    async def screen(self) -> str:
        snap = await self.broker.request_worker(self.name, "snapshot", {}, timeout=5)
        assert (snap["rows"], snap["cols"]) == (ROWS, COLS), snap
        self.last = snap["text"]
        return self.last

    async def wait(self, pattern: str, *, timeout: float = WAIT, flags: int = re.S) -> str:
        """Poll snapshots until ``pattern`` matches the screen; the screen."""
        regex = re.compile(pattern, flags)
        with trio.move_on_after(timeout):
            while True:
                text = await self.screen()
                if regex.search(text):
                    return text
                await trio.sleep(0.1)
        raise StageMissed(pattern, self.last)

    async def keys(self, data: str) -> None:
        await self.broker.write_input(self.name, data)

    async def press(self, data: str, until: str, *, timeout: float = WAIT) -> str:
        """Type ``data``, then wait for ``until``; type it again whenever the screen is still
        the one it was typed on 2 s later (a CLI may draw a dialog before it reads keys)."""
        regex = re.compile(until, re.S)
        before = await self.screen()
        with trio.move_on_after(timeout):
            while True:
                await self.keys(data)
                with trio.move_on_after(2):
                    while True:
                        text = await self.screen()
                        if regex.search(text):
                            return text
                        await trio.sleep(0.1)
                if self.last != before:  # it changed, just not to ``until``: wait on
                    return await self.wait(until, timeout=timeout)
        raise StageMissed(until, self.last)

    async def wait_raw(self, pattern: str, *, timeout: float = WAIT) -> None:
        """Wait until the raw output stream (escape sequences and all) matches ``pattern``."""
        regex = re.compile(pattern)
        with trio.move_on_after(timeout):
            while not regex.search("".join(self.raw)):
                await trio.sleep(0.1)
            return
        raise StageMissed(f"raw {pattern}", self.last)

    async def paste(self, text: str) -> None:
        await self.keys(f"\x1b[200~{text}\x1b[201~")

    def mark(self, what: str) -> None:
        self.times.setdefault(what, time.monotonic() - self.t0)

    async def record(self, stage: str, how: str, text: str | None = None) -> None:
        text = await self.screen() if text is None else text
        lines = text.split("\n")
        assert len(lines) == ROWS, len(lines)
        header = (
            f"# {self.cli.name} {self.cli.package}@{self.cli.version} {ROWS}x{COLS} "
            f"stage={stage}: {how}"
        )
        path = self.out / f"{self.cli.name}-{stage}.txt"
        path.write_text(header + "\n" + "\n".join(line.rstrip() for line in lines) + "\n")
        self.recorded.append(stage)
        print(f"  recorded {path.name}", file=sys.stderr)

    async def stage(self, stage: str, how: str, pattern: str, **kwargs) -> str:
        """Wait for ``pattern``, then record ``stage``; StageMissed (ending the flow) if it
        never came."""
        try:
            text = await self.wait(pattern, **kwargs)
        except StageMissed as exc:
            raise StageMissed(f"{stage}: {pattern}", exc.text) from None
        await self.record(stage, how, text)
        return text

    async def optional(self, pattern: str, timeout: float) -> bool:
        """Whether ``pattern`` appears within ``timeout`` (for screens that may not come)."""
        try:
            await self.wait(pattern, timeout=timeout)
        except StageMissed:
            return False
        return True


def quiet_stable(session: Session) -> Callable[[], Awaitable[str]]:
    """A screen that stopped changing (two equal snapshots 300 ms apart)."""

    async def wait() -> str:
        previous = None
        with trio.move_on_after(WAIT):
            while True:
                text = await session.screen()
                if text == previous and text.strip():
                    return text
                previous = text
                await trio.sleep(0.3)
        return session.last

    return wait


@dataclass(frozen=True)
class Screens:
    """What tells a CLI's stages apart once its input box is up (regexes over the screen)."""

    idle: str
    busy: str
    error: str
    placeholder: str


SCREENS = {
    "claude": Screens(
        idle=r"─\n❯ *\n─",
        busy=r"(?i)esc to interrupt|thinking|…",
        error=r"(?i)error|unable to connect|fetch failed|connection|retry",
        placeholder=r"\[Pasted text",
    ),
    "codex": Screens(
        idle=r"(?m)^\s*›",
        busy=r"(?i)esc to interrupt|working|thinking",
        error=r"(?i)error|stream disconnected|reconnect|failed",
        placeholder=r"\[Pasted",
    ),
    "gemini": Screens(
        idle=r"(?i)type your message",
        busy=r"(?i)esc to cancel|thinking|…",
        error=r"(?i)error|failed|fetch",
        placeholder=r"\[Pasted",
    ),
}


async def common_tail(s: Session, screens: Screens) -> None:
    """The stages every CLI shares once its input box is up: idle, draft, paste, busy, error."""
    await s.stage("idle", "the input box, nothing typed", screens.idle)
    s.mark("idle prompt")
    await s.keys(DRAFT)
    await s.stage("draft", f"typed {DRAFT!r}, no Enter", re.escape(DRAFT))
    # Clear the draft (Ctrl-U; Ctrl-A Ctrl-K as a fallback) before pasting.
    await s.keys("\x15")
    if not await s.optional(f"^(?!.*{re.escape(DRAFT)})", timeout=3):
        await s.keys("\x01\x0b")
    await s.paste(LONG)
    # The placeholder, or (if this CLI does not collapse a paste this long) the text itself.
    shown = f"{screens.placeholder}|(?s:{re.escape(LONG[-30:])})"
    await s.stage("paste", f"bracketed paste of {len(LONG)} characters, no Enter", shown)
    await trio.sleep(PASTE_PAUSE)
    await s.keys(ENTER)
    await s.stage("busy-paste", "Enter right after the paste", screens.busy, timeout=10)
    await s.stage("error-paste", "the failed model call after the paste", screens.error)
    await s.wait(screens.idle, timeout=10)
    await s.keys(MESSAGE)
    await s.wait(re.escape(MESSAGE))
    await trio.sleep(0.1)
    await s.keys(ENTER)
    await s.stage(
        "busy", f"Enter on {MESSAGE!r}: the model call under way", screens.busy, timeout=10
    )
    await s.stage("error", "the model call failed (no network, dummy key)", screens.error)


async def claude(s: Session) -> None:
    await s.stage("first-draw", "spawned with a seeded ~/.claude.json", r"\S")
    s.mark("first draw")
    await s.stage("trust", "the folder-trust dialog", r"(?i)trust this folder.*Enter to confirm")
    # "No, exit" is selected; Down goes to "Yes, I trust this folder". Keys typed in the
    # first second or so are lost, hence press (which types again if nothing changed).
    await s.wait_raw(r"\x1b\[\?2004h")  # it reads keys once it turned bracketed paste on
    # Down and Enter in one write: sent apart, the selection went back to "No, exit".
    await s.press(DOWN + ENTER, r"(?i)use this api key.*enter to confirm")
    await s.record("api-key", "Down+Enter on trust: the API-key confirmation")
    # "No (recommended)" is selected; Up+Enter takes "Yes".
    await s.press(UP + ENTER, r"^(?!.*use this api key)")
    await common_tail(s, SCREENS["claude"])


async def codex(s: Session) -> None:
    await s.stage("first-draw", "spawned, no ~/.codex", r"\S")
    s.mark("first draw")
    await s.stage("sign-in", "the sign-in choice", r"(?i)sign in")
    # 3 ("Provide your own API key") opens "Sign in another way"; 1. Use an OpenAI API key
    # is selected there.
    await s.press("3", r"(?i)sign in another way")
    await s.record("sign-in-other", "pressed 3 on the sign-in choice")
    await s.press(ENTER, r"(?i)press enter to save")
    await s.record("api-key", "3, then Enter on Use an OpenAI API key (the key is prefilled)")
    await s.press(ENTER, r"(?i)^(?!.*press enter to save)")
    if await s.optional(r"(?i)warning|trust|continue", timeout=5):
        await s.record("warning", "Enter on the API-key screen")
        await s.press(ENTER, r"(?m)^\s*›")
    await common_tail(s, SCREENS["codex"])


async def gemini(s: Session) -> None:
    await s.stage("first-draw", "spawned, no ~/.gemini", r"\S")
    s.mark("first draw")
    await s.stage("trust", "the folder-trust dialog", r"(?i)trust")
    await s.keys(ENTER)
    await s.stage(
        "auth", "Enter on trust; it restarted itself; the auth choice", r"Use Enter to select"
    )
    await s.press(ENTER, r"(?i)^(?!.*use enter to select)")  # "2. Use Gemini API Key" is selected
    if await s.optional(r"(?i)api key", timeout=5):
        await s.record("key", "Enter on the auth choice")
        await s.press(ENTER, r"(?i)type your message")
    await common_tail(s, SCREENS["gemini"])


FLOWS = {"claude": claude, "codex": codex, "gemini": gemini}


def seed(name: str, home: Path, project: Path) -> dict[str, str]:
    """Files and variables for ``name``'s fresh HOME; the seeded files are noted in NOTES.md."""
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "PATH": f"{Path(shutil.which('node') or 'node').parent}:/usr/bin:/bin",
        "NO_UPDATE_NOTIFIER": "1",
    }
    if name == "claude":
        (home / ".claude.json").write_text(json.dumps({"hasCompletedOnboarding": True}))
        env |= {
            "ANTHROPIC_API_KEY": "sk-ant-dummy-0000000000000000000000000000",
            "ANTHROPIC_BASE_URL": DEAD,
            "DISABLE_AUTOUPDATER": "1",
        }
    elif name == "codex":
        env |= {"OPENAI_API_KEY": "sk-dummy-0000000000000000000000000000", "OPENAI_BASE_URL": DEAD}
    elif name == "gemini":
        env |= {
            "GEMINI_API_KEY": "dummy-0000000000000000000000000000",
            "GOOGLE_GEMINI_BASE_URL": DEAD,
        }
    return env


#: The variables of the tester's own environment that change what a CLI does: its keys,
#: base URLs and config directories, and ``CI``/``GITHUB_ACTIONS`` (Gemini CLI runs
#: headless under ``CI=true``, and exits 41 at its sign-in dialog).
OWN_VARIABLES = re.compile(
    r"(ANTHROPIC|CLAUDE|OPENAI|CODEX|GEMINI|GOOGLE|XDG|NODE)_|(CI|GITHUB_ACTIONS)$"
)


def own_variables(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """The names in ``environ`` that :data:`OWN_VARIABLES` matches."""
    return [name for name in environ if OWN_VARIABLES.match(name)]


def argv_of(name: str, binary: Path) -> list[str]:
    args = {"codex": ["--disable", "daemon_auto_start"]}.get(name, [])
    return [str(binary), *args]


def no_network_prefix() -> list[str]:
    """``unshare -n`` if it works here (a process with no network), else nothing."""
    try:
        ok = subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        ok = False
    return ["unshare", "-rn", "--"] if ok else []


SIGNS = {
    "window title (OSC 0/2)": re.compile(r"\x1b\][02];[^\x07\x1b]*"),
    "kitty keyboard query/push (CSI ? u, CSI > n u)": re.compile(r"\x1b\[[?>=<][0-9;]*u"),
    "bracketed paste on (CSI ? 2004 h)": re.compile(r"\x1b\[\?2004h"),
    "alternate screen (CSI ? 1049 h)": re.compile(r"\x1b\[\?1049h"),
    "focus events (CSI ? 1004 h)": re.compile(r"\x1b\[\?1004h"),
    "synchronized output (CSI ? 2026 h)": re.compile(r"\x1b\[\?2026h"),
    "modifyOtherKeys (CSI > 4 ; n m)": re.compile(r"\x1b\[>4;?[0-9]*m"),
    "cursor position query (CSI 6 n)": re.compile(r"\x1b\[6n"),
}


async def record_one(name: str, binary: Path, out: Path, prefix: list[str]) -> dict:
    cli = next(c for c in agent_clis.CLIS if c.name == name)
    print(f"{name}: {binary}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=f"agent-{name}-") as tmp:
        home, project = Path(tmp) / "home", Path(tmp) / "project"
        home.mkdir()
        project.mkdir()
        env = seed(name, home, project)
        argv = [
            *(sys.executable, "-m", "trio_relay.worker.pty"),
            *("--rows", str(ROWS), "--cols", str(COLS), "--cwd", str(project), "--"),
            *prefix,
            *argv_of(name, binary),
        ]
        async with open_broker() as broker:
            session = Session(broker, cli, out, time.monotonic(), name)

            async def collect() -> None:
                async for event in broker.events.subscribe(0):
                    if isinstance(event, AgentOutput) and event.agent == name:
                        session.raw.append(event.data)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)
                await broker.spawn(name, argv, env=env, cwd=str(project))
                try:
                    await FLOWS[name](session)
                except StageMissed as exc:
                    session.missed.append(("(flow)", str(exc), exc.text))
                finally:
                    with trio.move_on_after(10):
                        await broker.release(name)
                    nursery.cancel_scope.cancel()
    raw = "".join(session.raw)
    signs = {}
    for label, regex in SIGNS.items():
        found = sorted(set(regex.findall(raw)))
        if found:
            signs[label] = [f.replace("\x1b", "ESC").replace("\x07", "BEL") for f in found[:4]]
    return {
        "version": cli.version,
        "recorded": session.recorded,
        "missed": [(stage, why, text) for stage, why, text in session.missed],
        "times": {k: round(v, 2) for k, v in session.times.items()},
        "signs": signs,
    }


async def main_async(names: list[str], out: Path, paths: dict[str, Path]) -> dict:
    prefix = no_network_prefix()
    if not prefix:
        print("unshare -n does not work here: relying on the dead base URLs", file=sys.stderr)
    for var in own_variables(os.environ):
        del os.environ[var]
    results = {}
    for name in names:
        results[name] = await record_one(name, paths[name], out, prefix)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("clis", nargs="*", help="claude, codex, gemini (default: all)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the fixtures go")
    parser.add_argument("--dir", type=Path, default=agent_clis.DEFAULT_DIR, help="CLI cache")
    args = parser.parse_args()
    if unknown := set(args.clis) - set(FLOWS):
        parser.error(f"unknown CLI(s): {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    paths = agent_clis.ensure(args.dir.resolve(), quiet=True)
    results = trio.run(main_async, args.clis or list(FLOWS), args.out, paths)
    for name, result in results.items():
        print(f"== {name} {result['version']}")
        print(f"recorded: {', '.join(result['recorded']) or '-'}")
        print(f"times (s from spawn): {result['times']}")
        for label, found in result["signs"].items():
            print(f"raw output: {label}: {found}")
        for stage, why, text in result["missed"]:
            print(f"missed {stage}: {why}; the screen was:")
            print("\n".join(f"    |{line}" for line in text.rstrip().split("\n")))


if __name__ == "__main__":
    main()
