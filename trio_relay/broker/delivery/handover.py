"""Handing deliveries to an agent's worker: commit them as ``sent`` (the window allowing),
then write their ``deliver`` frames in order. Synchronous; never blocks."""

from __future__ import annotations

import logging
from typing import Any

from trio_relay.broker.delivery.core import Core
from trio_relay.broker.delivery.mailbox import Delivery, Mailbox
from trio_relay.errors import ChannelClosed, InputQueueFull, WorkerNotFound
from trio_relay.store import sql
from trio_relay.wire import Deliver, encode
from trio_relay.wire.vocabulary import OPEN_STATES

log = logging.getLogger(__name__)


def pump(core: Core, box: Mailbox) -> None:
    """Hand the next queued deliveries to the agent's worker, as the window allows. One
    whose deadline passed meanwhile (the broker was down, the agent held or away) is never
    handed over: it becomes a dead letter in the same commit. If the store refuses the
    commit, the timer task calls this again after ``store_retry``."""
    if core.closed or not box.running:
        return
    room = core.policy.window - len(box.inflight) - box.dispatching
    now = core.wall()
    chosen, expired = box.choose(now, room)
    if not chosen and not expired:
        return
    seqs = [d.seq for d in chosen]
    box.leaving.update(seqs)
    box.leaving.update(expired)
    box.dispatching += len(seqs)
    run = box.run
    error = f"deadline of {core.policy.deadline:g} s passed before it could be delivered"

    def write(conn: Any) -> tuple[list[int], list[int]]:
        gone = [
            s
            for s in expired
            if sql.transition(conn, s, OPEN_STATES, "dead_letter", now, last_error=error)
        ]
        sent = [
            s for s in seqs if sql.transition(conn, s, OPEN_STATES, "sent", now, add_attempt=True)
        ]
        return sent, gone

    def release() -> None:
        box.leaving.difference_update(seqs)
        box.leaving.difference_update(expired)
        box.dispatching -= len(seqs)

    def committed(result: tuple[list[int], list[int]]) -> None:
        sent, gone = result
        release()
        for seq in gone:
            dead = box.queued.get(seq)
            if dead is not None:
                core.dead_letter(box, dead, now, error)
        for seq in sent:
            delivery = box.queued.pop(seq, None) or box.inflight.pop(seq)
            delivery.state, delivery.updated_at = "sent", now
            delivery.attempts += 1
            box.inflight[seq] = delivery
            if run == box.run and box.running:
                write_frame(core, box, delivery)
        if box.inflight and box.stall_at is None and not box.busy:
            core.arm(box)
        pump(core, box)

    def aborted(_: BaseException) -> None:
        release()
        core.timers.at(box, "pump_at", core.policy.store_retry)

    core.submit(write, f"hand deliveries to {box.name!r}", committed, aborted)


def write_frame(core: Core, box: Mailbox, delivery: Delivery) -> None:
    """Queue the delivery's frame to the worker. A worker that is gone, or one that reads
    nothing, is no error here: its exit requeues the delivery; if it lives on, the retry
    timer sends it again. The first frame of a run carries the mailbox's preamble, if it
    has one, after the body (the worker dedups a frame sent again by id)."""
    body = delivery.body
    preamble = box.preamble_due and box.preamble
    if preamble:
        body = f"{body}\n\n{box.preamble}"
    frame = Deliver(
        delivery_id=core.did(delivery.seq),
        sender=delivery.sender,
        body=body,
        thread=delivery.thread,
    )
    try:
        core.transport.deliver(box.name, encode(frame))
        if preamble:  # given: the next frames go without it
            box.preamble_due = False
    except (WorkerNotFound, ChannelClosed, InputQueueFull) as exc:
        log.info("%s: delivery %s not written: %s", box.name, frame.delivery_id, exc)
