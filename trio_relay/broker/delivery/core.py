"""The state the delivery engine's parts share, and the steps they all take: naming
deliveries, queueing a write from a synchronous hook, ending a delivery in memory, and the
wait for progress on a mailbox's head.

Memory changes only in the store's ``on_commit`` callbacks (see the package's doc), so
every function here that changes it is called from one, on the Trio thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from trio_relay.broker.delivery.mailbox import Delivery, Mailbox
from trio_relay.broker.delivery.policy import DeliveryPolicy, Transport
from trio_relay.broker.delivery.timers import Timers
from trio_relay.broker.events import EventLog
from trio_relay.errors import DeliveryNotFound, IntakeClosed, StoreError, WorkerNotFound
from trio_relay.store import sql
from trio_relay.store.engine import Store
from trio_relay.store.sql import DeliveryInfo
from trio_relay.wire import DeadLetterEvent, DeliveryFailedEvent

log = logging.getLogger(__name__)


class Waiter:
    """A caller of ``wait`` on one delivery: set with its final state when it ends."""

    __slots__ = ("event", "info")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.info: DeliveryInfo | None = None


@dataclass(eq=False)
class Core:
    """The store, the event log, the transport and the policy, with every mailbox, every
    open delivery (by seq) and every waiter."""

    store: Store
    events: EventLog
    transport: Transport
    policy: DeliveryPolicy
    wall: Callable[[], float]
    mailboxes: dict[str, Mailbox] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)
    open: dict[int, Delivery] = field(default_factory=dict)
    waiters: dict[int, Waiter] = field(default_factory=dict)
    closed: bool = False
    timers: Timers = field(default_factory=Timers)
    #: Reports for deliveries not in flight (duplicates, late, unknown ids).
    stale_reports: int = 0

    def __post_init__(self) -> None:
        self.tag = self.store.tag

    # -- names

    def did(self, seq: int) -> str:
        """The delivery id of ``seq`` in this store."""
        return sql.delivery_id(self.tag, seq)

    def seq_of(self, delivery_id: str) -> int:
        """Raises DeliveryNotFound for an id this store never issued."""
        seq = sql.parse_delivery_id(self.tag, delivery_id)
        if seq is None:
            raise DeliveryNotFound(delivery_id)
        return seq

    def check_intake(self) -> None:
        """Raises IntakeClosed once the broker is shutting down."""
        if self.closed:
            raise IntakeClosed("the broker is shutting down; no new deliveries")

    def mailbox(self, agent: str) -> Mailbox:
        """The agent's mailbox, made (with its stored mode) if it has none."""
        box = self.mailboxes.get(agent)
        if box is None:
            box = self.mailboxes[agent] = Mailbox(agent, self.modes.get(agent, "auto_inject"))
        return box

    def known(self, agent: str) -> Mailbox:
        """Raises WorkerNotFound for an agent with no mailbox that is not active either."""
        if agent not in self.mailboxes and not self.transport.active(agent):
            raise WorkerNotFound(agent)
        return self.mailbox(agent)

    # -- writes from synchronous hooks

    def submit(
        self,
        fn: Callable[[Any], Any],
        what: str,
        committed: Callable[[Any], None],
        aborted: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Queue a write without waiting. A store that is closed counts as a failed write
        (``aborted``)."""
        try:
            self.store.submit(fn, what, on_commit=committed, on_abort=aborted)
        except StoreError as exc:
            log.warning("%s", exc)
            if aborted is not None:
                aborted(exc)

    def retry_later(self, what: str, fn: Callable[[], None]) -> Callable[[BaseException], None]:
        """An abort handler: call ``fn`` again after ``store_retry``, unless the store is
        closed for good (the next start recovers from what was committed)."""

        def aborted(exc: BaseException) -> None:
            if self.store.closed:
                log.warning("%s: not retried, the store is closed: %s", what, exc)
                return
            log.warning("%s: will retry in %g s: %s", what, self.policy.store_retry, exc)
            self.timers.defer(fn, self.policy.store_retry)

        return aborted

    # -- ends, after their commit

    def finish(
        self, box: Mailbox, delivery: Delivery, state: str, now: float, **fields: Any
    ) -> None:
        """A committed terminal state: out of memory, waiters woken."""
        seq = delivery.seq
        was_head = bool(box.inflight) and next(iter(box.inflight)) == seq
        box.queued.pop(seq, None)
        box.inflight.pop(seq, None)
        box.flushed.discard(seq)
        self.open.pop(seq, None)
        delivery.state, delivery.updated_at = state, now
        for name, value in fields.items():
            setattr(delivery, name, value)
        if was_head:
            self.arm(box)  # a new head (or none): its own wait
        waiter = self.waiters.pop(seq, None)
        if waiter is not None:
            waiter.info = delivery.info(self.tag)
            waiter.event.set()

    def dead_letter(self, box: Mailbox, delivery: Delivery, now: float, error: str) -> None:
        """A committed dead letter: ended in memory, then announced."""
        self.finish(box, delivery, "dead_letter", now, last_error=error)
        self.events.emit(
            DeadLetterEvent(
                agent=box.name,
                delivery_id=self.did(delivery.seq),
                attempts=delivery.attempts,
                error=error,
            )
        )

    def fail(self, box: Mailbox, delivery: Delivery, now: float, reason: str) -> None:
        """A committed failure: ended in memory, then announced."""
        self.finish(box, delivery, "failed", now, reason=reason)
        self.events.emit(
            DeliveryFailedEvent(agent=box.name, delivery_id=self.did(delivery.seq), reason=reason)
        )

    # -- the wait for progress

    def arm(self, box: Mailbox) -> None:
        """(Re)start the wait for progress on the head of the in-flight deliveries."""
        head = box.head()
        if head is None:
            box.stall_at = None
            return
        wait = self.policy.ack_wait(head.attempts)
        # The deadline cuts the wait short, but never below one full acknowledgement wait:
        # a delivery that was handed over (before its deadline) gets its chance to be seen.
        left = head.deadline_at - self.wall()
        self.timers.at(box, "stall_at", max(self.policy.ack_timeout, min(wait, left)))
