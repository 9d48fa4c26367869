"""The real agent CLIs (Claude Code, Codex, Gemini CLI at the versions tools/agent_clis.py
pins) under a broker, each with its built-in profile, a fresh HOME and project directory,
dummy keys and no network: what a person sees and what trio-relay reports must agree.

One test per CLI (``test_real_cli[claude]`` ...), so each starts once (4-8 s). In order, each checks that:

- its dialogs (trust, sign-in, API key) show as ``attention`` with what they ask, and a
  message sent right after the spawn waits (its delivery open, the agent's ``waiting``
  naming the dialog) until the test has answered them with the keys a person would press;
- that message then ends ``submitted``, and the screen shows it taken, the input box empty;
- a 600-character message and a unicode one end ``submitted`` too (Gemini CLI shows the
  long one as "[Pasted Text: N chars]": its placeholder path), and so does one of 30 lines,
  taller than the input box, to Claude Code (which collapses it) and Codex (which scrolls);
- a person's draft in the input box holds a delivery ("draft" in ``waiting``), never mixed
  into it; once the person deletes the draft, the delivery goes through;
- the profile's clear keys empty an input box holding a long or multi-line text.

Skipped, saying why, without node and npm or the pinned CLIs (``python3 tools/dev.py run
python tools/agent_clis.py`` installs them). The times measured (spawn to idle, send to
submitted) are printed (``pytest -s``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from real_cli import DOWN, ENTER, UP, CliSession, clean_environment, run_cli, skip_unless_installed

from trio_relay.profiles.catalog import Catalog
from trio_relay.worker.pty.activity import classify, input_line
from trio_relay.worker.pty.echo import format_message, normalize

LONG = ("A long message, to check that six hundred characters are submitted whole. " * 9)[:600]
UNICODE = "unicode: héllo wörld ✓ naïve café — 日本語のテキスト 🎉"
TALL = "\n".join(f"line {i} of a message taller than the input box" for i in range(30))
DRAFT = "a draft of my own"


@dataclass(frozen=True)
class Dialog:
    """One of a CLI's dialogs (by its profile's name), and the keys that answer it."""

    name: str
    keys: str


@dataclass(frozen=True)
class Cli:
    name: str
    dialogs: tuple[Dialog, ...]
    #: Raw output that shows it reads keys (before it, keys typed into its dialog are lost).
    reads_keys: str | None = None
    #: What a person would paste to fill its input box without it collapsing the paste.
    filler: str = LONG
    #: Send a message of 30 lines too (Gemini CLI collapses it, as the long one; and it
    #: shows three queued messages, then "... (+1 more)": a fourth queued one, hidden, would
    #: end ``echo``, not ``submitted``).
    tall: bool = True


CLAUDE = Cli(
    "claude",
    # "No, exit" is selected first: Down, Enter in one write trusts the folder; "No" is
    # selected on the API-key question: Up, Enter.
    (Dialog("trust", DOWN + ENTER), Dialog("api-key", UP + ENTER)),
    reads_keys=r"\x1b\[\?2004h",  # it turned bracketed paste on
    filler=LONG + " and more" * 10,  # one line of 690 characters: 6 screen rows
)
CODEX = Cli(
    "codex",
    (Dialog("sign-in", "3"), Dialog("sign-in-other", ENTER), Dialog("api-key", ENTER)),
    filler=f"{LONG}\nsecond line\nthird line",
)
GEMINI = Cli(
    "gemini",
    (Dialog("trust", ENTER), Dialog("auth", ENTER), Dialog("api-key", ENTER)),
    filler="first line\nsecond line\nthird line\n" + "fourth line " * 20,  # 4 lines, 273 chars
    tall=False,
)


def input_text(session: CliSession, screen: str) -> str | None:
    """What the input box holds on ``screen`` (per the profile); None if it is not there."""
    line = input_line(Catalog().get(session.name), screen.split("\n"), 0)
    return line.text if line.found else None


async def input_holds(session: CliSession, text: str, what: str, timeout: float = 5) -> None:
    """Wait until the input box holds ``text`` (a redraw may be under way)."""
    screen = session.last_text
    with trio.move_on_after(timeout):
        while input_text(session, screen := await session.screen()) != text:
            await trio.sleep(0.05)
        return
    raise AssertionError(f"{session.name}: not {what} within {timeout:g} s:\n{screen}")


def shows(screen: str, text: str) -> bool:
    """``text`` (its start, compared as the worker compares an echo) is on ``screen``."""
    return normalize(text)[:60] in normalize(screen)


async def answer_dialogs(session: CliSession, cli: Cli, first_delivery: str) -> None:
    """Each dialog shows as attention with what it asks, the delivery waits naming it; then
    the keys a person would press."""
    profile = Catalog().get(cli.name)
    dialogs = {d.name: d for d in profile.dialogs}
    if cli.reads_keys:
        await session.wait_event(
            lambda e: bool(re.search(cli.reads_keys, getattr(e, "data", ""))),
            20,
            f"{cli.reads_keys!r} in its output",
        )
    for step, dialog in enumerate(cli.dialogs):
        asked = dialogs[dialog.name]
        await session.wait_screen(asked.pattern, 30, f"the {dialog.name} dialog")
        with trio.move_on_after(10):  # the screen may show the one before for a moment
            while True:
                shown = await session.screen()
                lines = shown.split("\n")
                verdict = classify(
                    profile, lines, 0, "", quiet=True, reading=False, was_idle=False, settle=1
                )
                if (verdict.activity, verdict.dialog) == ("attention", dialog.name):
                    break
                await trio.sleep(0.05)
        assert verdict.dialog == dialog.name, f"{verdict} on the screen:\n{shown}"
        if step == 0:  # the first one is an agent_activity event
            event = await session.activity("attention", text=re.escape(asked.text))
            assert event.from_ == "starting"
        waiting = await session.waiting(re.escape(asked.text))
        assert waiting.startswith("the agent waits for a person")
        assert session.agent().activity == "attention"
        record = await session.broker.delivery(first_delivery)
        assert not record.terminal, f"delivered into the {dialog.name} dialog: {record}"
        later = [dialogs[d.name].pattern for d in cli.dialogs[step + 1 :]]
        until = "|".join([*later, profile.prompt.pattern if profile.prompt else r"\S"])
        await session.answer(dialog.keys, until, asked.pattern, timeout=30)


async def submitted(session: CliSession, delivery_id: str, sent: float, what: str) -> str:
    """The delivery ended verified by ``submitted``; the screen shows it taken and the input
    box empty. The screen."""
    record = await session.delivered(delivery_id, timeout=40)
    took = time.monotonic() - sent
    assert (record.state, record.verification) == ("verified", "submitted"), record
    session.times[f"send -> submitted ({what})"] = took
    text = format_message("tester", delivery_id, record.body, multiline=True)
    screen = session.last_text
    with trio.move_on_after(10):  # a redraw may be under way
        while True:
            screen = await session.screen()
            if shows(screen, text) and input_text(session, screen) == "":
                return screen
            await trio.sleep(0.05)
    raise AssertionError(f"{what}: not shown taken, the input box empty:\n{screen}")


async def check_cli(cli: Cli, binary: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean_environment(monkeypatch)
    async with run_cli(cli.name, binary) as session:
        first, sent = await session.send("first message, sent right after the spawn")
        await answer_dialogs(session, cli, first)
        idle = await session.activity("idle", timeout=30)
        session.times["spawn -> idle"] = idle.time - session.spawned_at
        screen = await submitted(session, first, sent, "first, sent at spawn")

        # Long and unicode messages.
        since = session.broker.events.last_seq
        long_id, sent = await session.send(LONG)
        await submitted(session, long_id, sent, "600 characters")
        if cli.name == "gemini":  # it showed the placeholder, not the text, in its input box
            raw = "".join(getattr(e, "data", "") for e in session.broker.events.since(since))
            assert re.search(r"\[Pasted Text: \d+ chars\]", raw), raw[-2000:]
        if cli.tall:  # it shows a message of 30 lines in its input box, scrolled
            tall_id, sent = await session.send(TALL)
            await submitted(session, tall_id, sent, "30 lines")
        unicode_id, sent = await session.send(UNICODE)
        screen = await submitted(session, unicode_id, sent, "unicode")
        assert "日本語のテキスト" in screen and "naïve café" in screen

        # A person's draft holds a delivery, and is never mixed with it.
        await session.keys(DRAFT)
        await session.wait_screen(re.escape(DRAFT), 10, "the draft")
        draft_id, sent = await session.send("after the draft")
        waiting = await session.waiting("draft")
        assert DRAFT in waiting
        await input_holds(session, DRAFT, "the draft alone: nothing typed into it")
        assert not (await session.broker.delivery(draft_id)).terminal
        await session.keys("\x15")  # the person deletes the draft (Ctrl-U)
        screen = await submitted(session, draft_id, sent, "after a draft")
        assert DRAFT not in screen

        # The profile's clear keys empty a full input box.
        await session.keys(f"\x1b[200~{cli.filler}\x1b[201~")
        end = cli.filler.split()[-1]
        await session.wait_screen(re.escape(end) + r"\s*$", 10, "the filler in the input box")
        assert input_text(session, await session.screen())
        await session.keys(Catalog().get(cli.name).typing.clear)
        await input_holds(session, "", "the input box emptied by the clear keys")

        # Every message went in with one Enter: the profile's pause before it is right.
        retried = [line for line in session.broker.logs(cli.name) if "Enter once more" in line]
        assert not retried, retried
    print(f"\n{cli.name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in session.times.items()))


@pytest.fixture
def binary(cli: Cli) -> Path:
    """The CLI's binary; skips (naming what is missing and the command that installs it)
    unless node, npm and the CLI are there: before the test's Trio run, so the reason is
    reported."""
    return skip_unless_installed(cli.name)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cli", [CLAUDE, CODEX, GEMINI], ids=lambda cli: cli.name)
async def test_real_cli(cli: Cli, binary: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await check_cli(cli, binary, monkeypatch)
