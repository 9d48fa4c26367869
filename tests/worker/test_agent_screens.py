"""What the real agent CLIs showed the worker's sans-IO core, in miniature (see
tests/agents/test_real_clis.py for the real ones):

- a dialog can follow another with nothing between (Codex: the sign-in choice, then the
  API-key screen; Gemini CLI: the auth choice, then the key): the second is an activity
  change too, so a person reads what is asked now;
- one press of the clear keys can leave text in the input line (Claude Code's Ctrl-U
  deletes one screen row of a long message, Codex's one line of a multi-line message): the
  worker types them again while text is left, and types no other delivery meanwhile;
- a person's draft must never be mixed with a delivery, even one that arrives a moment
  after the draft was drawn (the activity is read off the screen at most every 50 ms) or
  after their keys reached the terminal but before the program drew them;
- a message taller than the input box shows only its end there, and only its first line
  once taken (Codex scrolls a message of 30 lines, and queues it as "line 0 / … "): that is
  enough to press Enter and to count it submitted.
"""

from __future__ import annotations

import re

from fake_terminal import Terminal

from trio_relay.profiles.profile import Dialog, Profile, Prompt, Submitted, Typing
from trio_relay.wire import ActivityChanged, Deliver, DeliveryVerified, WriteInput

PROFILE = Profile(
    name="tui",
    prompt=Prompt(pattern=r"^> ?(?P<input>.*)$"),
    dialogs=[
        Dialog(name="sign-in", pattern=r"How do you sign in\?", text="it asks how to sign in"),
        Dialog(name="api-key", pattern=r"Your API key:", text="it asks for a key"),
    ],
    typing=Typing(enter_delay=0.05),
    submitted=Submitted(window=1.0),
)


class RowsTui:
    """An input box that never submits (Enter is a line break) and whose Ctrl-U deletes only
    the last row of what was typed (``row`` characters, or back to a line break), or nothing
    if ``stuck``. ``screen``: a dialog to show instead of the box. ``before_paste``: what the
    input line held each time a paste began. ``slow``: it draws nothing when it reads keys
    (the test draws it later)."""

    def __init__(self, row: int = 10) -> None:
        self.row = row
        self.input = ""
        self.screen: str | None = None
        self.stuck = False
        self.before_paste: list[str] = []
        self.slow = False

    def draw(self) -> bytes:
        if self.screen is not None:
            return f"\x1b[?2004h\x1b[H\x1b[2J{self.screen}".encode()
        rows = self.input.split("\n")
        return ("\x1b[?2004h\x1b[H\x1b[2J> " + "\r\n  ".join(rows)).encode()

    def __call__(self, data: bytes) -> bytes:
        for part in re.split(r"(\x1b\[20[01]~|\r|\x15)", data.decode()):
            if part == "\x1b[200~":
                self.before_paste.append(self.input)
            if part in ("\x1b[200~", "\x1b[201~", ""):
                continue
            if part == "\r":
                self.input += "\n"
            elif part == "\x15":
                if not self.stuck:
                    head, _, last = self.input.rpartition("\n")
                    self.input = head if not last else self.input[: -min(len(last), self.row)]
            else:
                self.input += part
        return b"" if self.slow else self.draw()


def start(tui: RowsTui) -> Terminal:
    terminal = Terminal(program=tui, profile=PROFILE)
    terminal.output(tui.draw())
    terminal.advance(0.3)
    return terminal


def test_a_dialog_after_another_is_reported_with_what_it_asks() -> None:
    tui = RowsTui()
    tui.screen = "Welcome\r\nHow do you sign in?\r\n> 1. With an API key"
    terminal = start(tui)
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))
    tui.screen = "Welcome\r\nYour API key: sk-0000"  # it answered the first: the second
    terminal.output(tui.draw())
    terminal.advance(0.3)
    changes = terminal.of(ActivityChanged)
    asked = [c.text for c in changes if c.activity == "attention"]
    assert asked[0].startswith("it asks how to sign in")
    assert asked[-1].startswith("it asks for a key")
    assert "it asks for a key" in (changes[-1].waiting or "")
    assert not tui.input  # never typed into a dialog


