"""Typing deliveries into the terminal, one at a time, and verifying them.

:class:`Injector` takes ``deliver`` frames, books them (:mod:`.book`), and once the terminal
is ready and the throttle (:mod:`.throttle`) open, types the next one: the text of
:func:`.echo.format_message` in chunks of ``chunk`` characters (never cut inside a character)
``key_delay`` apart, in a bracketed paste if the program enabled one, then Enter after
``enter_delay``. It reports ``delivery_injected`` once the Enter was written, then
``delivery_verified`` (``echo`` as soon as the text is seen on screen, or ``timeout_fallback``
after ``verify_timeout``) or ``delivery_failed`` (the terminal refused the bytes, or took none
of them for ``verify_timeout``: the rest is dropped, the paste closed and the line cleared
with Ctrl-U; the Enter is never typed). Keys the user writes meanwhile wait for the message.

Sans-IO: it is told the time, queues bytes on the :class:`.input_queue.InputQueue`, arms the
``throttle``, ``key``, ``typing`` and ``verify`` deadlines and puts frames in the outbox.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

from trio_relay.wire import Deliver, DeliveryFailed, DeliveryInjected, DeliveryVerified
from trio_relay.worker.pty.book import Delivery, DeliveryBook, Settled
from trio_relay.worker.pty.deadlines import Deadlines
from trio_relay.worker.pty.echo import EchoMatcher, format_message
from trio_relay.worker.pty.input_queue import Done, InputQueue
from trio_relay.worker.pty.options import Options
from trio_relay.worker.pty.outbox import Outbox
from trio_relay.worker.pty.screen import TerminalScreen
from trio_relay.worker.pty.throttle import InjectionThrottle, Outcome

BRACKETED_PASTE = ("\x1b[200~", "\x1b[201~")
CLEAR_LINE = b"\x15"  # Ctrl-U
_OUTCOMES = {"echo": Outcome.SUCCESS, "timeout_fallback": Outcome.UNVERIFIED}


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
        self.book = DeliveryBook(opts.mode)
        self.throttle = InjectionThrottle()
        self.matcher: EchoMatcher | None = None
        self.typing: deque[tuple[float, bytes]] = deque()  # (pause before, bytes) to type
        self.typed_bytes = 0
        self.typing_bytes = 0
        self.paste_open = False
        self.user_held: list[tuple[bytes, Done]] = []  # written once the message is typed

    @property
    def typing_now(self) -> bool:
        current = self.book.current
        return current is not None and current.state == "typing"

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
        if not self.host.may_inject() or self.book.current or not self.book.queue:
            return
        wait = self.throttle.wait_time(now)
        if wait > 0:
            self.deadlines.set("throttle", now + wait)
            return
        delivery = self.book.next()
        assert delivery is not None
        paste = self.screen.bracketed_paste
        text = format_message(delivery.sender, delivery.delivery_id, delivery.body, paste)
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
        self.typing.append((self.opts.enter_delay, b"\r"))
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
        current.state = "verifying"
        self.release_user_input(now)
        self.outbox.send(DeliveryInjected(delivery_id=current.delivery_id))
        if not self.check_echo(now):
            self.deadlines.set("verify", now + self.opts.verify_timeout)

    def on_typing_timeout(self, now: float) -> None:
        """The ``typing`` deadline: the terminal took none of the message for a while."""
        current = self.book.current
        if current is None or current.state != "typing" or self.host.program_gone():
            return
        # Abort cleanly: finish a chunk the terminal took part of (never half a character),
        # drop the chunks not started, close a bracketed paste, and Ctrl-U to clear the
        # line; the Enter is never typed, so the half message is not submitted.
        started = self.keys.drop(current.delivery_id) or self.typed_bytes > 0
        if started:
            close = BRACKETED_PASTE[1].encode() if self.paste_open else b""
            self.keys.add(close + CLEAR_LINE)
        self.paste_open = False
        reason = (
            f"could not type the message: the program took none of its input for "
            f"{self.opts.verify_timeout:g} s ({self.typed_bytes} of {self.typing_bytes} "
            "bytes typed; the rest was dropped and the line cleared with Ctrl-U)"
        )
        self.settle(Settled("failed", reason), now)

    # ------------------------------------------------------------ verifying

    def check_echo(self, now: float) -> bool:
        """Settle the delivery being verified if its text is on screen; returns whether it
        did (False too when none is being verified)."""
        current = self.book.current
        matcher = self.matcher
        if current is None or current.state != "verifying" or matcher is None:
            return False
        if matcher.found or matcher.check_text(self.screen.text()):
            self.settle(Settled("echo"), now)
            return True
        return False

    def on_verify_timeout(self, now: float) -> None:
        """The ``verify`` deadline: settle by echo if it is on screen now, else fall back."""
        current = self.book.current
        if current is None or current.state != "verifying" or self.matcher is None:
            return
        if self.host.program_gone() or self.check_echo(now):
            return  # the program exited meanwhile (its exit decides), or the echo is there
        reason = (
            f"the message text did not appear on screen within "
            f"{self.opts.verify_timeout:g} s ({self.matcher.describe_miss()})"
        )
        self.settle(Settled("timeout_fallback", reason), now)

    def settle(self, settled: Settled, now: float) -> None:
        """End the delivery in flight: report it, adapt the throttle, start the next one."""
        delivery = self.book.settle(settled)
        self.release_user_input(now)
        self.screen.on_draw = None
        self.matcher = None
        self.typing.clear()
        self.deadlines.cancel("key", "typing", "verify")
        self.throttle.record(_OUTCOMES.get(settled.verification, Outcome.FAILED), now)
        if settled.verification != "echo":
            word = "failed" if settled.verification == "failed" else "unverified"
            self.outbox.log(f"delivery {delivery.delivery_id} {word}: {settled.reason}")
        self._announce(delivery.delivery_id, settled, injected=True)
        self.host.after_settle(now)
        self.pump(now)

    # ------------------------------------------------------------ the user's keys

    def user_input(self, data: bytes, done: Done) -> None:
        """Keys from ``write_input``: after the message being typed, if one is."""
        if self.typing_now:
            self.user_held.append((data, done))  # not between the chunks of a message
        else:
            self.keys.add(data, done)

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
