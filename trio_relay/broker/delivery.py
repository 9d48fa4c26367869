"""Durable delivery: per-agent queues, dispatch to workers, retries, dead letters, crashes.

The state machine; every change is one conditional ``UPDATE`` committed before its event::

    queued -> sent -> injected -> verified | unverified | failed
    queued -> dropped                 evicted: the agent's cap of pending deliveries
    queued -> dead_letter             its deadline passed before it could be handed over
    sent | injected -> queued         the worker exited; redelivered when it is back
    sent | injected -> dead_letter    never acknowledged: attempts or deadline spent
    queued | sent | injected -> failed  the agent exited and will not come back, or was released
    dead_letter | failed -> queued    redeliver
    dead_letter -> verified | unverified  the worker's report came after all (late)

``unverified`` is what the worker reports as ``timeout_fallback``: injected, not seen echoed
(announced as ``delivery_unverified``, never as ``delivery_verified``).

A write queued from a hook that the store cannot commit (a worker's report, failing the
deliveries of an agent that will not come back) is tried again every ``store_retry``
seconds until it commits; each failure is a ``store_error`` event.

How it stays consistent without locks: memory (the open deliveries, per agent) changes only
in the store's ``on_commit`` callbacks, which run in commit order, so it follows the database
exactly. A decision taken before a commit (which delivery to evict, which to hand to the
worker) *claims* its deliveries so no other decision takes them meanwhile, and every
``UPDATE`` is conditional on the state it leaves, so a stale decision changes nothing.

Worker reports and agent lifecycle events arrive through synchronous hooks
(:meth:`DeliveryEngine.on_report`, :meth:`DeliveryEngine.on_event`) that only queue writes;
one timer task drives retries. Nothing here blocks the Trio thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from trio_relay.broker.events import EventLog
from trio_relay.errors import (
    ChannelClosed,
    DeliveryNotFound,
    DeliveryStateError,
    DeliveryTimeout,
    IntakeClosed,
    StoreError,
    WorkerNotFound,
)
from trio_relay.store import sql
from trio_relay.store.engine import Store
from trio_relay.store.sql import DeliveryInfo
from trio_relay.wire import (
    AgentExited,
    AgentGaveUp,
    AgentSpawned,
    DeadLetterEvent,
    Deliver,
    DeliveryDroppedEvent,
    DeliveryFailed,
    DeliveryFailedEvent,
    DeliveryInjected,
    DeliveryInjectedEvent,
    DeliveryQueuedEvent,
    DeliveryRequeuedEvent,
    DeliveryRetryingEvent,
    DeliveryUnverifiedEvent,
    DeliveryVerified,
    DeliveryVerifiedEvent,
    Event,
    encode,
)
from trio_relay.wire.vocabulary import INJECT_MODES, OPEN_STATES

log = logging.getLogger(__name__)

MODES = INJECT_MODES


@dataclass(frozen=True)
class DeliveryPolicy:
    """Queue and retry settings (seconds). A delivery handed to a worker that reports no
    progress for ``ack_timeout`` (times ``backoff`` per attempt, at most ``max_ack_timeout``)
    is sent again; after ``max_attempts`` sends, or ``deadline`` after it was queued, it
    becomes a dead letter. At most ``window`` are handed to a worker at once; at most
    ``cap`` wait (queued) per agent, the oldest evicted beyond that."""

    cap: int = 256
    window: int = 8
    ack_timeout: float = 30.0
    backoff: float = 2.0
    max_ack_timeout: float = 300.0
    max_attempts: int = 5
    deadline: float = 3600.0
    max_body: int = 256 * 1024
    store_retry: float = 1.0

    def __post_init__(self) -> None:
        if self.cap < 1 or self.window < 1 or self.max_attempts < 1:
            raise ValueError("cap, window and max_attempts must be at least 1")
        if min(self.ack_timeout, self.max_ack_timeout, self.deadline, self.store_retry) <= 0:
            raise ValueError("timeouts must be positive")
        if self.backoff < 1:
            raise ValueError("backoff must be at least 1")

    def ack_wait(self, attempts: int) -> float:
        """How long attempt number ``attempts`` (1-based) waits for progress."""
        return min(self.max_ack_timeout, self.ack_timeout * self.backoff ** max(attempts - 1, 0))


@dataclass(frozen=True)
class Receipt:
    """The answer to a send: committed as ``state`` (``queued``); ``evicted`` are the ids
    of older deliveries dropped to make room."""

    delivery_id: str
    agent: str
    state: str
    evicted: tuple[str, ...] = ()


class Transport(Protocol):
    """What the engine needs from the supervisor."""

    def active(self, agent: str) -> bool:
        """Running, starting or restarting: a delivery for it will be handed over."""

    def deliver(self, agent: str, frame: bytes) -> None:
        """Queue one frame to the agent's worker. Raises WorkerNotFound or ChannelClosed."""

    def fate(self, agent: str) -> str | None:
        """None if the agent is running or coming back (or was released); otherwise why it
        will not come back."""