def test_the_clear_keys_are_typed_again_until_the_input_line_is_empty() -> None:
    tui = RowsTui(row=10)
    terminal = start(tui)
    terminal.send(Deliver(delivery_id="d1", sender="a", body="x" * 20))  # 47 characters
    terminal.send(Deliver(delivery_id="d2", sender="a", body="second"))
    terminal.advance(1.5)  # Enter twice, each a line break: not submitted, cleared
    (verified,) = terminal.of(DeliveryVerified)
    assert verified.delivery_id == "d1" and verified.verification == "not_submitted"
    assert "being cleared" in (terminal.of(ActivityChanged)[-1].waiting or "")
    assert tui.input  # one press deleted a line break, not the message
    terminal.advance(3)  # a press every 0.3 s: 2 line breaks, 5 pieces of 10
    assert tui.before_paste == ["", ""]  # d2 was typed into an empty line, not the rest
    typed = b"".join(data for _, data in terminal.written)
    assert typed.split(b"[d2]")[0].count(b"\x15") == 7  # pressed while text was left


def test_clearing_stops_after_a_few_tries_and_says_what_is_left() -> None:
    tui = RowsTui()
    terminal = start(tui)
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))
    tui.stuck = True
    terminal.advance(3)
    assert terminal.of(DeliveryVerified)[0].verification == "not_submitted"
    terminal.advance(5)
    typed = b"".join(data for _, data in terminal.written)
    assert typed.count(b"\x15") == 8  # MAX_CLEARS, then it gave up
    assert any("still holds 'Relay message from a [d1]: hello'" in line for line in terminal.logs)
    # What is left is a draft as far as anyone can tell: deliveries wait for a person.
    terminal.send(Deliver(delivery_id="d2", sender="a", body="next"))
    terminal.advance(1)
    assert b"[d2]" not in b"".join(data for _, data in terminal.written)
    assert "draft" in (terminal.of(ActivityChanged)[-1].waiting or "")


def test_a_draft_drawn_a_moment_before_a_delivery_is_not_mixed_with_it() -> None:
    tui = RowsTui()
    terminal = start(tui)
    tui.input = "my own words"  # a draft it drew by itself (say, one it restored)
    terminal.output(tui.draw())
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))  # within 50 ms
    terminal.advance(2)
    assert tui.input == "my own words" and not tui.before_paste
    assert "draft" in (terminal.of(ActivityChanged)[-1].waiting or "")


def test_a_delivery_waits_while_a_persons_keys_are_not_drawn_yet() -> None:
    tui = RowsTui()
    terminal = start(tui)
    tui.slow = True
    terminal.send(WriteInput(data="my own"))  # it has them, but shows nothing yet
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))
    assert "a person is typing" in (terminal.of(ActivityChanged)[-1].waiting or "")
    terminal.advance(0.2)
    assert not tui.before_paste  # not typed meanwhile
    terminal.output(tui.draw())  # now it draws the draft
    terminal.advance(2)
    assert tui.input == "my own" and not tui.before_paste
    assert "draft" in (terminal.of(ActivityChanged)[-1].waiting or "")


class ScrollTui:
    """An input box that shows only the last 8 rows of a message (its "> " row scrolled
    away), and a queue that shows the first line of each message taken, then "…"."""

    def __init__(self) -> None:
        self.input = ""
        self.queued: list[str] = []

    def draw(self) -> bytes:
        rows = [f"queued: {m.split(chr(10))[0]} …" for m in self.queued]
        lines = self.input.split("\n")
        box = [f"> {lines[0]}", *(f"  {line}" for line in lines[1:])]
        rows += box[-8:]
        return ("\x1b[?2004h\x1b[H\x1b[2J" + "\r\n".join(rows)).encode()

    def __call__(self, data: bytes) -> bytes:
        for part in re.split(r"(\x1b\[20[01]~|\r)", data.decode()):
            if part == "\r" and self.input:
                self.queued.append(self.input)
                self.input = ""
            elif part not in ("\x1b[200~", "\x1b[201~", "\r"):
                self.input += part
        return self.draw()


def test_a_message_taller_than_the_input_box_is_submitted() -> None:
    tui = ScrollTui()
    terminal = Terminal(program=tui, profile=PROFILE)
    terminal.output(tui.draw())
    terminal.advance(0.3)
    body = "\n".join(f"line {i} of a long message" for i in range(30))
    terminal.send(Deliver(delivery_id="d1", sender="a", body=body))
    terminal.advance(2)
    assert len(tui.queued) == 1 and tui.queued[0].endswith("line 29 of a long message")
    assert terminal.of(DeliveryVerified) == [DeliveryVerified("d1", "submitted")]
