"""What the PTY worker types for a delivery, how it recognises the echo, and its delivery book.

The typed text of a delivery is :func:`format_message`::

    Relay message from <from> [<delivery_id>]: <body>

followed by Enter (a carriage return, as a terminal sends). Control characters are replaced
by spaces, so the text cannot act as a key command (Escape, Ctrl-C, Enter). That includes
newlines, unless the program enabled bracketed paste (``ESC[?2004h``): then the worker pastes
the text between ``ESC[200~`` and ``ESC[201~`` and a newline is a line break in the pasted
text, not Enter (``format_message(..., multiline=True)``). Without bracketed paste a
multi-line body arrives as one line, its lines separated by spaces. (The text as a whole is
still what a program reads as input: a shell runs it as a command line when Enter follows.)

The echo is recognised by :class:`EchoMatcher`: the typed text must appear in the drawn text,
both compared without whitespace and without the decoration a TUI draws around and through
wrapped input: box drawing and block characters (U+2500-U+259F, as in ``│ text │`` or
``▌ text``) and ``|``. Escape sequences never reach it (the screen model parses them), so line
wrapping, a multi-line body, a TUI's padding and its input box's borders are irrelevant.
Punctuation is kept: the evidence needed is the whole formatted text, including the
``[<delivery_id>]`` header, so a short body is not verified by the same words elsewhere on
screen, nor by another delivery whose id and body run together the same way (``[d1]: 0 x``
against ``[d10]: x``).

:class:`DeliveryBook` holds the deliveries not yet typed (held in ``hold`` mode, queued in
``auto_inject`` mode) and remembers the outcome of the last ``remember`` ids, so a
redelivered id is acknowledged, never typed twice (the worker lets one that failed be tried
again: see :meth:`DeliveryBook.forget`). It does no I/O.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from typing import Any, Literal

import msgspec

from trio_relay.wire.vocabulary import INJECT_MODES, InjectMode

MODES = INJECT_MODES

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_NOT_COMPARED = re.compile(r"[\s\u2500-\u259f|]+")


def format_message(sender: str, delivery_id: str, body: str, multiline: bool = False) -> str:
    """The text typed for a delivery (without the Enter that follows it). Every control
    character becomes a space; newlines (``\r\n``, ``\r`` or ``\n``) are kept as ``\n`` only
    if ``multiline`` (the program takes a bracketed paste)."""
    text = f"Relay message from {sender} [{delivery_id}]: {body}"
    if not multiline:
        return _CONTROL.sub(" ", text)
    return _CONTROL_BUT_NEWLINE.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))


def normalize(text: str) -> str:
    """``text`` without whitespace, box drawing and block characters (U+2500-U+259F) and
    ``|``: the form typed and drawn text are compared in."""
    return _NOT_COMPARED.sub("", text)


class EchoMatcher:
    """Watches drawn text for one expected message, across any number of pieces."""

    def __init__(self, expected: str) -> None:
        self.needle = normalize(expected)
        self.found = not self.needle
        self.seen = 0  # characters drawn since the matcher started (as compared)
        self.best = 0  # the longest start of the message seen drawn, in compared characters
        self._tail = ""

    def feed(self, drawn: str) -> bool:
        """Take the next piece of drawn text; return whether the message has appeared."""
        if self.found:
            return True
        piece = normalize(drawn)
        self.seen += len(piece)
        window = self._tail + piece
        if self.needle in window:
            self.found = True
        else:
            self._tail = window[-(len(self.needle) - 1) :] if len(self.needle) > 1 else ""
            self._note_prefix(window)
        return self.found

    def check_text(self, text: str) -> bool:
        """Whether the message is in ``text`` (for example the whole visible screen)."""
        if not self.found:
            normal = normalize(text)
            if self.needle in normal:
                self.found = True
            else:
                self._note_prefix(normal)
        return self.found

    def _note_prefix(self, text: str) -> None:
        """Record the longest start of the message in ``text`` (binary search: every
        shorter start of a start that is in ``text`` is in it too)."""
        needle = self.needle
        if self.best >= len(needle) - 1 or needle[self.best] not in text:
            return
        low, high = self.best, len(needle) - 1  # the answer is in low..high
        while low < high:
            mid = (low + high + 1) // 2
            if needle[:mid] in text:
                low = mid
            else:
                high = mid - 1
        self.best = low

    def describe_miss(self) -> str:
        """What was seen instead of the message, for a timeout's reason."""
        if not self.seen and not self.best:
            return "nothing was drawn"
        return (
            f"{self.seen} characters were drawn; at most the first {self.best} of the "
            f"message's {len(self.needle)} appeared"
        )


