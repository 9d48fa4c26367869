"""The delivery engine's face: one object the broker creates, starts and calls; each call is
carried out by the module of its concern."""

from __future__ import annotations

import time
from collections.abc import Callable

from trio_relay.broker.delivery import (
    handover,
    hold,
    intake,
    lifecycle,
    queries,
    recovery,
    reports,
)
from trio_relay.broker.delivery.core import Core
from trio_relay.broker.delivery.policy import DeliveryPolicy, Receipt, Transport
from trio_relay.broker.delivery.retries import on_stall
from trio_relay.broker.events import EventLog
from trio_relay.store import sql
from trio_relay.store.engine import Store
from trio_relay.store.sql import DeliveryInfo
from trio_relay.wire import AgentOutput, Event


class DeliveryEngine:
    """The broker's side of messages. Create it, :meth:`recover` and start
    :meth:`run_timers` in a nursery, and wire :meth:`on_event` to the event log and
    :meth:`on_report` to the supervisor."""

    def __init__(
        self,
        store: Store,
        events: EventLog,
        transport: Transport,
        policy: DeliveryPolicy | None = None,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._core = Core(store, events, transport, policy or DeliveryPolicy(), wall)

    # What it was made with, read-only: its parts share them through the core.
    store = property(lambda self: self._core.store, doc="The store (read-only).")
    events = property(lambda self: self._core.events, doc="The event log (read-only).")
    transport = property(lambda self: self._core.transport, doc="The supervisor's view.")
    policy = property(lambda self: self._core.policy, doc="The policy (read-only).")

    @property
    def stale_reports(self) -> int:
        """Reports for deliveries not in flight (duplicates, late, unknown ids)."""
        return self._core.stale_reports

    # ------------------------------------------------------------ start and stop

    async def recover(self) -> list[sql.AgentRow]:
        """Load agents' modes and every open delivery; what was handed to a worker of the
        previous run is queued again. Returns the stored agents. Raises StoreError."""
        return await recovery.recover(self._core)

    async def run_timers(self) -> None:
        """Retries and dead letters, and dispatches the store could not commit. Runs until
        cancelled."""
        core = self._core
        await core.timers.run(
            core.mailboxes, lambda box: handover.pump(core, box), lambda box: on_stall(core, box)
        )

    def close_intake(self) -> None:
        """Refuse new sends and stop handing deliveries to workers (shutdown)."""
        self._core.closed = True

    # ------------------------------------------------------------ agents

    def register(self, agent: str, mode: str) -> None:
        """An agent (about to be) spawned, with its stored mode."""
        self._core.modes[agent] = mode
        self._core.mailbox(agent).mode = mode

    def set_preamble(self, agent: str, preamble: str | None) -> None:
        """Add ``preamble`` to the text of the first delivery each run of the agent is given
        (None: none). The stored message stays as it was sent."""
        self._core.mailbox(agent).preamble = preamble

    def agent_gone(self, agent: str, reason: str) -> None:
        """An agent that will not run (it could not be respawned): each of its open
        deliveries fails with ``reason``, and it is no longer one to respawn."""
        lifecycle.fail_open(self._core, self._core.mailbox(agent), f"agent {agent!r} {reason}")

    def agent_released(self, agent: str) -> None:
        """An agent released on request (not at shutdown): each of its open deliveries
        fails, as nobody will take them."""
        lifecycle.fail_open(self._core, self._core.mailbox(agent), f"agent {agent!r} was released")

    def forget(self, agent: str) -> None:
        """The supervisor forgot an ended agent: drop its mailbox unless deliveries are
        still open in it (they keep it until they end)."""
        lifecycle.forget(self._core, agent)

    # ------------------------------------------------------------ operations

    async def send(
        self,
        to: str,
        body: str,
        *,
        sender: str,
        thread: str | None = None,
        origin: str | None = None,
    ) -> Receipt:
        """Queue a message for agent ``to``; return once it is committed. ``origin``: the
        cluster delivery this one is (taken at most once: a second time returns the first
        one's receipt, in state ``taken before``).

        Raises WorkerNotFound (no such agent running or restarting), IntakeClosed,
        ValueError (bad sender, thread or body), StoreError (nothing was committed).
        Cancellation: a cancel point before the commit is queued; after that the call
        waits for the commit (see :meth:`Store.write`).
        """
        return await intake.send(self._core, to, body, sender, thread, origin)

    async def redeliver(self, delivery_id: str) -> Receipt:
        """Queue a dead letter or failed delivery again, with a fresh retry budget, in its
        original place in its agent's order. Raises DeliveryNotFound, DeliveryStateError,
        WorkerNotFound, IntakeClosed, StoreError. Cancellation: as :meth:`send`."""
        return await intake.redeliver(self._core, delivery_id)

    async def set_mode(self, agent: str, mode: str) -> None:
        """``hold``: keep new deliveries queued until :meth:`flush`; ``auto_inject``: hand
        them over as they come (and release what was held). Stored; survives restarts.
        Raises ValueError, WorkerNotFound, StoreError."""
        await hold.set_mode(self._core, agent, mode)

    def flush(self, agent: str) -> int:
        """In ``hold`` mode, release every queued delivery for injection, in order; returns
        how many (0 in ``auto_inject`` mode: nothing is held). Raises WorkerNotFound."""
        return hold.flush(self._core, agent)

    # ------------------------------------------------------------ queries

    async def wait(self, delivery_id: str, timeout: float) -> DeliveryInfo:
        """Wait until the delivery is terminal (verified, unverified, failed, dropped or
        dead_letter) and return it. Raises DeliveryNotFound, DeliveryTimeout (it carries
        on), StoreError. Cancellation: cancellable while waiting."""
        return await queries.wait(self._core, delivery_id, timeout)

    async def get(self, delivery_id: str) -> DeliveryInfo:
        """One delivery as stored. Raises DeliveryNotFound or StoreError."""
        return await queries.get(self._core, delivery_id)

    async def deliveries(
        self,
        agent: str | None = None,
        states: tuple[str, ...] | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[DeliveryInfo]:
        """The newest ``limit`` deliveries, oldest first (``after`` a delivery id: the first
        ``limit`` after it). Raises DeliveryNotFound, StoreError."""
        return await queries.deliveries(self._core, agent, states, limit, after)

    def mode(self, agent: str) -> str:
        """Raises WorkerNotFound."""
        return self._core.known(agent).mode

    def open_count(self, agent: str) -> int:
        """How many of the agent's deliveries are open (queued or handed to it); 0 for an
        agent the engine does not know."""
        box = self._core.mailboxes.get(agent)
        return 0 if box is None else len(box.queued) + len(box.inflight)

    def pending(self, agent: str) -> list[DeliveryInfo]:
        """The agent's open deliveries (queued, sent, injected), in order. Raises
        WorkerNotFound."""
        return queries.pending(self._core, agent)

    def statistics(self) -> dict[str, int]:
        return queries.statistics(self._core)

    # ------------------------------------------------------------ hooks (synchronous)

    def on_event(self, event: Event) -> None:
        """The event-log listener: agent runs start and end (output, most events, is
        not looked at)."""
        if type(event) is not AgentOutput:
            lifecycle.on_event(self._core, event)

    def on_report(self, agent: str, frame: reports.Report) -> None:
        """The supervisor's delivery-report hook: commit the worker's report, then announce.
        A report the store cannot commit is tried again later (see the package's doc)."""
        reports.on_report(self._core, agent, frame)
