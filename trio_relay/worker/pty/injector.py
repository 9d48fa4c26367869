"""Typing deliveries into the terminal, one at a time, and verifying them.

:class:`Injector` takes ``deliver`` frames, books them (:mod:`.book`), and once the host
allows it (ready, the activity right, no draft in the input line) and the throttle
(:mod:`.throttle`) is open, types the next one: the text of :func:`.echo.format_message` in
chunks of ``chunk`` characters (never cut inside a character) ``key_delay`` apart, in a
bracketed paste if the program enabled one and the profile pastes. Then:

- with a profile that knows the program's input line (a prompt): it waits until the text
  (or the profile's collapsed-paste placeholder) shows, presses Enter ``enter_delay`` later
  and reports ``delivery_injected``; ``submitted`` once the text left the input line and the
  agent turned busy or shows the message (``echo`` if it only left the input line). Still in
  the input line after the profile's window, Enter is pressed once more; still there after
  another window, or never shown before Enter, the line is cleared with the profile's keys
  and it ends ``not_submitted``;
- without (the generic profile): Enter after ``enter_delay``, ``delivery_injected``, then
  ``echo`` as soon as the text is seen on screen, or ``timeout_fallback`` after
  ``verify_timeout``.

``delivery_failed``: the terminal refused the bytes, or took none of them for
``verify_timeout`` (the rest is dropped, the paste closed and the line cleared; the Enter is
never typed). Keys the user writes meanwhile wait until the message is submitted.

Sans-IO: it is told the time, queues bytes on the :class:`.input_queue.InputQueue`, arms the
``throttle``, ``key``, ``typing``, ``enter`` and ``verify`` deadlines and puts frames in the
outbox.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

from trio_relay.wire import Deliver, DeliveryFailed, DeliveryInjected, DeliveryVerified
from trio_relay.wire.vocabulary import VERIFIED_LEVELS
from trio_relay.worker.pty.activity import InputLine
from trio_relay.worker.pty.book import Delivery, DeliveryBook, Settled
from trio_relay.worker.pty.deadlines import Deadlines
from trio_relay.worker.pty.echo import EchoMatcher, format_message, normalize
from trio_relay.worker.pty.input_queue import Done, InputQueue
from trio_relay.worker.pty.options import Options
from trio_relay.worker.pty.outbox import Outbox
from trio_relay.worker.pty.screen import TerminalScreen
from trio_relay.worker.pty.throttle import InjectionThrottle, Outcome

BRACKETED_PASTE = ("\x1b[200~", "\x1b[201~")
_OUTCOMES = {
    "submitted": Outcome.SUCCESS,
    "echo": Outcome.SUCCESS,
    "timeout_fallback": Outcome.UNVERIFIED,
    "not_submitted": Outcome.UNVERIFIED,
}
ENTER = b"\r"
MAX_ENTERS = 2  # Enter is pressed once more if the first did not submit
#: The clear keys are typed again while the input line still holds text this long after
#: them, this many times in all (Claude Code's Ctrl-U empties one screen row, Codex's and
#: Gemini CLI's one line of a multi-line message).
CLEAR_CHECK = 0.3
MAX_CLEARS = 8
#: A delivery waits this long after a person's keys reached the terminal: the program may
#: not have drawn them yet, and a message typed now would be mixed with their draft.
PERSON_TYPING = 0.5
#: A message taller than the input box shows only its end there (Codex scrolls a message of
#: 30 lines): its last this many characters (as compared) on screen count as shown.
TAIL = 120


if TYPE_CHECKING:  # a Protocol class is only for the type checker (RSS matters here)

    class Host(Protocol):
        """What the injector needs to know of the worker around it."""

        def may_inject(self) -> bool:
            """Ready, running, not stopping, the terminal open."""

        def program_gone(self) -> bool:
            """The program exited or closed the terminal: its exit decides what is in
            flight."""

        def after_settle(self, now: float) -> None:
            """A delivery settled (the idle timer starts again)."""

        def waiting_changed(self) -> None:
            """Why deliveries wait may have changed: report it if it did."""

        def input_line(self) -> InputLine:
            """The program's input line on screen now (per its profile)."""