class Delivery(msgspec.Struct):
    delivery_id: str
    sender: str
    body: str
    thread: str | None = None
    state: Literal["held", "queued", "typing", "verifying"] = "queued"

    def describe(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "from": self.sender,
            "body": self.body,
            "thread": self.thread,
            "state": self.state,
        }


class Settled(msgspec.Struct, frozen=True):
    """How a delivery ended: ``echo`` or ``timeout_fallback`` (with a reason), or ``failed``."""

    verification: Literal["echo", "timeout_fallback", "failed"]
    reason: str | None = None


class DeliveryBook:
    """Deliveries in a worker: held, queued, the one in flight, and settled outcomes."""

    def __init__(self, mode: InjectMode = "auto_inject", remember: int = 10000) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode: InjectMode = mode
        self.held: deque[Delivery] = deque()
        self.queue: deque[Delivery] = deque()
        self.current: Delivery | None = None
        self._settled: OrderedDict[str, Settled] = OrderedDict()
        self._remember = remember

    def known(self, delivery_id: str) -> bool:
        return (
            delivery_id in self._settled
            or (self.current is not None and self.current.delivery_id == delivery_id)
            or any(d.delivery_id == delivery_id for d in self.queue)
            or any(d.delivery_id == delivery_id for d in self.held)
        )

    def settled(self, delivery_id: str) -> Settled | None:
        return self._settled.get(delivery_id)

    def forget(self, delivery_id: str) -> None:
        """Forget a settled outcome (a failure, so the delivery may be tried again)."""
        self._settled.pop(delivery_id, None)

    def add(self, delivery: Delivery) -> bool:
        """Hold or queue a new delivery per the mode. Returns False (and does nothing) if
        its id is already known."""
        if self.known(delivery.delivery_id):
            return False
        if self.mode == "hold":
            delivery.state = "held"
            self.held.append(delivery)
        else:
            delivery.state = "queued"
            self.queue.append(delivery)
        return True

    def set_mode(self, mode: InjectMode) -> int:
        """Switch mode; returning to ``auto_inject`` queues what was held. Returns how many
        were released. Raises ValueError for an unknown mode."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        self.mode = mode
        return self.flush() if mode == "auto_inject" else 0

    def flush(self) -> int:
        """Queue every held delivery, in order; return how many."""
        count = len(self.held)
        while self.held:
            delivery = self.held.popleft()
            delivery.state = "queued"
            self.queue.append(delivery)
        return count

    def next(self) -> Delivery | None:
        """Take the next queued delivery as the one in flight (None if busy or empty)."""
        if self.current is not None or not self.queue:
            return None
        self.current = self.queue.popleft()
        self.current.state = "typing"
        return self.current

    def settle(self, outcome: Settled) -> Delivery:
        """Record the outcome of the delivery in flight and clear it. Raises LookupError if
        none is in flight."""
        if self.current is None:
            raise LookupError("no delivery in flight")
        delivery, self.current = self.current, None
        self._settled[delivery.delivery_id] = outcome
        while len(self._settled) > self._remember:
            self._settled.popitem(last=False)
        return delivery

    @property
    def busy(self) -> bool:
        """Whether anything is queued or in flight (held deliveries wait for a person)."""
        return self.current is not None or bool(self.queue)

    def pending(self) -> list[dict[str, Any]]:
        """Deliveries not yet settled, in order: in flight, queued, held."""
        current = [self.current] if self.current is not None else []
        return [d.describe() for d in (*current, *self.queue, *self.held)]
