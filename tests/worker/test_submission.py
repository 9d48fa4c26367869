"""Typing into an agent whose profile knows its input line, in the sans-IO core: a delivery
waits while the agent is starting, busy, in a dialog or holds a draft; it is ``submitted``
only once the agent took it; Enter is pressed once more if the first did not submit, and a
message that will not go is cleared from the input line, never left there."""

from __future__ import annotations

import re

from fake_terminal import Terminal

from trio_relay.profiles.profile import Dialog, Profile, Prompt, Submitted, Typing
from trio_relay.wire import (
    ActivityChanged,
    Deliver,
    DeliveryInjected,
    DeliveryVerified,
    Ready,
    WriteInput,
)

PROFILE = Profile(
    name="tui",
    prompt=Prompt(pattern=r"^> ?(?P<input>.*)$", empty=[r"^Type here$"]),
    busy=[r"working\.\.\."],
    dialogs=[Dialog(name="trust", pattern=r"Trust this folder\?", text="it asks to trust")],
    typing=Typing(enter_delay=0.1, collapsed=r"\[Pasted \d+ chars\]"),
    submitted=Submitted(window=1.0),
)
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"


class FakeTui:
    """An agent CLI in miniature: a transcript, then ``> `` and the input line (``Type
    here`` when empty). Enter submits what was typed (it goes to the transcript and the
    agent works until :meth:`finish`), unless ``swallow`` says how many Enters it takes as
    line breaks. A paste longer than ``collapse`` shows as ``[Pasted N chars]``. With
    ``deaf`` it ignores its input. Ctrl-U empties the input line."""

    def __init__(self, *, swallow: int = 0, collapse: int | None = None) -> None:
        self.swallow, self.collapse = swallow, collapse
        self.deaf = False
        self.dialog = False
        self.busy = False
        self.input = ""
        self.pasted = 0  # characters of the last paste
        self.transcript: list[str] = []
        self.submitted: list[str] = []

    def draw(self) -> bytes:
        if self.dialog:
            return b"\x1b[?2004h\x1b[H\x1b[2JTrust this folder?\r\n> 1. Yes"
        shown = self.input or "Type here"
        if self.collapse is not None and self.pasted > self.collapse:
            shown = f"[Pasted {self.pasted} chars]"
        lines = [*self.transcript[-5:], "working..." if self.busy else "", f"> {shown}"]
        return ("\x1b[?2004h\x1b[H\x1b[2J" + "\r\n".join(lines)).encode()

    def finish(self) -> bytes:
        self.busy = False
        return self.draw()

    def __call__(self, data: bytes) -> bytes:
        if self.deaf:
            return b""
        text = data.decode()
        for part in re.split(r"(\x1b\[20[01]~|\r|\x15)", text):
            if part == PASTE_START:
                self.pasted = 0
            elif part == PASTE_END or not part:
                continue
            elif part == "\x15":
                self.input, self.pasted = "", 0
            elif part == "\r":
                if self.swallow:
                    self.swallow -= 1
                    self.input += " "
                elif self.input:
                    self.submitted.append(self.input)
                    self.transcript.append(f"you: {self.input}")
                    self.input, self.pasted, self.busy = "", 0, True
            else:
                self.input += part
                self.pasted += len(part)
        return self.draw()


def start(tui: FakeTui) -> Terminal:
    terminal = Terminal(program=tui, profile=PROFILE)
    terminal.output(tui.draw())
    terminal.advance(0.3)  # quiet past --settle: the screen is read
    return terminal


def typed(terminal: Terminal) -> bytes:
    return b"".join(data for _, data in terminal.written)


def activities(terminal: Terminal) -> list[ActivityChanged]:
    return terminal.of(ActivityChanged)


def test_ready_only_once_the_prompt_shows_and_never_before_something_was_drawn() -> None:
    tui = FakeTui()
    terminal = Terminal(program=tui, profile=PROFILE)
    terminal.advance(20)  # nothing drawn, however long: still starting
    assert not terminal.of(Ready)
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))
    assert not terminal.written
    (waiting,) = activities(terminal)
    assert waiting.activity == "starting" and "starting" in (waiting.waiting or "")
    terminal.output(tui.draw())
    terminal.advance(0.3)
    assert terminal.of(Ready)
    assert activities(terminal)[-1].activity in ("idle", "busy")  # idle, then the message
    assert tui.submitted == ["Relay message from a [d1]: hello"]


def test_submitted_once_the_text_left_the_input_line_and_the_agent_turned_busy() -> None:
    tui = FakeTui()
    terminal = start(tui)
    assert activities(terminal)[-1].activity == "idle"
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))
    terminal.advance(0.05)
    text = "Relay message from a [d1]: hello"
    assert typed(terminal) == f"{PASTE_START}{text}{PASTE_END}".encode()  # no Enter yet
    assert not terminal.of(DeliveryInjected)
    terminal.advance(0.1)  # the profile's pause between the text showing and Enter
    assert typed(terminal).endswith(b"\r") and tui.submitted == [text]
    terminal.advance(0.1)
    assert terminal.of(DeliveryInjected, delivery_id="d1")
    assert terminal.of(DeliveryVerified) == [DeliveryVerified("d1", "submitted")]


