"""Agents' runs as the engine sees them: a run starts (hand its deliveries over), ends (what
it was given goes back to queued), or the agent will not come back (every open delivery
fails). Synchronous hooks; they only queue writes and never block."""

from __future__ import annotations

import logging

from trio_relay.broker.delivery.core import Core
from trio_relay.broker.delivery.handover import pump
from trio_relay.broker.delivery.mailbox import Mailbox
from trio_relay.store import sql
from trio_relay.wire import (
    AgentExited,
    AgentGaveUp,
    AgentSpawned,
    DeliveryRequeuedEvent,
    Event,
    SpawnFailedEvent,
)

log = logging.getLogger(__name__)


def on_event(core: Core, event: Event) -> None:
    """The event-log listener: agent runs start and end."""
    if isinstance(event, AgentSpawned):
        box = core.mailbox(event.agent)
        box.running = True
        box.run += 1
        box.preamble_due = box.preamble is not None
        pump(core, box)
    elif isinstance(event, AgentExited):
        box = core.mailbox(event.agent)
        box.running = False
        box.stall_at = None
        _requeue(core, box, event.reason, crashed=not event.intended)
    elif isinstance(event, SpawnFailedEvent):
        # A run that never got going; if the agent will not come back (a fault of ours
        # ends it), nothing will deliver its open deliveries.
        fate = core.transport.fate(event.agent)
        box = core.mailboxes.get(event.agent)
        if box is not None and fate is not None and not core.transport.gave_up(event.agent):
            fail_open(core, box, f"agent {box.name!r} will not restart: {fate}")
    elif isinstance(event, AgentGaveUp):
        box = core.mailbox(event.agent)
        fail_open(
            core,
            box,
            f"agent {box.name!r} will not restart: it gave up after"
            f" {event.attempts} restarts ({event.reason})",
        )


def forget(core: Core, agent: str) -> None:
    """Drop an ended agent's mailbox unless deliveries are still open in it."""
    box = core.mailboxes.get(agent)
    if box is None or box.running:
        return
    if box.idle:
        del core.mailboxes[agent]
        core.modes.pop(agent, None)


def _requeue(core: Core, box: Mailbox, reason: str, *, crashed: bool) -> None:
    """The agent's worker exited: what it was given goes back to queued; if it crashed
    and will not come back, every open delivery fails naming the crash."""
    now = core.wall()
    name = box.name
    # Its fate is settled when its exit is announced. Decided now, not in the requeue's
    # commit callback: a write submitted from there finds the store closed when a
    # shutdown follows the crash, and the crashed agent would be respawned. An agent that
    # gave up is failed by its agent_gave_up event, which follows at once.
    fate = core.transport.fate(name) if crashed and not core.transport.gave_up(name) else None

    def settle(committed: bool) -> None:
        # Not committed: the store still says "sent", which a restart reads as queued too
        # (and the next hand-over or failure moves from any open state); memory follows so
        # the next run gets them again. If it crashed for good, they fail all the same.
        for delivery in box.move_back():
            if committed:
                core.events.emit(
                    DeliveryRequeuedEvent(
                        agent=name, delivery_id=core.did(delivery.seq), reason=f"{name!r} {reason}"
                    )
                )
        pump(core, box)

    core.submit(
        lambda conn: sql.requeue_agent(conn, name, now),
        f"requeue the deliveries of {name!r}",
        lambda _: settle(True),
        lambda _: settle(False),
    )
    if fate is not None:
        fail_open(core, box, f"agent {name!r} {reason} and will not restart: {fate}")


def fail_open(core: Core, box: Mailbox, reason: str) -> None:
    """Every open delivery of the agent fails with ``reason``, and it is no longer one to
    respawn. Retried after ``store_retry`` until it commits, unless the agent is back."""
    now = core.wall()
    name = box.name

    def committed(seqs: list[int]) -> None:
        for seq in seqs:
            delivery = box.queued.get(seq) or box.inflight.get(seq)
            if delivery is not None:
                core.fail(box, delivery, now, reason)

    def again() -> None:
        if core.transport.active(name):
            # Spawned again meanwhile: its open deliveries are the new run's.
            log.info("%s: back meanwhile; its deliveries are not failed", name)
            return
        fail_open(core, box, reason)

    core.submit(
        lambda conn: sql.fail_open(conn, name, reason, now, stop_agent=True),
        f"fail the deliveries of {name!r}",
        committed,
        core.retry_later(f"fail the deliveries of {name!r}", again),
    )
