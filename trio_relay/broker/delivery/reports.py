"""Reports coming back from a worker (injected, verified or unverified, failed): each is
committed, then announced. A report the store cannot commit is tried again after
``store_retry``; one about a delivery not in flight is stale (counted, not recorded),
except a verification of a dead letter, which did reach the agent after all (a late
report). Synchronous; never blocks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from trio_relay import wire
from trio_relay.broker.delivery.core import Core
from trio_relay.broker.delivery.handover import pump
from trio_relay.broker.delivery.mailbox import Delivery, Mailbox
from trio_relay.store import sql
from trio_relay.wire.vocabulary import VERIFIED_LEVELS

log = logging.getLogger(__name__)

Report = wire.DeliveryInjected | wire.DeliveryVerified | wire.DeliveryFailed
Retry = Callable[[BaseException], None]


def on_report(core: Core, agent: str, frame: Report) -> None:
    """Commit the worker's report, then announce it."""
    box = core.mailboxes.get(agent)
    seq = sql.parse_delivery_id(core.tag, frame.delivery_id)
    if seq is None:  # not one of ours (a deliver frame written by hand): relay it as is
        _relay_foreign(core, agent, frame)
        return
    delivery = box.inflight.get(seq) if box is not None else None
    if box is None or delivery is None:
        if type(frame) is wire.DeliveryVerified and seq not in core.open:
            _late_report(core, agent, seq, frame)
            return
        _stale(core, agent, frame.delivery_id)
        return
    core.arm(box)  # progress: the head gets a fresh wait
    again = core.retry_later(
        f"record the report on {frame.delivery_id}", lambda: on_report(core, agent, frame)
    )
    if type(frame) is wire.DeliveryInjected:
        _injected(core, box, delivery, frame.delivery_id, again)
    elif type(frame) is wire.DeliveryVerified:
        _verified(core, box, delivery, frame, again)
    else:
        _failed(core, box, delivery, frame, again)


def _injected(core: Core, box: Mailbox, delivery: Delivery, did: str, again: Retry) -> None:
    if delivery.state != "sent":
        core.stale_reports += 1
        return
    seq, now = delivery.seq, core.wall()

    def committed(ok: bool) -> None:
        if not ok:
            core.stale_reports += 1
            return
        delivery.state, delivery.updated_at = "injected", now
        core.events.emit(wire.DeliveryInjectedEvent(agent=box.name, delivery_id=did))

    core.submit(
        lambda conn: sql.transition(conn, seq, ("sent",), "injected", now),
        f"record {did} injected",
        committed,
        again,
    )


def _verified(
    core: Core, box: Mailbox, delivery: Delivery, frame: wire.DeliveryVerified, again: Retry
) -> None:
    seq, did, now = delivery.seq, frame.delivery_id, core.wall()
    state, fields = _outcome(frame)

    def committed(ok: bool) -> None:
        if not ok:
            # Dead-lettered meanwhile (its write was queued first): a late report.
            _late_report(core, box.name, seq, frame)
            return
        core.finish(box, delivery, state, now, **fields)
        _announce_verified(core, box.name, frame)
        pump(core, box)

    core.submit(
        lambda conn: sql.transition(conn, seq, ("sent", "injected"), state, now, **fields),
        f"record {did} {state}",
        committed,
        again,
    )


def _failed(
    core: Core, box: Mailbox, delivery: Delivery, frame: wire.DeliveryFailed, again: Retry
) -> None:
    seq, did, reason, now = delivery.seq, frame.delivery_id, frame.reason, core.wall()

    def committed(ok: bool) -> None:
        if not ok:
            core.stale_reports += 1
            return
        core.finish(box, delivery, "failed", now, reason=reason)
        core.events.emit(wire.DeliveryFailedEvent(agent=box.name, delivery_id=did, reason=reason))
        pump(core, box)

    core.submit(
        lambda conn: sql.transition(conn, seq, ("sent", "injected"), "failed", now, reason=reason),
        f"record {did} failed",
        committed,
        again,
    )


def _late_report(core: Core, agent: str, seq: int, frame: wire.DeliveryVerified) -> None:
    """The worker verified (or could not verify) a delivery that had been given up as
    a dead letter: it did reach the agent, so the store records it and it is announced.
    Anything else (a delivery already verified, another agent's) is a stale report."""
    state, fields = _outcome(frame)
    now = core.wall()

    def recorded(ok: bool) -> None:
        if not ok:
            _stale(core, agent, frame.delivery_id)
            return
        log.info("%s: %s was a dead letter; reported %s after all", agent, frame.delivery_id, state)
        _announce_verified(core, agent, frame)

    core.submit(
        lambda conn: sql.late_report(conn, seq, agent, state, now, **fields),
        f"record {frame.delivery_id} {state} (late)",
        recorded,
        core.retry_later(
            f"record the late report on {frame.delivery_id}",
            lambda: _late_report(core, agent, seq, frame),
        ),
    )


def _outcome(frame: wire.DeliveryVerified) -> tuple[str, dict[str, Any]]:
    """The state a verification report ends its delivery in, and the fields it records."""
    state = "verified" if frame.verification in VERIFIED_LEVELS else "unverified"
    return state, {"verification": frame.verification, "reason": frame.reason}


def _stale(core: Core, agent: str, delivery_id: str) -> None:
    core.stale_reports += 1
    log.debug("%s: report for %s, not in flight: ignored", agent, delivery_id)


def _announce_verified(core: Core, agent: str, frame: wire.DeliveryVerified) -> None:
    """``delivery_verified`` for an echo, ``delivery_unverified`` for a timeout fallback."""
    kind = (
        wire.DeliveryVerifiedEvent
        if frame.verification in VERIFIED_LEVELS
        else wire.DeliveryUnverifiedEvent
    )
    core.events.emit(
        kind(
            agent=agent,
            delivery_id=frame.delivery_id,
            verification=frame.verification,
            reason=frame.reason,
        )
    )


def _relay_foreign(core: Core, agent: str, frame: Report) -> None:
    """A report about a delivery id this store never issued: nothing to record, so it
    is announced as the worker made it."""
    did = frame.delivery_id
    if type(frame) is wire.DeliveryInjected:
        core.events.emit(wire.DeliveryInjectedEvent(agent=agent, delivery_id=did))
    elif type(frame) is wire.DeliveryVerified:
        _announce_verified(core, agent, frame)
    else:
        core.events.emit(
            wire.DeliveryFailedEvent(agent=agent, delivery_id=did, reason=frame.reason)
        )