def test_enter_taken_as_a_line_break_is_pressed_once_more() -> None:
    tui = FakeTui(swallow=1)
    terminal = start(tui)
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))
    terminal.advance(0.5)
    assert not terminal.of(DeliveryVerified) and tui.input.endswith("hello ")
    terminal.advance(1.0)  # the profile's window: still in the input line
    assert typed(terminal).count(b"\r") == 2
    assert any("pressing Enter once more" in line for line in terminal.logs)
    (verified,) = terminal.of(DeliveryVerified)
    assert verified.verification == "submitted" and tui.submitted


def test_a_message_that_will_not_submit_is_cleared_and_unverified() -> None:
    tui = FakeTui(swallow=2)
    terminal = start(tui)
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))
    terminal.advance(3)
    (verified,) = terminal.of(DeliveryVerified)
    assert verified.verification == "not_submitted"
    assert "pressed 2 times" in (verified.reason or "") and "cleared" in (verified.reason or "")
    assert typed(terminal).endswith(b"\x15") and tui.input == "" and not tui.submitted


def test_text_that_never_shows_is_not_submitted_and_enter_is_never_pressed() -> None:
    tui = FakeTui()
    terminal = start(tui)
    tui.deaf = True
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))
    terminal.advance(6)  # --verify-timeout
    (verified,) = terminal.of(DeliveryVerified)
    assert verified.verification == "not_submitted"
    assert "did not appear in the input line" in (verified.reason or "")
    assert b"\r" not in typed(terminal) and typed(terminal).endswith(b"\x15")


def test_a_dialog_holds_deliveries_until_a_person_answered_it() -> None:
    tui = FakeTui()
    tui.dialog = True
    terminal = start(tui)
    assert activities(terminal)[-1].activity == "attention"
    assert "it asks to trust" in activities(terminal)[-1].text
    assert not terminal.of(Ready)  # a dialog is not the prompt
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))
    terminal.advance(30)
    assert not terminal.written  # never typed into the dialog
    assert "waits for a person" in (activities(terminal)[-1].waiting or "")
    tui.dialog = False  # a person answered it
    terminal.output(tui.draw())
    terminal.advance(1)
    assert terminal.of(DeliveryVerified) == [DeliveryVerified("d1", "submitted")]


def test_a_persons_draft_holds_deliveries_and_is_never_mixed_with_them() -> None:
    tui = FakeTui()
    terminal = start(tui)
    terminal.send(WriteInput(data="half a thought"))
    terminal.advance(0.3)
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))
    terminal.advance(10)
    assert tui.input == "half a thought" and not tui.submitted
    assert "draft" in (activities(terminal)[-1].waiting or "")
    terminal.send(WriteInput(data="\r"))  # the person sends their draft
    terminal.output(tui.finish())
    terminal.advance(1.5)
    assert tui.submitted == ["half a thought", "Relay message from a [d1]: hello"]
    assert terminal.of(DeliveryVerified) == [DeliveryVerified("d1", "submitted")]


def test_busy_holds_deliveries_unless_the_profile_allows_typing_while_busy() -> None:
    tui = FakeTui()
    tui.busy = True
    terminal = start(tui)
    assert activities(terminal)[-1].activity in ("starting", "busy")
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))
    terminal.advance(5)
    assert not terminal.written
    terminal.output(tui.finish())
    terminal.advance(1)
    assert terminal.of(DeliveryVerified) == [DeliveryVerified("d1", "submitted")]


def test_a_collapsed_paste_counts_as_shown_and_is_submitted() -> None:
    tui = FakeTui(collapse=100)
    terminal = start(tui)
    terminal.send(Deliver(delivery_id="d1", sender="a", body="x" * 300))
    terminal.advance(0.05)
    assert b"\r" not in typed(terminal)
    terminal.advance(1)
    assert typed(terminal).count(b"\r") == 1
    assert terminal.of(DeliveryVerified) == [DeliveryVerified("d1", "submitted")]


def test_keys_a_person_types_meanwhile_wait_until_the_message_is_submitted() -> None:
    tui = FakeTui()
    terminal = start(tui)
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))
    terminal.advance(0.05)  # typed, waiting for its Enter
    terminal.send(WriteInput(data="mine"))
    assert b"mine" not in typed(terminal)
    terminal.advance(0.2)
    assert typed(terminal).endswith(b"\rmine")  # after the message's Enter
    assert tui.submitted == ["Relay message from a [d1]: hello"] and tui.input == "mine"
