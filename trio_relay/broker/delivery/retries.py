"""No progress on a mailbox's head in time: send it again with a longer wait (the policy's
backoff), or, its attempts or its deadline spent, make it a dead letter. While the worker
reports that it holds it until the agent is ready (busy, starting, a dialog, a draft), the
wait starts again and no attempt is spent; only the deadline ends it. Called by the
timer task; synchronous, never blocks."""

from __future__ import annotations

from trio_relay.broker.delivery.core import Core
from trio_relay.broker.delivery.handover import pump, write_frame
from trio_relay.broker.delivery.mailbox import Delivery, Mailbox
from trio_relay.store import sql
from trio_relay.wire import DeliveryRetryingEvent


def on_stall(core: Core, box: Mailbox) -> None:
    """The head's wait ran out: retry it or give it up. A head with a write pending (a
    retry or dead letter not yet committed) is left to that write."""
    head = box.head()
    if head is None or head.seq in box.busy:
        return
    now = core.wall()
    waited = core.policy.ack_wait(head.attempts)
    error = f"no acknowledgement from {box.name!r} within {waited:g} s of attempt {head.attempts}"
    waiting = core.transport.waiting(box.name)
    if waiting is not None and now < head.deadline_at:
        core.arm(box)  # the worker holds it, visibly, until the agent is ready: no attempt spent
        return
    if waiting is not None:
        error = f"deadline of {core.policy.deadline:g} s passed while it waited ({waiting})"
    elif now >= head.deadline_at:
        error = f"deadline of {core.policy.deadline:g} s passed ({error})"
    elif head.attempts >= core.policy.max_attempts:
        error = f"{head.attempts} attempts spent ({error})"
    else:
        _retry(core, box, head, error, now)
        return
    _give_up(core, box, head, error, now)


def _give_up(core: Core, box: Mailbox, head: Delivery, error: str, now: float) -> None:
    seq, did = head.seq, core.did(head.seq)
    box.busy.add(seq)

    def committed(ok: bool) -> None:
        box.busy.discard(seq)
        if ok:
            core.dead_letter(box, head, now, error)
            pump(core, box)

    core.submit(
        lambda conn: sql.transition(
            conn, seq, ("sent", "injected"), "dead_letter", now, last_error=error
        ),
        f"dead-letter {did}",
        committed,
        lambda _: _busy_failed(core, box, seq),
    )


def _retry(core: Core, box: Mailbox, head: Delivery, error: str, now: float) -> None:
    seq, did, state = head.seq, core.did(head.seq), head.state
    box.busy.add(seq)
    run = box.run

    def committed(ok: bool) -> None:
        box.busy.discard(seq)
        if not ok:
            return
        head.attempts += 1
        head.last_error, head.updated_at = error, now
        core.events.emit(
            DeliveryRetryingEvent(
                agent=box.name, delivery_id=did, attempt=head.attempts, error=error
            )
        )
        if run == box.run and box.running and seq in box.inflight:
            write_frame(core, box, head)
            core.arm(box)

    core.submit(
        lambda conn: sql.transition(
            conn, seq, (state,), state, now, add_attempt=True, last_error=error
        ),
        f"retry {did}",
        committed,
        lambda _: _busy_failed(core, box, seq),
    )


def _busy_failed(core: Core, box: Mailbox, seq: int) -> None:
    """The retry or dead letter did not commit: look at the head again after
    ``store_retry``."""
    box.busy.discard(seq)
    core.timers.at(box, "stall_at", core.policy.store_retry)
