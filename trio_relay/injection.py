"""What the PTY worker types for a delivery, how it recognises the echo, and its delivery book.

The typed text of a delivery is :func:`format_message`::

    Relay message from <from> [<delivery_id>]: <body>

followed by Enter (a carriage return, as a terminal sends). Control characters other than
newline are replaced by spaces, so a message can never act as a key command (Escape, Ctrl-C).

The echo is recognised by :class:`EchoMatcher`: the typed text, with all whitespace removed,
must appear in the drawn text with all whitespace removed. Escape sequences never reach it
(the screen model parses them), and removing whitespace makes line wrapping, a multi-line
body and a TUI's padding irrelevant.

:class:`DeliveryBook` holds the deliveries not yet typed (held in ``hold`` mode, queued in
``auto_inject`` mode) and remembers the outcome of the last ``remember`` ids, so a
redelivered id is acknowledged, never typed twice. It does no I/O.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from typing import Any, Literal

import msgspec

InjectMode = Literal["auto_inject", "hold"]
MODES: tuple[InjectMode, ...] = ("auto_inject", "hold")

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def format_message(sender: str, delivery_id: str, body: str) -> str:
    """The text typed for a delivery (without the Enter that follows it)."""
    return _CONTROL.sub(" ", f"Relay message from {sender} [{delivery_id}]: {body}")


def normalize(text: str) -> str:
    """``text`` without any whitespace: the form typed and drawn text are compared in."""
    return "".join(text.split())


class EchoMatcher:
    """Watches drawn text for one expected message, across any number of pieces."""

    def __init__(self, expected: str) -> None:
        self.needle = normalize(expected)
        self.found = not self.needle
        self.seen = 0  # non-whitespace characters drawn since the matcher started
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
        return self.found

    def check_text(self, text: str) -> bool:
        """Whether the message is in ``text`` (for example the whole visible screen)."""
        if not self.found and self.needle in normalize(text):
            self.found = True
        return self.found


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
