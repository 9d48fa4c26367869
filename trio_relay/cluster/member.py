"""One broker as a member of a cluster: its lease, its agents in the registry, the
deliveries it claims for them, the states it reports back, and the cluster's operations
(send, wait, deliveries, agents, events) as any broker answers them.

Claim/ack, per delivery (see :mod:`trio_relay.cluster.sql`):

1. any broker commits the message to PostgreSQL (the sender's receipt comes only then) and
   notifies the owner;
2. the owner claims it (``SKIP LOCKED``), takes it into its local engine by its cluster id
   (a second take finds the first: the local store keeps the id), then records the local
   id;
3. every state change of the local delivery is reported back, conditional on still holding
   it; waiters anywhere are notified.

A broker that stops anywhere in between finds, when it comes back, what it claimed and did
not take in, and what it took in and did not report, and finishes both. A notification
missed while the LISTEN connection was down is made up for on reconnect: the member claims
and reports again, and every waiter looks again.

Cancellation: :meth:`run` runs until cancelled; its tasks' teardown (leaving the cluster) is
shielded. A send waits for its commit once it is started.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import uuid
from typing import Any

import msgspec
import trio

from trio_relay.broker.broker import Broker
from trio_relay.broker.delivery import Receipt
from trio_relay.broker.delivery.policy import check_send
from trio_relay.broker.events import EventLog
from trio_relay.client import open_client
from trio_relay.cluster import sql
from trio_relay.cluster.database import Database, Listener
from trio_relay.errors import (
    AgentExists,
    BrokerUnreachable,
    ClusterUnavailable,
    DeliveryNotFound,
    DeliveryStateError,
    DeliveryTimeout,
    RelayError,
    WorkerNotFound,
)
from trio_relay.wire import (
    AgentActivity,
    AgentEvent,
    AgentExited,
    AgentGaveUp,
    AgentOutput,
    AgentRestarting,
    AgentSpawned,
    ClusterAgentSummary,
    ClusterEvent,
    DeliveryEvent,
    DeliveryRecord,
    Event,
    InputOp,
    ResizeOp,
    SnapshotOp,
)

log = logging.getLogger(__name__)

DEFAULT_LEASE = 10.0
#: How long a send keeps trying while PostgreSQL does not answer (same key: one delivery).
SEND_PATIENCE = 10.0
_encode = msgspec.json.Encoder().encode


def default_broker_name() -> str:
    return socket.gethostname()


class ClusterMember:
    """``broker`` in the cluster at ``dsn`` as ``name``. Start :meth:`run` in a nursery
    (``nursery.start``): it joins, then serves until cancelled."""

    def __init__(
        self,
        broker: Broker,
        dsn: str,
        name: str,
        *,
        lease: float = DEFAULT_LEASE,
        pool: int = 8,
    ) -> None:
        self.broker, self.dsn, self.name, self.lease = broker, dsn, name, lease
        self.db = Database(dsn, pool)
        self.tag = broker.store.tag
        self.credential = secrets.token_urlsafe(24)
        self.control_url: str | None = None
        #: The cluster's events (``events --cluster``), as this broker hears them.
        self.events = EventLog(broker.events.capacity)
        self._work = trio.Event()  # something to claim
        self._dirty: set[int] = set()  # cluster rows whose local state is to be reported
        self._reported = trio.Event()
        self._by_local: dict[str, int] = {}  # local delivery id -> cluster row
        self._local_of: dict[int, str] = {}  # and back
        self._waiters: dict[int, set[trio.Event]] = {}  # row -> one event per waiter
        self._outbox: list[bytes] = []  # events to publish
        self._publish = trio.Event()
        self._registry: dict[str, dict[str, Any]] = {}  # agent -> fields to record
        self._recorded = trio.Event()
        self._held_again = True  # what this broker held before: adopt it at the first claim
        self.connected = trio.Event()
        broker.events.listen(self._on_local_event)
        broker.registry = self

    # ------------------------------------------------------------ running

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join (raises ClusterUnavailable, or sql.NameTaken for a name another live broker
        holds), report started, and serve until cancelled; then leave, shielded."""
        await self.db.write(sql.prepare, "prepare the cluster's schema")
        try:
            await self._join()
        except sql.NameTaken as exc:
            raise ClusterUnavailable(str(exc)) from None
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(_restarting_start, self._listen)
                for task in (
                    self._heartbeat,
                    self._claimer,
                    self._reporter,
                    self._publisher,
                    self._recorder,
                ):
                    nursery.start_soon(_restarting, task)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await self.db.write(
                        lambda c: sql.leave(c, self.name, self.tag), "leave the cluster"
                    )
                except ClusterUnavailable as exc:
                    log.warning("could not leave the cluster (its lease will pass): %s", exc)
                await self.db.aclose()

    async def _join(self) -> None:
        await self.db.write(
            lambda c: sql.join(
                c,
                self.name,
                self.tag,
                self.lease,
                self.control_url,
                self.credential,
                os.getpid(),
                socket.gethostname(),
            ),
            "join the cluster",
        )

    async def _heartbeat(self) -> None:
        """Renew the lease at a third of its length. A renewal that fails is retried; one
        that finds the name taken over (the lease passed meanwhile) joins again."""
        while True:
            await trio.sleep(self.lease / 3)
            try:
                kept = await self.db.write(
                    lambda c: sql.heartbeat(c, self.name, self.tag, self.lease), "renew the lease"
                )
                if not kept:
                    log.warning("the cluster lease of %s had passed; joining again", self.name)
                    await self._join()
            except (ClusterUnavailable, sql.NameTaken) as exc:
                log.warning("cluster heartbeat failed: %s", exc)
                self.db.drop_connections()

    async def _listen(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """LISTEN, reconnecting with backoff; after each (re)connect, claim, report and
        wake every waiter, for what a missed notification would have said. Started once
        the first connection listens."""
        channels = (sql.WORK_CHANNEL, sql.STATE_CHANNEL, sql.EVENTS_CHANNEL)
        listener = Listener(self.dsn, channels, self._on_notify)
        backoff = 0.1
        started = False

        def connected() -> None:
            nonlocal backoff, started
            backoff = 0.1
            self.connected.set()
            self._catch_up()
            if not started:
                started = True
                task_status.started()

        while True:
            try:
                await listener.listen(connected)
            except ClusterUnavailable as exc:
                if self.connected.is_set():
                    self.connected = trio.Event()
                log.warning("cluster: %s; connecting again in %.1f s", exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _catch_up(self) -> None:
        self._work.set()
        self._dirty.update(self._by_local.values())
        self._reported.set()
        self._held_again = True
        for events in self._waiters.values():
            for event in events:
                event.set()

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == sql.WORK_CHANNEL:
            if payload == self.name:
                self._work.set()
        elif channel == sql.STATE_CHANNEL:
            row = int(payload) if payload.isascii() and payload.isdigit() else None
            for waiter in self._waiters.get(row, ()) if row is not None else ():
                waiter.set()
        elif channel == sql.EVENTS_CHANNEL:
            try:
                message = json.loads(payload)
                self.events.emit(ClusterEvent(**message))
            except (ValueError, TypeError) as exc:
                log.warning("cluster: an undecodable event notification: %s", exc)

    # ------------------------------------------------------------ claims

    async def _claimer(self) -> None:
        """Claim and take in, each time there may be something (woken by NOTIFY, a spawn,
        a reconnect). Also collects, once, what this broker held before it stopped."""
        self._held_again = True  # also after a restart of this task: look at everything
        self._work.set()
        while True:
            await self._work.wait()
            self._work = trio.Event()
            try:
                if self._held_again:  # set again by a pass that leaves something untaken
                    self._held_again = False
                    try:
                        await self._adopt_held()
                        while await self._claim_once(adopt=True):
                            pass
                    except ClusterUnavailable:
                        self._held_again = True
                        raise
                while await self._claim_once():
                    pass
            except ClusterUnavailable as exc:
                log.warning("cluster: cannot claim deliveries now (trying again): %s", exc)
                await trio.sleep(0.2)
                self._work.set()

    async def _adopt_held(self) -> None:
        """The deliveries this broker took in before (it restarted, or its connection
        broke): map them again, and report their states."""
        held = await self.db.read(lambda c: sql.held(c, self.name), "list held deliveries")
        for row_id, local_id, _state in held:
            if local_id is not None:
                self._map(local_id, row_id)
        self._reported.set()

    def _map(self, local: str, row_id: int) -> None:
        """``local`` is cluster row ``row_id`` here: report its states from now on."""
        self._by_local[local] = row_id
        self._local_of[row_id] = local
        self._dirty.add(row_id)

    async def _claim_once(self, *, adopt: bool = False) -> bool:
        """One batch; True if it was full (there may be more). A delivery for an agent not
        (yet) running here stays claimed, to be taken in once it is (its spawn adopts)."""
        batch = await self.db.write(
            lambda c: sql.claim(c, self.name, adopt=adopt), "claim deliveries"
        )
        pairs: list[tuple[int, str]] = []
        failed: list[sql.Report] = []
        for item in batch:
            self._forget(item.id)  # an old copy's report must not undo this claim
            local = None
            if self.broker.transport.active(item.agent):
                try:
                    local = await self._take_in(item)
                except (RelayError, ValueError) as exc:
                    if isinstance(exc, ClusterUnavailable):
                        raise
                    # It cannot be taken here (too large for this broker, its store
                    # failing, shutting down): it fails, saying why, rather than waiting.
                    log.error("cluster: %s cannot be taken in: %s", sql.cluster_id(item.id), exc)
                    failed.append(sql.Report(item.id, "failed", reason=f"not taken in: {exc}"))
                    continue
            if local is None:
                # Left claimed, untaken: only adopting passes take it, in its place in
                # the agent's order, so no newer one overtakes it meanwhile.
                self._held_again = True
                continue
            pairs.append((item.id, local))
            self._map(local, item.id)  # reports may go before the record below
        self._reported.set()
        if failed:
            await self.db.write(lambda c: sql.report(c, self.name, failed), "fail deliveries")
        if pairs:
            try:
                await self.db.write(lambda c: sql.taken(c, self.name, pairs), "record taken")
            except ClusterUnavailable:
                self._held_again = True  # found again (untaken) and recorded at the next pass
                raise
        return len(batch) >= 100 and bool(pairs)

    async def _take_in(self, item: sql.Claimed) -> str | None:
        """The claimed delivery in the local engine (once, by its cluster id); a dead letter
        or failed one redelivered is queued again locally. None if the agent went away.

        A local copy that is a dead letter or failed is queued again only while the row is
        still open in the cluster: its redelivery. Else the claim is older than the report
        of that end (it was reported while the claim waited), and the end stands.
        """
        engine = self.broker.delivery_engine
        origin = sql.cluster_id(item.id)
        try:
            receipt = await engine.send(
                item.agent, item.body, sender=item.sender, thread=item.thread, origin=origin
            )
            if receipt.state == "taken before":
                local = await engine.get(receipt.delivery_id)
                if local.state in ("dead_letter", "failed") and await self._still_open(item.id):
                    await engine.redeliver(receipt.delivery_id)
            return receipt.delivery_id
        except (WorkerNotFound, DeliveryStateError) as exc:
            log.info("cluster: %s not taken in: %s", origin, exc)
            return None

    async def _still_open(self, row_id: int) -> bool:
        found = await self.db.read(lambda c: sql.get_delivery(c, row_id), "read a delivery")
        return found is not None and found.state in sql.OPEN

    # ------------------------------------------------------------ reports

    async def _reporter(self) -> None:
        """Report the local state of every changed delivery, in batches, until it commits."""
        engine = self.broker.delivery_engine
        while True:
            await self._reported.wait()
            self._reported = trio.Event()
            dirty, self._dirty = self._dirty, set()
            local_of = self._local_of
            reports: list[sql.Report] = []
            for row_id in sorted(dirty):
                local = local_of.get(row_id)
                if local is None:
                    continue
                try:
                    info = await engine.get(local)
                except DeliveryNotFound:
                    continue
                reports.append(
                    sql.Report(
                        row_id,
                        info.state,
                        info.attempts,
                        info.last_error,
                        info.verification,
                        info.reason,
                    )
                )
            if not reports:
                continue
            try:
                await self.db.write(
                    lambda c, r=reports: sql.report(c, self.name, r), "report delivery states"
                )
            except ClusterUnavailable as exc:
                log.warning("cluster: cannot report states now (kept to retry): %s", exc)
                self._dirty.update(dirty)
                await self.connected.wait()
                await trio.sleep(0.2)
                self._reported.set()
                continue
            for r in reports:
                # A dead letter stays mapped: the worker's report may still come (late).
                if r.state in sql.TERMINAL - {"dead_letter"} and r.id not in self._dirty:
                    self._forget(r.id)

    def _forget(self, row_id: int) -> None:
        local = self._local_of.pop(row_id, None)
        if local is not None:
            self._by_local.pop(local, None)

    # ------------------------------------------------------------ local events

    def _on_local_event(self, event: Event) -> None:
        """The broker's events: delivery changes to report, agents to record, events to
        publish. Synchronous and quick (the event log's rule)."""
        if isinstance(event, DeliveryEvent):
            row_id = self._by_local.get(event.delivery_id)
            if row_id is not None:
                self._dirty.add(row_id)
                self._reported.set()
        elif isinstance(event, AgentSpawned):
            try:
                profile = self.broker.agent(event.agent).profile
            except WorkerNotFound:
                profile = None
            self._record(event.agent, state="running", pid=event.pid, profile=profile)
            self._held_again = True  # what waits for it here, or was taken over for it
            self._work.set()
        elif isinstance(event, AgentActivity):
            self._record(event.agent, activity=event.to, activity_since=event.time)
        elif isinstance(event, AgentRestarting):
            self._record(event.agent, state="restarting", pid=None)
        elif isinstance(event, AgentExited | AgentGaveUp):
            self._record(event.agent, state="exited", pid=None)
        if not isinstance(event, AgentOutput):
            self._queue_publication(event)

    def _record(self, agent: str, **fields: Any) -> None:
        self._registry.setdefault(agent, {}).update(fields)
        self._recorded.set()

    async def _recorder(self) -> None:
        """Write agents' states and activities to the registry (coalesced per agent)."""
        while True:
            await self._recorded.wait()
            self._recorded = trio.Event()
            pending, self._registry = self._registry, {}
            try:
                for agent, fields in pending.items():
                    await self.db.write(
                        lambda c, a=agent, f=fields: sql.update_agent(c, a, self.name, f),
                        "record an agent",
                    )
            except ClusterUnavailable as exc:
                log.warning("cluster: cannot record agents now: %s", exc)
                for agent, fields in pending.items():
                    self._registry[agent] = {**fields, **self._registry.get(agent, {})}
                await self.connected.wait()
                await trio.sleep(0.2)
                self._recorded.set()

    def _queue_publication(self, event: Event) -> None:
        agent = event.agent if isinstance(event, AgentEvent) else None
        encoded = msgspec.to_builtins(event)
        if isinstance(event, DeliveryEvent) and event.delivery_id in self._by_local:
            encoded["cluster_id"] = sql.cluster_id(self._by_local[event.delivery_id])
        payload = _encode({"broker": self.name, "agent": agent, "event": encoded})
        if len(payload) > sql.MAX_PAYLOAD:
            brief = {"kind": encoded.get("kind"), "seq": event.seq, "agent": agent}
            payload = _encode(
                {"broker": self.name, "agent": agent, "event": brief, "truncated": True}
            )
        self._outbox.append(payload)
        if len(self._outbox) > 10_000:  # nobody could publish for long: keep the newest
            del self._outbox[:1000]
        self._publish.set()

    async def _publisher(self) -> None:
        """NOTIFY the cluster of this broker's events, batched. Not durable: events lost
        while PostgreSQL is away are lost to ``events --cluster`` (never to deliveries)."""
        while True:
            await self._publish.wait()
            self._publish = trio.Event()
            batch, self._outbox = self._outbox[:500], self._outbox[500:]
            if self._outbox:
                self._publish.set()
            if not batch:
                continue
            try:
                await self.db.write(lambda c, b=batch: _notify_all(c, b), "publish events")
            except ClusterUnavailable as exc:
                log.info("cluster: %d event(s) not published: %s", len(batch), exc)
                await self.connected.wait()

    # ------------------------------------------------------------ the registry (Broker hooks)

    async def claim_name(self, name: str) -> None:
        """Before a spawn: the name is this broker's in the cluster. Raises AgentExists
        (another live broker runs it), ClusterUnavailable."""
        try:
            await self.db.write(
                lambda c: sql.claim_agent(c, name, self.name), f"register agent {name!r}"
            )
        except sql.NameTaken as exc:
            raise AgentExists(name, str(exc).partition(" runs ")[2] and f"it {exc}") from None

    async def release_name(self, name: str) -> None:
        """After a release: no broker runs it. A failure is logged (the row says this
        broker, whose next start or release corrects it)."""
        try:
            await self.db.write(
                lambda c: sql.drop_agent(c, name, self.name), f"unregister agent {name!r}"
            )
        except ClusterUnavailable as exc:
            log.warning("cluster: %s", exc)

    async def after_respawn(self) -> None:
        """The stored agents are back: the registry's rows of this broker's for agents not
        running here are dropped, and their open cluster deliveries fail. If PostgreSQL does
        not answer, that is logged and left for the next start."""
        try:
            rows = await self.db.read(sql.list_agents, "list agents")
            for row in rows:
                if row.broker == self.name and not self.broker.transport.active(row.name):
                    await self.db.write(
                        lambda c, n=row.name: sql.fail_agent(c, n, self.name), "drop an agent"
                    )
        except ClusterUnavailable as exc:
            log.warning("cluster: agents that did not come back are left as they are: %s", exc)
        self._work.set()

    # ------------------------------------------------------------ operations

    async def send(self, to: str, body: str, *, sender: str, thread: str | None) -> Receipt:
        """Accept a message for any agent of the cluster; returns once PostgreSQL committed
        it. Raises WorkerNotFound, ClusterUnavailable (nothing accepted: PostgreSQL did
        not answer for SEND_PATIENCE seconds, or the agent's broker is unreachable),
        ValueError. Cancellation: once started, the commit is waited for."""
        check_send(sender, body, thread, self.broker.delivery_engine.policy.max_body)
        key = uuid.uuid4().hex
        deadline = self.broker.delivery_engine.policy.deadline
        attempt_until = trio.current_time() + SEND_PATIENCE
        while True:
            try:
                row_id, _owner = await self.db.write(
                    lambda c: sql.insert_delivery(
                        c, key, to, sender, body, thread, self.name, deadline
                    ),
                    f"queue a delivery for {to!r}",
                )
                return Receipt(sql.cluster_id(row_id), to, "queued")
            except LookupError:
                raise WorkerNotFound(to) from None
            except sql.NameTaken as exc:
                raise ClusterUnavailable(str(exc)) from None
            except ClusterUnavailable:
                if trio.current_time() >= attempt_until:
                    raise
                await trio.sleep(0.2)  # the same key: a commit that did happen is found

    def _row(self, delivery_id: str) -> int:
        row_id = sql.parse_cluster_id(delivery_id)
        if row_id is None:
            raise DeliveryNotFound(delivery_id)
        return row_id

    async def get(self, delivery_id: str) -> DeliveryRecord:
        """Raises DeliveryNotFound, ClusterUnavailable."""
        row_id = self._row(delivery_id)
        found = await self.db.read(lambda c: sql.get_delivery(c, row_id), "read a delivery")
        if found is None:
            raise DeliveryNotFound(delivery_id)
        return found

    async def wait(self, delivery_id: str, timeout: float) -> DeliveryRecord:
        """Until the delivery is terminal, from any broker; PostgreSQL not answering for a
        while does not end it. Raises DeliveryNotFound, DeliveryTimeout. Cancellable."""
        row_id = self._row(delivery_id)
        waiters = self._waiters.setdefault(row_id, set())
        waiter = trio.Event()
        waiters.add(waiter)
        state = "not read (PostgreSQL did not answer)"
        try:
            with trio.move_on_after(timeout):
                while True:
                    try:
                        record = await self.get(delivery_id)
                    except ClusterUnavailable:  # a restart, a cut: the wait goes on
                        await trio.sleep(0.2)
                        continue
                    if record.terminal:
                        return record
                    state = record.state
                    await waiter.wait()
                    waiters.discard(waiter)
                    waiter = trio.Event()  # a new one before reading again: no wake lost
                    waiters.add(waiter)
            raise DeliveryTimeout(delivery_id, timeout, state)
        finally:
            waiters.discard(waiter)
            if not waiters and self._waiters.get(row_id) is waiters:
                del self._waiters[row_id]

    async def deliveries(
        self,
        agent: str | None,
        states: tuple[str, ...] | None,
        limit: int,
        after: str | None,
    ) -> list[DeliveryRecord]:
        """Raises DeliveryNotFound (``after`` not a cluster id), ClusterUnavailable."""
        after_row = None if after is None else self._row(after)
        return await self.db.read(
            lambda c: sql.list_deliveries(c, agent, states, limit, after_row), "list deliveries"
        )

    async def redeliver(self, delivery_id: str) -> Receipt:
        """Raises DeliveryNotFound, DeliveryStateError, WorkerNotFound (no live broker runs
        its agent), ClusterUnavailable."""
        row_id = self._row(delivery_id)
        try:
            agent, _owner = await self.db.write(
                lambda c: sql.redeliver(c, row_id), f"redeliver {delivery_id}"
            )
        except LookupError as exc:
            if exc.args and exc.args[0] == row_id:
                raise DeliveryNotFound(delivery_id) from None
            raise WorkerNotFound(str(exc.args[0])) from None
        except ValueError as exc:
            raise DeliveryStateError(
                f"delivery {delivery_id!r} is {exc}; only dead letters and failed deliveries"
                " can be redelivered"
            ) from None
        return Receipt(delivery_id, agent, "queued")

    async def agents(self) -> list[ClusterAgentSummary]:
        """Every agent of the cluster. Raises ClusterUnavailable."""
        rows = await self.db.read(sql.list_agents, "list the cluster's agents")
        return [
            ClusterAgentSummary(
                name=r.name,
                broker=r.broker,
                state=r.state,
                activity=r.activity,
                activity_since=r.activity_since,
                profile=r.profile,
                pid=r.pid,
                pending_deliveries=r.pending,
            )
            for r in rows
        ]

    async def forward(self, request: InputOp | ResizeOp | SnapshotOp) -> Any:
        """Carry out ``request`` (already authorized here) on the broker that runs its
        agent, through that broker's control channel, with the credential it keeps in the
        cluster. Raises WorkerNotFound, ClusterUnavailable (unreachable), and what the other
        broker answers (RemoteError with its code). One connection per request."""
        found = await self.locate(request.name)
        if found is None:
            raise WorkerNotFound(request.name)
        owner, live = found
        url, credential, _ = await self.db.read(
            lambda c: sql.broker_address(c, owner), "find a broker"
        )
        if not live or url is None or credential is None:
            raise ClusterUnavailable(
                f"agent {request.name!r} is on broker {owner!r}, which is unreachable"
            )
        try:
            async with open_client(url=url, token=credential, connect_timeout=5) as client:
                match request:
                    case InputOp(name=name, data=data):
                        return await client.input(name, data)
                    case ResizeOp(name=name, rows=rows, cols=cols):
                        return await client.resize(name, rows, cols)
                    case SnapshotOp(name=name, ansi=ansi):
                        return await client.snapshot(name, ansi=ansi)
        except BrokerUnreachable as exc:
            raise ClusterUnavailable(f"broker {owner!r} at {url}: {exc}") from exc

    async def locate(self, agent: str) -> tuple[str, bool] | None:
        """The broker running ``agent`` and whether it is reachable, or None."""
        return await self.db.read(lambda c: sql.locate(c, agent), "locate an agent")


async def _restarting_start(
    task: Any, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """:func:`_restarting` for a task started with ``nursery.start``: whichever run gets
    there first reports it started, once."""
    once = _StartedOnce(task_status)
    while True:
        try:
            await task(task_status=once)
        except Exception:
            log.exception("cluster: %s failed; starting it again in 1 s", task.__name__)
            await trio.sleep(1)


class _StartedOnce:
    def __init__(self, status: Any) -> None:
        self.status, self.done = status, False

    def started(self, value: Any = None) -> None:
        if not self.done:
            self.done = True
            self.status.started(value)


async def _restarting(task: Any) -> None:
    """Run ``task`` again if it fails with a bug of ours (logged with its traceback): one
    part of the membership failing must not stop the broker. Cancellation ends it."""
    while True:
        try:
            await task()
        except Exception:
            log.exception("cluster: %s failed; starting it again in 1 s", task.__name__)
            await trio.sleep(1)


def _notify_all(conn: Any, payloads: list[bytes]) -> None:
    with conn.transaction():
        for payload in payloads:
            conn.execute("SELECT pg_notify(%s, %s)", (sql.EVENTS_CHANNEL, payload.decode()))