class _Delivery:
    __slots__ = (
        "seq",
        "agent",
        "sender",
        "body",
        "thread",
        "state",
        "attempts",
        "created_at",
        "updated_at",
        "deadline_at",
        "last_error",
        "verification",
        "reason",
    )

    def __init__(self, row: Any) -> None:
        (
            self.seq,
            self.agent,
            self.sender,
            self.body,
            self.thread,
            self.state,
            self.attempts,
            self.created_at,
            self.updated_at,
            self.deadline_at,
            self.last_error,
            self.verification,
            self.reason,
        ) = row

    def info(self, tag: str) -> DeliveryInfo:
        return sql.row_info(tag, [getattr(self, name) for name in self.__slots__])


class _Waiter:
    __slots__ = ("event", "info")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.info: DeliveryInfo | None = None


class _Mailbox:
    """One agent's open deliveries: ``queued`` and ``inflight`` (handed to its worker),
    each ordered by seq."""

    def __init__(self, name: str, mode: str) -> None:
        self.name = name
        self.mode = mode
        self.queued: dict[int, _Delivery] = {}
        self.inflight: dict[int, _Delivery] = {}
        self.leaving: set[int] = set()  # queued ones claimed by a pending eviction or dispatch
        self.busy: set[int] = set()  # in-flight ones with a pending retry or dead letter
        self.incoming = 0  # sends being committed
        self.dispatching = 0
        self.flushed: set[int] = set()  # released by a flush while in hold mode
        self.running = False
        self.run = 0
        self.stall_at: float | None = None  # trio time: retry the head of inflight
        self.pump_at: float | None = None  # trio time: try dispatching again (store failed)

    def add_queued(self, delivery: _Delivery) -> None:
        if self.queued and delivery.seq < next(reversed(self.queued)):
            self.queued[delivery.seq] = delivery
            self.queued = dict(sorted(self.queued.items()))
        else:
            self.queued[delivery.seq] = delivery

    def claim_eviction(self, cap: int) -> int | None:
        """The oldest unclaimed queued delivery to evict if one more would exceed ``cap``."""
        if len(self.queued) - len(self.leaving) + self.incoming < cap:
            return None
        for seq in self.queued:
            if seq not in self.leaving:
                self.leaving.add(seq)
                return seq
        return None