class Injector:
    """The deliveries of one worker, and the one being typed or verified."""

    def __init__(
        self,
        opts: Options,
        screen: TerminalScreen,
        keys: InputQueue,
        deadlines: Deadlines,
        outbox: Outbox,
        host: Host,
    ) -> None:
        self.opts, self.screen, self.keys = opts, screen, keys
        self.deadlines, self.outbox, self.host = deadlines, outbox, host
        self.profile = opts.agent_profile
        self.collapsed = self.profile.compiled.collapsed
        #: The program's input line is known: Enter only once the text shows in it.
        self.knows_input = self.profile.prompt is not None
        self.enter_delay = opts.pause_before_enter
        self.enters = 0  # Enters pressed for the delivery in flight
        self.saw_busy = False  # the agent turned busy after the first Enter
        self.book = DeliveryBook(opts.mode)
        self.throttle = InjectionThrottle()
        self.matcher: EchoMatcher | None = None
        self.typing: deque[tuple[float, bytes]] = deque()  # (pause before, bytes) to type
        self.typed_bytes = 0
        self.typing_bytes = 0
        self.paste_open = False
        self.user_held: list[tuple[bytes, Done]] = []  # written once the message is typed
        self.clears = 0  # rounds of clear keys typed for the input line (0: not clearing)
        self.clearing_tail = ""  # the end of the message being cleared (as compared)
        self.person_typing = False  # a person's keys reached the terminal just now

    @property
    def typing_now(self) -> bool:
        """A message is being typed or waits in the input line for its Enter: a person's
        keys wait."""
        current = self.book.current
        return current is not None and current.state in ("typing", "typed")

    # ------------------------------------------------------------ new deliveries

    def deliver(self, frame: Deliver, now: float, accepting: bool) -> None:
        """Book a ``deliver`` frame (``accepting``: the program runs and is not stopping); an
        id already typed is acknowledged again, never typed twice."""
        did = frame.delivery_id
        previous = self.book.settled(did)
        if previous is not None and previous.verification == "failed":
            self.outbox.log(f"delivery {did} failed before ({previous.reason}); trying again")
            self.book.forget(did)  # only what was typed is never typed again
        if self.book.known(did):
            settled = self.book.settled(did)
            if settled is None:
                self.outbox.log(f"delivery {did} is already pending; duplicate ignored")
            else:
                self.outbox.log(
                    f"delivery {did} was already {settled.verification}; acknowledged again"
                )
                self._announce(did, settled, injected=False)
            return
        if not accepting:
            self.outbox.log(f"delivery {did} not accepted: the program is stopping or has exited")
            return
        self.book.add(Delivery(did, frame.sender, frame.body, frame.thread))
        self.pump(now)

    def _announce(self, did: str, settled: Settled, injected: bool) -> None:
        """Report an outcome; ``injected``: delivery_injected was already sent for it."""
        if settled.verification == "failed":
            self.outbox.send(DeliveryFailed(delivery_id=did, reason=settled.reason or "failed"))
            return
        if not injected:
            self.outbox.send(DeliveryInjected(delivery_id=did))
        self.outbox.send(
            DeliveryVerified(
                delivery_id=did, verification=settled.verification, reason=settled.reason
            )
        )

    # ------------------------------------------------------------ typing

    def pump(self, now: float) -> None:
        """Start the next delivery if it is time: may inject, none in flight, throttle open
        (else the ``throttle`` deadline calls again)."""
        if self.clears or not self.host.may_inject() or self.book.current or not self.book.queue:
            return
        wait = self.throttle.wait_time(now)
        if wait > 0:
            self.deadlines.set("throttle", now + wait)
            return
        delivery = self.book.next()
        assert delivery is not None
        typing = self.profile.typing
        paste = self.screen.bracketed_paste and typing.paste == "auto"
        multiline = paste and typing.newlines == "keep"
        text = format_message(delivery.sender, delivery.delivery_id, delivery.body, multiline)
        self.matcher = EchoMatcher(text)
        self.screen.on_draw = self.matcher.feed
        size = self.opts.chunk
        # Whole characters per chunk: a chunk is never cut inside a UTF-8 sequence.
        pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
        if paste:
            pieces[0] = BRACKETED_PASTE[0] + pieces[0]
            pieces[-1] += BRACKETED_PASTE[1]
        self.paste_open = paste  # until the chunk with the end marker is written
        self.typing.clear()
        self.typing.extend((self.opts.key_delay, piece.encode()) for piece in pieces)
        if not self.knows_input:
            self.typing.append((self.enter_delay, ENTER))
        self.enters, self.saw_busy = 0, False
        self.typed_bytes = 0
        self.typing_bytes = sum(len(data) for _, data in self.typing)
        # The typing deadline is a stall timeout: re-armed whenever a chunk was written, so a
        # long message has as long as it needs while the program keeps reading.
        self.deadlines.set("typing", now + self.opts.verify_timeout)
        self.type_next()

    def type_next(self) -> None:
        """Queue the next chunk (the ``key`` deadline)."""
        current = self.book.current
        if current is None or not self.typing:
            return
        _, data = self.typing.popleft()
        self.keys.add(data, self._typed, owner=current.delivery_id)

    def _typed(self, error: OSError | None, now: float) -> None:
        current = self.book.current
        if current is None or current.state != "typing":
            return
        if error is not None:
            if self.host.program_gone():
                self.outbox.log(
                    f"delivery {current.delivery_id}: the terminal closed while it was typed"
                )
                return
            self.settle(Settled("failed", f"cannot write to the terminal: {error}"), now)
            return
        self.typed_bytes = self.typing_bytes - sum(len(data) for _, data in self.typing)
        if len(self.typing) <= 1:
            self.paste_open = False  # only the Enter is left (or nothing)
        if self.typing:
            self.deadlines.set("key", now + self.typing[0][0])
            self.deadlines.set("typing", now + self.opts.verify_timeout)
            return
        self.deadlines.cancel("typing")
        self.deadlines.set("verify", now + self.opts.verify_timeout)
        if self.knows_input:
            current.state = "typed"  # Enter once the text shows in the input line
            self.check_echo(now)
            return
        current.state = "verifying"
        self.release_user_input(now)
        self.outbox.send(DeliveryInjected(delivery_id=current.delivery_id))
        self.check_echo(now)

    def on_typing_timeout(self, now: float) -> None:
        """The ``typing`` deadline: the terminal took none of the message for a while."""
        current = self.book.current
        if current is None or current.state != "typing" or self.host.program_gone():
            return
        # Abort cleanly: finish a chunk the terminal took part of (never half a character),
        # drop the chunks not started, close a bracketed paste, and type the profile's clear
        # keys; the Enter is never typed, so the half message is not submitted.
        started = self.keys.drop(current.delivery_id) or self.typed_bytes > 0
        if started:
            close = BRACKETED_PASTE[1].encode() if self.paste_open else b""
            self.keys.add(close + self.profile.typing.clear.encode())
        self.paste_open = False
        reason = (
            f"could not type the message: the program took none of its input for "
            f"{self.opts.verify_timeout:g} s ({self.typed_bytes} of {self.typing_bytes} "
            "bytes typed; the rest was dropped and the line cleared)"
        )
        self.settle(Settled("failed", reason), now)

    # ------------------------------------------------------------ verifying

    def check_echo(self, now: float) -> bool:
        """Look at the screen for the delivery in flight: its echo (``verifying``), its text
        in the input line (``typed``: Enter follows), or its submission (``submitting``).
        Returns whether it settled."""
        current = self.book.current
        matcher = self.matcher
        if current is None or matcher is None:
            return False
        if current.state == "verifying":
            if matcher.found or matcher.check_text(self.screen.text()):
                self.settle(Settled("echo"), now)
                return True
        elif current.state == "typed":
            if self.deadlines.at("enter") is None and self._text_shown(matcher):
                self.deadlines.set("enter", now + self.enter_delay)
        elif current.state == "submitting":
            line = self.host.input_line()
            if self._left_input(line) and (self.saw_busy or self._shown_elsewhere()):
                self.settle(Settled("submitted"), now)
                return True
        return False

    def _text_shown(self, matcher: EchoMatcher) -> bool:
        """The typed text, or the end of a long one (an input box scrolls a tall message),
        or the profile's placeholder for a collapsed paste, is on screen."""
        text = self.screen.text()
        if matcher.found or matcher.check_text(text):
            return True
        if len(matcher.needle) > TAIL and matcher.needle[-TAIL:] in normalize(text):
            return True
        return self.collapsed is not None and bool(
            self.collapsed.search(self.host.input_line().text)
        )

    @staticmethod
    def _left_input(line: InputLine) -> bool:
        """The input line holds nothing (or the prompt is not on screen: the agent took it
        and shows something else)."""
        return not line.found or not line.text

    def _shown_elsewhere(self) -> bool:
        """With the input line empty: the message (its start) or the collapsed placeholder
        is on screen, so it is in the transcript."""
        text = self.screen.text()
        if self.collapsed is not None and self.collapsed.search(text):
            return True
        assert self.matcher is not None and self.book.current is not None
        # Its header (which names the delivery) and the body's first characters: a
        # transcript or a queue may show no more of a message of many lines (Codex's queue
        # shows three, then "…").
        current = self.book.current
        header = len(normalize(format_message(current.sender, current.delivery_id, "")))
        head = self.matcher.needle[: min(80, header + 16)]
        return head in normalize(text)

    def press_enter(self, now: float) -> None:
        """The ``enter`` deadline: press Enter for the delivery in flight."""
        current = self.book.current
        if current is None or current.state not in ("typed", "submitting"):
            return
        self.enters += 1
        self.keys.add(ENTER, self._entered, owner=current.delivery_id)

    def _entered(self, error: OSError | None, now: float) -> None:
        current = self.book.current
        if current is None or current.state not in ("typed", "submitting"):
            return
        if error is not None:
            if not self.host.program_gone():
                self.settle(Settled("failed", f"cannot write to the terminal: {error}"), now)
            return
        if current.state == "typed":
            current.state = "submitting"
            self.release_user_input(now)
            self.outbox.send(DeliveryInjected(delivery_id=current.delivery_id))
        self.deadlines.set("verify", now + self.profile.submitted.window)
        self.check_echo(now)

    def on_activity(self, activity: str, now: float) -> None:
        """The agent's activity changed: busy after Enter is evidence it took the message."""
        current = self.book.current
        if activity == "busy" and current is not None and current.state == "submitting":
            self.saw_busy = True
            self.check_echo(now)

    def on_verify_timeout(self, now: float) -> None:
        """The ``verify`` deadline: settle by what is on screen now, or fall back (generic),
        press Enter again, or clear the line (a profile that knows the input line)."""
        current = self.book.current
        if current is None or self.matcher is None or self.host.program_gone():
            return  # the program exited meanwhile: its exit decides
        if self.check_echo(now):
            return
        if current.state == "verifying":
            reason = (
                f"the message text did not appear on screen within "
                f"{self.opts.verify_timeout:g} s ({self.matcher.describe_miss()})"
            )
            self.settle(Settled("timeout_fallback", reason), now)
        elif current.state == "typed":
            if self.deadlines.at("enter") is not None:
                return  # shown just now: Enter follows
            reason = (
                f"the typed text did not appear in the input line within "
                f"{self.opts.verify_timeout:g} s ({self.matcher.describe_miss()}); Enter was "
                "not pressed and the line was cleared"
            )
            self._clear_line(now)
            self.settle(Settled("not_submitted", reason), now)
        elif current.state == "submitting":
            window = self.profile.submitted.window
            if self._left_input(self.host.input_line()):
                reason = (
                    f"the message left the input line, but the agent showed no other sign "
                    f"of taking it within {window:g} s"
                )
                self.settle(Settled("echo", reason), now)
            elif self.enters < MAX_ENTERS:
                self.outbox.log(
                    f"delivery {current.delivery_id}: still in the input line {window:g} s "
                    "after Enter; pressing Enter once more"
                )
                self.press_enter(now)
            else:
                reason = (
                    f"still in the input line {window:g} s after Enter was pressed "
                    f"{self.enters} times; the line was cleared"
                )
                self._clear_line(now)
                self.settle(Settled("not_submitted", reason), now)

    def _clear_line(self, now: float) -> None:
        """Type the profile's keys that empty the input line (a person's keys wait); again
        while it still holds text ``CLEAR_CHECK`` later, up to ``MAX_CLEARS`` times. No
        delivery is typed meanwhile: one typed into the rest would be mixed with it."""
        self.keys.add(self.profile.typing.clear.encode())
        self.clears = 1
        assert self.matcher is not None
        self.clearing_tail = self.matcher.needle[-TAIL:]
        self.deadlines.set("clear", now + CLEAR_CHECK)

    def on_clear_check(self, now: float) -> None:
        """The ``clear`` deadline: the input line is empty (or the program is gone), or the
        clear keys are typed once more, or that was the last time (logged)."""
        if not self.clears:
            return
        line = self.host.input_line()
        # A tall message hides the input line's start (and the prompt): its end shows it.
        left = line.text or self.clearing_tail in normalize(self.screen.text())
        if left and not self.host.program_gone():
            if self.clears < MAX_CLEARS:
                self.clears += 1
                self.keys.add(self.profile.typing.clear.encode())
                self.deadlines.set("clear", now + CLEAR_CHECK)
                return
            self.outbox.log(
                f"the input line still holds {(line.text or '...' + self.clearing_tail)[:60]!r}"
                f" after its clear keys were typed {self.clears} times"
            )
        self.clears = 0
        self.host.waiting_changed()
        self.pump(now)

    def settle(self, settled: Settled, now: float) -> None:
        """End the delivery in flight: report it, adapt the throttle, start the next one."""
        delivery = self.book.settle(settled)
        self.release_user_input(now)
        self.screen.on_draw = None
        self.matcher = None
        self.typing.clear()
        self.deadlines.cancel("key", "typing", "enter", "verify")
        self.throttle.record(_OUTCOMES.get(settled.verification, Outcome.FAILED), now)
        if settled.verification not in VERIFIED_LEVELS:
            word = "failed" if settled.verification == "failed" else "unverified"
            self.outbox.log(f"delivery {delivery.delivery_id} {word}: {settled.reason}")
        elif settled.reason:
            self.outbox.log(
                f"delivery {delivery.delivery_id} {settled.verification}: {settled.reason}"
            )
        self._announce(delivery.delivery_id, settled, injected=True)
        self.host.after_settle(now)
        self.pump(now)

    # ------------------------------------------------------------ the user's keys

    def user_input(self, data: bytes, done: Done) -> None:
        """Keys from ``write_input``: after the message being typed, if one is. No delivery
        is typed until ``PERSON_TYPING`` after they reached the terminal."""

        def written(error: OSError | None, now: float) -> None:
            if error is None:
                self.person_typing = True
                self.deadlines.set("person", now + PERSON_TYPING)
            done(error, now)

        if self.typing_now:
            self.user_held.append((data, written))  # not between the chunks of a message
        else:
            self.keys.add(data, written)

    def on_person_quiet(self, now: float) -> None:
        """The ``person`` deadline: no key of a person's for ``PERSON_TYPING``; what is on
        screen now decides (a draft holds deliveries)."""
        self.person_typing = False
        self.host.waiting_changed()
        self.pump(now)

    def release_user_input(self, now: float, error: OSError | None = None) -> None:
        """Queue the keys held back while a message was typed, or fail them with ``error``."""
        held, self.user_held = self.user_held, []
        for data, done in held:
            if error is None:
                self.keys.add(data, done)
            else:
                done(error, now)

    # ------------------------------------------------------------ the end

    def report_exit(self, now: float) -> None:
        """The program exited: settle the delivery being verified if its echo is on the final
        screen; the rest is left unreported (the broker requeues it for the next run of the
        program, or fails it naming the exit if there is none)."""
        self.check_echo(now)
        current = self.book.current
        if current is not None:
            self.outbox.log(
                f"delivery {current.delivery_id} not reported: the program exited while it"
                f" was {current.state}"
            )
        for delivery in (*self.book.queue, *self.book.held):
            self.outbox.log(f"delivery {delivery.delivery_id} was not typed: the program exited")
