"""Accepting a delivery into an agent's queue: a send, or the redelivery of a dead letter or
failed one. Each claims its place (and the eviction the cap asks for) before its commit, and
enters memory in the commit's callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

from trio_relay.broker.delivery.core import Core
from trio_relay.broker.delivery.handover import pump
from trio_relay.broker.delivery.mailbox import Delivery, Mailbox
from trio_relay.broker.delivery.policy import Receipt, check_send
from trio_relay.broker.delivery.queries import get
from trio_relay.errors import DeliveryStateError, WorkerNotFound
from trio_relay.store import sql
from trio_relay.wire import DeliveryDroppedEvent, DeliveryQueuedEvent

T = TypeVar("T")


class _Admission:
    """One delivery entering ``box``: its claims (one incoming, at most one eviction), its
    times, and what its commit does to memory."""

    def __init__(self, core: Core, box: Mailbox) -> None:
        self.core, self.box = core, box
        cap = core.policy.cap
        evict = box.claim_eviction(cap)
        box.incoming += 1
        self.evicts: tuple[int, ...] = () if evict is None else (evict,)
        self.now = core.wall()
        self.deadline_at = self.now + core.policy.deadline
        self.reason = f"{cap} deliveries were already pending for {box.name!r} (the cap)"
        self._settled = False

    def settle(self) -> None:
        """Release the claims: idempotent, so whatever runs first (the commit, the abort,
        the caller's own exit) releases them once."""
        if not self._settled:
            self._settled = True
            self.box.incoming -= 1
            self.box.leaving.difference_update(self.evicts)

    async def commit(self, fn: Callable[[Any], T], what: str, on_commit: Callable[[T], None]) -> T:
        """Raises StoreError. Cancellation: as :meth:`Store.write`; the claims are released
        however it ends."""
        try:
            return await self.core.store.write(
                fn, what, on_commit=on_commit, on_abort=lambda _: self.settle()
            )
        finally:
            self.settle()  # cancelled before the write was queued: nothing else releases them

    def enter(self, delivery: Delivery, dropped: list[int], event: DeliveryQueuedEvent) -> None:
        """Committed: the evicted ones dropped, ``delivery`` queued and announced."""
        core, box = self.core, self.box
        self.settle()
        for seq in dropped:
            core.finish(box, box.queued.pop(seq), "dropped", self.now, reason=self.reason)
            core.events.emit(
                DeliveryDroppedEvent(
                    agent=box.name,
                    delivery_id=core.did(seq),
                    reason=self.reason,
                    evicted_by=event.delivery_id,
                )
            )
        box.add_queued(delivery)
        core.open[delivery.seq] = delivery
        core.events.emit(event)
        pump(core, box)

    def receipt(self, delivery_id: str, dropped: list[int]) -> Receipt:
        return Receipt(
            delivery_id, self.box.name, "queued", tuple(self.core.did(s) for s in dropped)
        )


async def send(
    core: Core, to: str, body: str, sender: str, thread: str | None, origin: str | None = None
) -> Receipt:
    """See :meth:`DeliveryEngine.send`."""
    await trio.lowlevel.checkpoint_if_cancelled()
    core.check_intake()
    check_send(sender, body, thread, core.policy.max_body)
    if not core.transport.active(to):
        raise WorkerNotFound(to)
    entry = _Admission(core, core.mailbox(to))
    now, deadline_at, evicts, reason = entry.now, entry.deadline_at, entry.evicts, entry.reason

    def write(conn: Any) -> tuple[int, list[int]]:
        return sql.insert_delivery(
            conn, to, sender, body, thread, now, deadline_at, evicts, reason, origin
        )

    def committed(result: tuple[int, list[int]]) -> None:
        seq, dropped = result
        if dropped == [-1]:  # ``origin`` was taken before: that delivery stands
            entry.settle()
            return
        delivery = Delivery.queued(
            seq, to, sender, body, thread, created_at=now, now=now, deadline_at=deadline_at
        )
        event = DeliveryQueuedEvent(
            agent=to, delivery_id=core.did(seq), sender=sender, thread=thread
        )
        entry.enter(delivery, dropped, event)

    seq, dropped = await entry.commit(write, f"queue a delivery for {to!r}", committed)
    if dropped == [-1]:
        return Receipt(core.did(seq), to, "taken before", ())
    return entry.receipt(core.did(seq), dropped)


async def redeliver(core: Core, delivery_id: str) -> Receipt:
    """See :meth:`DeliveryEngine.redeliver`."""
    info = await get(core, delivery_id)
    core.check_intake()
    if info.state not in ("dead_letter", "failed") or info.seq in core.open:
        raise DeliveryStateError(
            f"delivery {delivery_id!r} is {info.state}; only dead letters and failed"
            " deliveries can be redelivered"
        )
    if not core.transport.active(info.agent):
        raise WorkerNotFound(info.agent)
    entry = _Admission(core, core.mailbox(info.agent))
    now, deadline_at, evicts, reason = entry.now, entry.deadline_at, entry.evicts, entry.reason

    def committed(result: tuple[bool, list[int]]) -> None:
        ok, dropped = result
        if not ok:
            entry.settle()
            return
        delivery = Delivery.queued(
            info.seq,
            info.agent,
            info.sender,
            info.body,
            info.thread,
            created_at=info.created_at,
            now=now,
            deadline_at=deadline_at,
            last_error=info.last_error,
        )
        event = DeliveryQueuedEvent(
            agent=info.agent,
            delivery_id=delivery_id,
            sender=info.sender,
            thread=info.thread,
            redelivery=True,
        )
        entry.enter(delivery, dropped, event)

    ok, dropped = await entry.commit(
        lambda conn: sql.redeliver(conn, info.seq, now, deadline_at, evicts, reason),
        f"redeliver {delivery_id}",
        committed,
    )
    if not ok:
        raise DeliveryStateError(f"delivery {delivery_id!r} changed state meanwhile")
    return entry.receipt(delivery_id, dropped)