class DeliveryEngine:
    """The broker's side of messages. Create it, :meth:`start` it in a nursery, and wire
    :meth:`on_event` to the event log and :meth:`on_report` to the supervisor."""

    def __init__(
        self,
        store: Store,
        events: EventLog,
        transport: Transport,
        policy: DeliveryPolicy | None = None,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.events = events
        self.transport = transport
        self.policy = policy or DeliveryPolicy()
        self._wall = wall
        self._tag = store.tag
        self._mailboxes: dict[str, _Mailbox] = {}
        self._modes: dict[str, str] = {}
        self._open: dict[int, _Delivery] = {}
        self._waiters: dict[int, _Waiter] = {}
        self._closed = False
        self._wake = trio.Event()
        self._timer_target = math.inf
        self._deferred: list[tuple[float, int, Callable[[], None]]] = []  # store retries
        self._deferred_ids = itertools.count()
        #: Reports for deliveries not in flight (duplicates, late, unknown ids).
        self.stale_reports = 0

    # ------------------------------------------------------------ start and stop

    async def recover(self) -> list[sql.AgentRow]:
        """Load agents' modes and every open delivery; what was handed to a worker of the
        previous run is queued again. Returns the stored agents. Raises StoreError."""
        agents = await self.store.read(sql.load_agents, "load agents")
        for agent in agents:
            self._modes[agent.name] = agent.mode
        now = self._wall()
        requeued = await self.store.write(
            lambda conn: sql.reset_in_flight(conn, now), "requeue deliveries of the last run"
        )
        rows = await self.store.read(sql.load_open, "load open deliveries")
        for row in rows:
            delivery = _Delivery(row)
            self._mailbox(delivery.agent).queued[delivery.seq] = delivery
            self._open[delivery.seq] = delivery
        if rows:
            log.info("recovered %d open deliveries (%d were in flight)", len(rows), requeued)
        return agents

    async def run_timers(self) -> None:
        """Retries and dead letters, and dispatches the store could not commit. Runs until
        cancelled."""
        while True:
            now = trio.current_time()
            soonest = math.inf
            for box in list(self._mailboxes.values()):
                if box.pump_at is not None and box.pump_at <= now:
                    box.pump_at = None
                    self._pump(box)
                if box.stall_at is not None and box.stall_at <= now:
                    box.stall_at = None
                    self._on_stall(box)
                for at in (box.pump_at, box.stall_at):
                    if at is not None:
                        soonest = min(soonest, at)
            while self._deferred and self._deferred[0][0] <= now:
                _, _, again = heapq.heappop(self._deferred)
                again()
            if self._deferred:
                soonest = min(soonest, self._deferred[0][0])
            self._timer_target = soonest
            self._wake = trio.Event()
            with trio.move_on_at(soonest):
                await self._wake.wait()

    def close_intake(self) -> None:
        """Refuse new sends and stop handing deliveries to workers (shutdown)."""
        self._closed = True

    # ------------------------------------------------------------ operations

    def register(self, agent: str, mode: str) -> None:
        """An agent (about to be) spawned, with its stored mode."""
        self._modes[agent] = mode
        self._mailbox(agent).mode = mode

    def agent_gone(self, agent: str, reason: str) -> None:
        """An agent that will not run (it could not be respawned): each of its open
        deliveries fails with ``reason``, and it is no longer one to respawn."""
        self._fail_open(self._mailbox(agent), f"agent {agent!r} {reason}")

    def forget(self, agent: str) -> None:
        """The supervisor forgot an ended agent: drop its mailbox unless deliveries are
        still open in it (they keep it until they end)."""
        box = self._mailboxes.get(agent)
        if box is None or box.running:
            return
        if not (box.queued or box.inflight or box.incoming or box.dispatching or box.busy):
            del self._mailboxes[agent]
            self._modes.pop(agent, None)

    def agent_released(self, agent: str) -> None:
        """An agent released on request (not at shutdown): each of its open deliveries
        fails, as nobody will take them."""
        self._fail_open(self._mailbox(agent), f"agent {agent!r} was released")

    async def send(self, to: str, body: str, *, sender: str, thread: str | None = None) -> Receipt:
        """Queue a message for agent ``to``; return once it is committed.

        Raises WorkerNotFound (no such agent running or restarting), IntakeClosed,
        ValueError (bad sender, thread or body), StoreError (nothing was committed).
        Cancellation: a cancel point before the commit is queued; after that the call
        waits for the commit (see :meth:`Store.write`).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_intake()
        _validate(sender, body, thread, self.policy.max_body)
        if not self.transport.active(to):
            raise WorkerNotFound(to)
        box = self._mailbox(to)
        evict = box.claim_eviction(self.policy.cap)
        box.incoming += 1
        evicts = () if evict is None else (evict,)
        settle = self._claims(box, evicts)
        now = self._wall()
        deadline_at = now + self.policy.deadline
        reason = f"{self.policy.cap} deliveries were already pending for {to!r} (the cap)"

        def write(conn: Any) -> tuple[int, list[int]]:
            return sql.insert_delivery(
                conn, to, sender, body, thread, now, deadline_at, evicts, reason
            )

        def committed(result: tuple[int, list[int]]) -> None:
            seq, dropped = result
            settle()
            new_id = sql.delivery_id(self._tag, seq)
            self._drop(box, dropped, reason, new_id, now)
            delivery = _Delivery(
                (
                    seq,
                    to,
                    sender,
                    body,
                    thread,
                    "queued",
                    0,
                    now,
                    now,
                    deadline_at,
                    None,
                    None,
                    None,
                )
            )
            box.add_queued(delivery)
            self._open[seq] = delivery
            self.events.emit(
                DeliveryQueuedEvent(agent=to, delivery_id=new_id, sender=sender, thread=thread)
            )
            self._pump(box)

        try:
            seq, dropped = await self.store.write(
                write,
                f"queue a delivery for {to!r}",
                on_commit=committed,
                on_abort=lambda _: settle(),
            )
        finally:
            settle()  # cancelled before the write was queued: nothing else releases them
        return Receipt(
            sql.delivery_id(self._tag, seq),
            to,
            "queued",
            tuple(sql.delivery_id(self._tag, s) for s in dropped),
        )

    async def redeliver(self, delivery_id: str) -> Receipt:
        """Queue a dead letter or failed delivery again, with a fresh retry budget, in its
        original place in its agent's order. Raises DeliveryNotFound, DeliveryStateError,
        WorkerNotFound, IntakeClosed, StoreError."""
        info = await self.get(delivery_id)
        self._check_intake()
        if info.state not in ("dead_letter", "failed") or info.seq in self._open:
            raise DeliveryStateError(
                f"delivery {delivery_id!r} is {info.state}; only dead letters and failed"
                " deliveries can be redelivered"
            )
        if not self.transport.active(info.agent):
            raise WorkerNotFound(info.agent)
        box = self._mailbox(info.agent)
        evict = box.claim_eviction(self.policy.cap)
        evicts = () if evict is None else (evict,)
        box.incoming += 1
        settle = self._claims(box, evicts)
        now = self._wall()
        deadline_at = now + self.policy.deadline
        reason = f"{self.policy.cap} deliveries were already pending for {info.agent!r} (the cap)"

        def committed(result: tuple[bool, list[int]]) -> None:
            ok, dropped = result
            settle()
            if not ok:
                return
            self._drop(box, dropped, reason, delivery_id, now)
            delivery = _Delivery(
                (
                    info.seq,
                    info.agent,
                    info.sender,
                    info.body,
                    info.thread,
                    "queued",
                    0,
                    info.created_at,
                    now,
                    deadline_at,
                    info.last_error,
                    None,
                    None,
                )
            )
            box.add_queued(delivery)
            self._open[info.seq] = delivery
            self.events.emit(
                DeliveryQueuedEvent(
                    agent=info.agent,
                    delivery_id=delivery_id,
                    sender=info.sender,
                    thread=info.thread,
                    redelivery=True,
                )
            )
            self._pump(box)

        try:
            ok, dropped = await self.store.write(
                lambda conn: sql.redeliver(conn, info.seq, now, deadline_at, evicts, reason),
                f"redeliver {delivery_id}",
                on_commit=committed,
                on_abort=lambda _: settle(),
            )
        finally:
            settle()  # cancelled before the write was queued: nothing else releases them
        if not ok:
            raise DeliveryStateError(f"delivery {delivery_id!r} changed state meanwhile")
        return Receipt(
            delivery_id,
            info.agent,
            "queued",
            tuple(sql.delivery_id(self._tag, s) for s in dropped),
        )

    async def wait(self, delivery_id: str, timeout: float) -> DeliveryInfo:
        """Wait until the delivery is terminal (verified, unverified, failed, dropped or
        dead_letter) and return it. Raises DeliveryNotFound, DeliveryTimeout (it carries
        on), StoreError. Cancellation: cancellable while waiting."""
        seq = self._seq(delivery_id)
        with trio.move_on_after(timeout):
            while True:
                delivery = self._open.get(seq)
                if delivery is None:
                    info = await self.get(delivery_id)
                    if info.terminal:
                        return info
                    await trio.lowlevel.checkpoint()  # reopened meanwhile: wait on it
                    continue
                waiter = self._waiters.setdefault(seq, _Waiter())
                await waiter.event.wait()
                if waiter.info is not None:
                    return waiter.info
        delivery = self._open.get(seq)
        raise DeliveryTimeout(delivery_id, timeout, delivery.state if delivery else "open")

    async def get(self, delivery_id: str) -> DeliveryInfo:
        """One delivery as stored. Raises DeliveryNotFound or StoreError."""
        seq = self._seq(delivery_id)
        row = await self.store.read(lambda conn: sql.get_delivery(conn, seq), "read a delivery")
        if row is None:
            raise DeliveryNotFound(delivery_id)
        return sql.row_info(self._tag, row)

    async def deliveries(
        self, agent: str | None = None, states: tuple[str, ...] | None = None, limit: int = 1000
    ) -> list[DeliveryInfo]:
        """The newest ``limit`` deliveries, oldest first. Raises StoreError."""
        rows = await self.store.read(
            lambda conn: sql.list_deliveries(conn, agent, states, limit), "list deliveries"
        )
        return [sql.row_info(self._tag, row) for row in rows]

    async def set_mode(self, agent: str, mode: str) -> None:
        """``hold``: keep new deliveries queued until :meth:`flush`; ``auto_inject``: hand
        them over as they come (and release what was held). Stored; survives restarts.
        Raises ValueError, WorkerNotFound, StoreError."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        box = self._known(agent)

        def committed(_: bool) -> None:
            box.mode = self._modes[agent] = mode
            if mode == "auto_inject":
                box.flushed.clear()
            self._pump(box)

        await self.store.write(
            lambda conn: sql.set_agent_mode(conn, agent, mode),
            f"set the mode of {agent!r}",
            on_commit=committed,
        )

    def mode(self, agent: str) -> str:
        """Raises WorkerNotFound."""
        return self._known(agent).mode

    def open_count(self, agent: str) -> int:
        """How many of the agent's deliveries are open (queued or handed to it); 0 for an
        agent the engine does not know."""
        box = self._mailboxes.get(agent)
        return 0 if box is None else len(box.queued) + len(box.inflight)

    def pending(self, agent: str) -> list[DeliveryInfo]:
        """The agent's open deliveries (queued, sent, injected), in order. Raises
        WorkerNotFound."""
        box = self._known(agent)
        opened = sorted([*box.queued.values(), *box.inflight.values()], key=lambda d: d.seq)
        return [d.info(self._tag) for d in opened]

    def flush(self, agent: str) -> int:
        """In ``hold`` mode, release every queued delivery for injection, in order; returns
        how many (0 in ``auto_inject`` mode: nothing is held). Raises WorkerNotFound."""
        box = self._known(agent)
        if box.mode != "hold":
            return 0
        released = [seq for seq in box.queued if seq not in box.flushed]
        box.flushed.update(released)
        self._pump(box)
        return len(released)

    def statistics(self) -> dict[str, int]:
        return {
            "open": len(self._open),
            "mailboxes": len(self._mailboxes),
            "stale_reports": self.stale_reports,
            "commits": self.store.commits,
            "writes": self.store.writes,
            "store_failures": self.store.failures,
        }

    # ------------------------------------------------------------ hooks (synchronous)

    def on_event(self, event: Event) -> None:
        """The event-log listener: agent runs start and end."""
        kind = type(event)
        if kind is AgentSpawned:
            box = self._mailbox(event.agent)  # type: ignore[attr-defined]
            box.running = True
            box.run += 1
            self._pump(box)
        elif kind is AgentExited:
            box = self._mailbox(event.agent)  # type: ignore[attr-defined]
            box.running = False
            box.stall_at = None
            self._requeue(box, event.reason, crashed=not event.intended)  # type: ignore[attr-defined]
        elif kind is AgentGaveUp:
            box = self._mailbox(event.agent)  # type: ignore[attr-defined]
            self._fail_open(
                box,
                f"agent {box.name!r} will not restart: it gave up after"
                f" {event.attempts} restarts ({event.reason})",  # type: ignore[attr-defined]
            )

    def on_report(
        self, agent: str, frame: DeliveryInjected | DeliveryVerified | DeliveryFailed
    ) -> None:
        """The supervisor's delivery-report hook: commit the worker's report, then announce.
        A report the store cannot commit is tried again later (see the module's doc)."""
        box = self._mailboxes.get(agent)
        seq = sql.parse_delivery_id(self._tag, frame.delivery_id)
        if seq is None:  # not one of ours (a deliver frame written by hand): relay it as is
            self._relay_foreign(agent, frame)
            return
        delivery = box.inflight.get(seq) if box is not None else None
        if box is None or delivery is None:
            if type(frame) is DeliveryVerified and seq not in self._open:
                self._late_report(agent, seq, frame)
                return
            self.stale_reports += 1
            log.debug("%s: report for %s, not in flight: ignored", agent, frame.delivery_id)
            return
        self._arm(box)  # progress: the head gets a fresh wait
        now = self._wall()
        did = frame.delivery_id
        again = self._retry_later(
            f"record the report on {did}", lambda: self.on_report(agent, frame)
        )
        if type(frame) is DeliveryInjected:
            if delivery.state != "sent":
                self.stale_reports += 1
                return

            def injected(ok: bool) -> None:
                if not ok:
                    self.stale_reports += 1
                    return
                delivery.state, delivery.updated_at = "injected", now
                self.events.emit(DeliveryInjectedEvent(agent=agent, delivery_id=did))

            self._submit(
                lambda conn: sql.transition(conn, seq, ("sent",), "injected", now),
                f"record {did} injected",
                injected,
                again,
            )
        elif type(frame) is DeliveryVerified:
            state = "verified" if frame.verification == "echo" else "unverified"
            fields = {"verification": frame.verification, "reason": frame.reason}

            def verified(ok: bool) -> None:
                if not ok:
                    # Dead-lettered meanwhile (its write was queued first): a late report.
                    self._late_report(agent, seq, frame)
                    return
                self._finish(box, delivery, state, now, **fields)
                self._announce_verified(agent, frame)
                self._pump(box)

            self._submit(
                lambda conn: sql.transition(conn, seq, ("sent", "injected"), state, now, **fields),
                f"record {did} {state}",
                verified,
                again,
            )
        else:
            reason = frame.reason

            def failed(ok: bool) -> None:
                if not ok:
                    self.stale_reports += 1
                    return
                self._finish(box, delivery, "failed", now, reason=reason)
                self.events.emit(DeliveryFailedEvent(agent=agent, delivery_id=did, reason=reason))
                self._pump(box)

            self._submit(
                lambda conn: sql.transition(
                    conn, seq, ("sent", "injected"), "failed", now, reason=reason
                ),
                f"record {did} failed",
                failed,
                again,
            )

    def _late_report(self, agent: str, seq: int, frame: DeliveryVerified) -> None:
        """The worker verified (or could not verify) a delivery that had been given up as
        a dead letter: it did reach the agent, so the store records it and it is announced.
        Anything else (a delivery already verified, another agent's) is a stale report."""
        state = "verified" if frame.verification == "echo" else "unverified"
        fields = {"verification": frame.verification, "reason": frame.reason}
        now = self._wall()

        def recorded(ok: bool) -> None:
            if not ok:
                self.stale_reports += 1
                log.debug("%s: report for %s, not in flight: ignored", agent, frame.delivery_id)
                return
            log.info(
                "%s: %s was a dead letter; reported %s after all", agent, frame.delivery_id, state
            )
            self._announce_verified(agent, frame)

        self._submit(
            lambda conn: sql.late_report(conn, seq, agent, state, now, **fields),
            f"record {frame.delivery_id} {state} (late)",
            recorded,
            self._retry_later(
                f"record the late report on {frame.delivery_id}",
                lambda: self._late_report(agent, seq, frame),
            ),
        )

    def _announce_verified(self, agent: str, frame: DeliveryVerified) -> None:
        if frame.verification == "echo":
            self.events.emit(
                DeliveryVerifiedEvent(
                    agent=agent,
                    delivery_id=frame.delivery_id,
                    verification=frame.verification,
                    reason=frame.reason,
                )
            )
        else:
            self.events.emit(
                DeliveryUnverifiedEvent(
                    agent=agent,
                    delivery_id=frame.delivery_id,
                    verification=frame.verification,
                    reason=frame.reason,
                )
            )

    def _relay_foreign(
        self, agent: str, frame: DeliveryInjected | DeliveryVerified | DeliveryFailed
    ) -> None:
        """A report about a delivery id this store never issued: nothing to record, so it
        is announced as the worker made it."""
        did = frame.delivery_id
        if type(frame) is DeliveryInjected:
            self.events.emit(DeliveryInjectedEvent(agent=agent, delivery_id=did))
        elif type(frame) is DeliveryVerified:
            self._announce_verified(agent, frame)
        else:
            self.events.emit(DeliveryFailedEvent(agent=agent, delivery_id=did, reason=frame.reason))

    # ------------------------------------------------------------ internals

    def _check_intake(self) -> None:
        if self._closed:
            raise IntakeClosed("the broker is shutting down; no new deliveries")

    def _seq(self, delivery_id: str) -> int:
        seq = sql.parse_delivery_id(self._tag, delivery_id)
        if seq is None:
            raise DeliveryNotFound(delivery_id)
        return seq

    def _mailbox(self, agent: str) -> _Mailbox:
        box = self._mailboxes.get(agent)
        if box is None:
            box = self._mailboxes[agent] = _Mailbox(agent, self._modes.get(agent, "auto_inject"))
        return box

    def _known(self, agent: str) -> _Mailbox:
        if agent not in self._mailboxes and not self.transport.active(agent):
            raise WorkerNotFound(agent)
        return self._mailbox(agent)

    def _submit(
        self,
        fn: Callable[[Any], Any],
        what: str,
        committed: Callable[[Any], None],
        aborted: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Queue a write from a synchronous hook. A store that is closed counts as a
        failed write (``aborted``)."""
        try:
            self.store.submit(fn, what, on_commit=committed, on_abort=aborted)
        except StoreError as exc:
            log.warning("%s", exc)
            if aborted is not None:
                aborted(exc)

    def _claims(self, box: _Mailbox, evicts: tuple[int, ...]) -> Callable[[], None]:
        """Release a send's claims (one incoming, the evictions): idempotent, so whatever
        runs first (the commit, the abort, the caller's own exit) releases them once."""
        done = False

        def settle() -> None:
            nonlocal done
            if not done:
                done = True
                box.incoming -= 1
                box.leaving.difference_update(evicts)

        return settle

    def _defer(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` again after ``store_retry`` (a write the store could not commit)."""
        at = trio.current_time() + self.policy.store_retry
        heapq.heappush(self._deferred, (at, next(self._deferred_ids), fn))
        if at < self._timer_target:
            self._timer_target = at
            self._wake.set()

    def _retry_later(self, what: str, fn: Callable[[], None]) -> Callable[[BaseException], None]:
        """An abort handler: try ``fn`` again later, unless the store is closed for good
        (the next start recovers from what was committed)."""

        def aborted(exc: BaseException) -> None:
            if self.store.closed:
                log.warning("%s: not retried, the store is closed: %s", what, exc)
                return
            log.warning("%s: will retry in %g s: %s", what, self.policy.store_retry, exc)
            self._defer(fn)

        return aborted

    def _drop(self, box: _Mailbox, seqs: list[int], reason: str, by: str, now: float) -> None:
        for seq in seqs:
            delivery = box.queued.pop(seq)
            self._finish(box, delivery, "dropped", now, reason=reason)
            self.events.emit(
                DeliveryDroppedEvent(
                    agent=box.name,
                    delivery_id=sql.delivery_id(self._tag, seq),
                    reason=reason,
                    evicted_by=by,
                )
            )

    def _finish(
        self, box: _Mailbox, delivery: _Delivery, state: str, now: float, **fields: Any
    ) -> None:
        """A committed terminal state: out of memory, waiters woken."""
        seq = delivery.seq
        was_head = bool(box.inflight) and next(iter(box.inflight)) == seq
        box.queued.pop(seq, None)
        box.inflight.pop(seq, None)
        box.flushed.discard(seq)
        self._open.pop(seq, None)
        delivery.state, delivery.updated_at = state, now
        for name, value in fields.items():
            setattr(delivery, name, value)
        if was_head:
            self._arm(box)  # a new head (or none): its own wait
        waiter = self._waiters.pop(seq, None)
        if waiter is not None:
            waiter.info = delivery.info(self._tag)
            waiter.event.set()

    def _pump(self, box: _Mailbox) -> None:
        """Hand the next queued deliveries to the agent's worker, as the window allows:
        commit them as sent, then write their frames in order. One whose deadline passed
        meanwhile (the broker was down, the agent held or away) is never handed over: it
        becomes a dead letter in the same commit."""
        if self._closed or not box.running:
            return
        room = self.policy.window - len(box.inflight) - box.dispatching
        now = self._wall()
        chosen: list[_Delivery] = []
        expired: list[int] = []
        for seq, delivery in box.queued.items():
            if seq in box.leaving:
                continue
            if box.mode == "hold" and seq not in box.flushed:
                break
            if now >= delivery.deadline_at:
                expired.append(seq)
                continue
            if len(chosen) >= room:
                break
            chosen.append(delivery)
        if not chosen and not expired:
            return
        seqs = [d.seq for d in chosen]
        box.leaving.update(seqs)
        box.leaving.update(expired)
        box.dispatching += len(seqs)
        run = box.run
        error = f"deadline of {self.policy.deadline:g} s passed before it could be delivered"

        def write(conn: Any) -> tuple[list[int], list[int]]:
            gone = [
                s
                for s in expired
                if sql.transition(conn, s, OPEN_STATES, "dead_letter", now, last_error=error)
            ]
            sent = [
                s
                for s in seqs
                if sql.transition(conn, s, OPEN_STATES, "sent", now, add_attempt=True)
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
                if dead is None:
                    continue
                self._finish(box, dead, "dead_letter", now, last_error=error)
                self.events.emit(
                    DeadLetterEvent(
                        agent=box.name,
                        delivery_id=sql.delivery_id(self._tag, seq),
                        attempts=dead.attempts,
                        error=error,
                    )
                )
            for seq in sent:
                delivery = box.queued.pop(seq, None) or box.inflight.pop(seq)
                delivery.state, delivery.updated_at = "sent", now
                delivery.attempts += 1
                box.inflight[seq] = delivery
                if run == box.run and box.running:
                    self._write(box, delivery)
            if box.inflight and box.stall_at is None and not box.busy:
                self._arm(box)
            self._pump(box)

        def aborted(_: BaseException) -> None:
            release()
            self._at(box, "pump_at", self.policy.store_retry)

        self._submit(write, f"hand deliveries to {box.name!r}", committed, aborted)

    def _write(self, box: _Mailbox, delivery: _Delivery) -> None:
        frame = Deliver(
            delivery_id=sql.delivery_id(self._tag, delivery.seq),
            sender=delivery.sender,
            body=delivery.body,
            thread=delivery.thread,
        )
        try:
            self.transport.deliver(box.name, encode(frame))
        except (WorkerNotFound, ChannelClosed) as exc:
            # Its exit requeues it; if the worker lives on, the retry timer sends it again.
            log.info("%s: delivery %s not written: %s", box.name, frame.delivery_id, exc)

    def _at(self, box: _Mailbox, which: str, delay: float) -> None:
        at = trio.current_time() + delay
        setattr(box, which, at)
        if at < self._timer_target:
            self._timer_target = at
            self._wake.set()

    def _arm(self, box: _Mailbox) -> None:
        """(Re)start the wait for progress on the head of the in-flight deliveries."""
        if not box.inflight:
            box.stall_at = None
            return
        head = next(iter(box.inflight.values()))
        wait = self.policy.ack_wait(head.attempts)
        # The deadline cuts the wait short, but never below one full acknowledgement wait:
        # a delivery that was handed over (before its deadline) gets its chance to be seen.
        left = head.deadline_at - self._wall()
        self._at(box, "stall_at", max(self.policy.ack_timeout, min(wait, left)))

    def _on_stall(self, box: _Mailbox) -> None:
        """No progress on the head in time: send it again, or make it a dead letter."""
        if not box.inflight:
            return
        head = next(iter(box.inflight.values()))
        if head.seq in box.busy:
            return
        now = self._wall()
        seq, did = head.seq, sql.delivery_id(self._tag, head.seq)
        waited = self.policy.ack_wait(head.attempts)
        error = (
            f"no acknowledgement from {box.name!r} within {waited:g} s of attempt {head.attempts}"
        )
        if now >= head.deadline_at:
            error = f"deadline of {self.policy.deadline:g} s passed ({error})"
        elif head.attempts >= self.policy.max_attempts:
            error = f"{head.attempts} attempts spent ({error})"
        else:
            self._retry(box, head, error, now)
            return
        box.busy.add(seq)

        def committed(ok: bool) -> None:
            box.busy.discard(seq)
            if ok:
                self._finish(box, head, "dead_letter", now, last_error=error)
                self.events.emit(
                    DeadLetterEvent(
                        agent=box.name, delivery_id=did, attempts=head.attempts, error=error
                    )
                )
                self._pump(box)

        self._submit(
            lambda conn: sql.transition(
                conn, seq, ("sent", "injected"), "dead_letter", now, last_error=error
            ),
            f"dead-letter {did}",
            committed,
            lambda _: self._after_busy_failure(box, seq),
        )

    def _retry(self, box: _Mailbox, head: _Delivery, error: str, now: float) -> None:
        seq, did, state = head.seq, sql.delivery_id(self._tag, head.seq), head.state
        box.busy.add(seq)
        run = box.run

        def committed(ok: bool) -> None:
            box.busy.discard(seq)
            if not ok:
                return
            head.attempts += 1
            head.last_error, head.updated_at = error, now
            self.events.emit(
                DeliveryRetryingEvent(
                    agent=box.name, delivery_id=did, attempt=head.attempts, error=error
                )
            )
            if run == box.run and box.running and seq in box.inflight:
                self._write(box, head)
                self._arm(box)

        self._submit(
            lambda conn: sql.transition(
                conn, seq, (state,), state, now, add_attempt=True, last_error=error
            ),
            f"retry {did}",
            committed,
            lambda _: self._after_busy_failure(box, seq),
        )

    def _after_busy_failure(self, box: _Mailbox, seq: int) -> None:
        box.busy.discard(seq)
        self._at(box, "stall_at", self.policy.store_retry)

    def _requeue(self, box: _Mailbox, reason: str, *, crashed: bool) -> None:
        """The agent's worker exited: what it was given goes back to queued; if it crashed
        and will not come back, every open delivery fails naming the crash."""
        now = self._wall()
        name = box.name

        def move_back() -> list[_Delivery]:
            moved = list(box.inflight.values())
            box.inflight.clear()
            box.stall_at = None
            for delivery in moved:
                delivery.state = "queued"
                box.add_queued(delivery)
            return moved

        def committed(_: list[int]) -> None:
            for delivery in move_back():
                self.events.emit(
                    DeliveryRequeuedEvent(
                        agent=name,
                        delivery_id=sql.delivery_id(self._tag, delivery.seq),
                        reason=f"{name!r} {reason}",
                    )
                )
            if crashed:
                fate = self.transport.fate(name)
                if fate is not None:
                    self._fail_open(box, f"agent {name!r} {reason} and will not restart: {fate}")
            self._pump(box)

        def aborted(_: BaseException) -> None:
            # The store still says "sent", which a restart reads as queued too (and the next
            # hand-over or failure moves from any open state); memory follows so the next
            # run gets them again. If it crashed for good, they fail all the same.
            move_back()
            if crashed:
                fate = self.transport.fate(name)
                if fate is not None:
                    self._fail_open(box, f"agent {name!r} {reason} and will not restart: {fate}")
            self._pump(box)

        self._submit(
            lambda conn: sql.requeue_agent(conn, name, now),
            f"requeue the deliveries of {name!r}",
            committed,
            aborted,
        )

    def _fail_open(self, box: _Mailbox, reason: str) -> None:
        now = self._wall()
        name = box.name

        def committed(seqs: list[int]) -> None:
            for seq in seqs:
                delivery = box.queued.get(seq) or box.inflight.get(seq)
                if delivery is None:
                    continue
                self._finish(box, delivery, "failed", now, reason=reason)
                self.events.emit(
                    DeliveryFailedEvent(
                        agent=name, delivery_id=sql.delivery_id(self._tag, seq), reason=reason
                    )
                )

        def again() -> None:
            if self.transport.active(name):
                # Spawned again meanwhile: its open deliveries are the new run's.
                log.info("%s: back meanwhile; its deliveries are not failed", name)
                return
            self._fail_open(box, reason)

        self._submit(
            lambda conn: sql.fail_open(conn, name, reason, now, stop_agent=True),
            f"fail the deliveries of {name!r}",
            committed,
            self._retry_later(f"fail the deliveries of {name!r}", again),
        )


def _validate(sender: str, body: str, thread: str | None, max_body: int) -> None:
    if not isinstance(sender, str) or not sender or len(sender) > 128 or not sender.isprintable():
        raise ValueError(f"bad sender {sender!r}: 1 to 128 printable characters")
    if not isinstance(body, str):
        raise ValueError("a delivery's body must be a string")
    if len(body.encode("utf-8", "surrogatepass")) > max_body:
        raise ValueError(f"body of more than {max_body} bytes")
    if thread is not None and (not isinstance(thread, str) or len(thread) > 256):
        raise ValueError("a thread is a string of at most 256 characters")
