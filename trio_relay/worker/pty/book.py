"""The PTY worker's delivery book: which deliveries wait, which is in flight, how each ended.

:class:`DeliveryBook` holds the deliveries not yet typed (held in ``hold`` mode, queued in
``auto_inject`` mode) and remembers the outcome of the last ``remember`` ids, so a
redelivered id is acknowledged, never typed twice (the worker lets one that failed be tried
again: see :meth:`DeliveryBook.forget`). It does no I/O.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Literal

import msgspec

from trio_relay.wire.vocabulary import INJECT_MODES, InjectMode


class Delivery(msgspec.Struct):
    delivery_id: str
    sender: str
    body: str
    thread: str | None = None
    #: ``typing``: its text is being typed; ``verifying``: typed with Enter, its echo looked
    #: for (a profile without a prompt); ``typed``: typed, its text looked for in the input
    #: line before Enter; ``submitting``: Enter pressed, the agent's taking it looked for.
    state: Literal["held", "queued", "typing", "verifying", "typed", "submitting"] = "queued"

    def describe(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "from": self.sender,
            "body": self.body,
            "thread": self.thread,
            "state": self.state,
        }


class Settled(msgspec.Struct, frozen=True):
    """How a delivery ended: a verification level (see
    :data:`~trio_relay.wire.vocabulary.Verification`; all but ``submitted`` and ``echo``
    with a reason), or ``failed``."""

    verification: Literal["submitted", "echo", "timeout_fallback", "not_submitted", "failed"]
    reason: str | None = None


class DeliveryBook:
    """Deliveries in a worker: held, queued, the one in flight, and settled outcomes."""

    def __init__(self, mode: InjectMode = "auto_inject", remember: int = 10000) -> None:
        if mode not in INJECT_MODES:
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
        if mode not in INJECT_MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(INJECT_MODES)}")
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
