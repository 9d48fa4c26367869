"""The broker: composes the event log, the correlator, the supervisor, the store and the
delivery engine into the operations the control channel exposes. Open one with
:func:`open_broker`."""

from __future__ import annotations

import logging
import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from trio_relay.broker import retention
from trio_relay.broker.agent import Agent, AgentSpec
from trio_relay.broker.correlator import Correlator, CorrelatorStatistics
from trio_relay.broker.delivery import DeliveryEngine, DeliveryPolicy, Receipt
from trio_relay.broker.events import EventLog
from trio_relay.broker.restart import RestartPolicy
from trio_relay.broker.retention import DEFAULT_RETENTION, prune_every
from trio_relay.broker.spawn_args import child_environment, spawn_arguments, stored_spec
from trio_relay.broker.supervisor import DEFAULT_HISTORY, Supervisor
from trio_relay.broker.transport import SupervisorTransport
from trio_relay.errors import (
    AgentExists,
    ClusterUnavailable,
    RequestTimeout,
    SpawnFailed,
    WorkerNotFound,
)
from trio_relay.linux.peers import AgentProcesses
from trio_relay.state import StateDir
from trio_relay.store import sql
from trio_relay.store.engine import Store, open_store
from trio_relay.store.sql import DeliveryInfo
from trio_relay.wire import (
    AgentResized,
    AgentSummary,
    PruneResult,
    Resize,
    StoreErrorEvent,
    WriteInput,
    encode,
)
from trio_relay.wire.lines import DEFAULT_MAX_LINE
from trio_relay.wire.vocabulary import check_terminal_size

__all__ = ["DEFAULT_RETENTION", "AgentInfo", "Broker", "open_broker"]

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT = 10.0


#: A snapshot of one agent's state, for listing (the control channel sends it as is).
AgentInfo = AgentSummary


class Registry(Protocol):
    """Where agent names are claimed beyond this broker (a cluster's registry)."""

    async def claim_name(self, name: str) -> None:
        """Raises AgentExists if another broker runs ``name``."""

    async def release_name(self, name: str) -> None:
        """Never raises."""


class Broker:
    """The operations on agents. Every request/response operation goes through
    :meth:`request_worker`; fire-and-forget ones write one frame and return.

    ``shared_pty``: run every PTY agent's worker in one shared host process (see
    :mod:`trio_relay.broker.pty_host`) instead of a wrapper process each."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        store: Store,
        delivery: DeliveryPolicy | None = None,
        event_capacity: int = 4096,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_line: int = DEFAULT_MAX_LINE,
        history: int = DEFAULT_HISTORY,
        rng: random.Random | None = None,
        shared_pty: bool = False,
    ) -> None:
        self.events = EventLog(event_capacity)
        self.correlator = Correlator()
        self.supervisor = Supervisor(
            nursery,
            self.correlator,
            self.events,
            max_line=max_line,
            history=history,
            rng=rng,
            shared_pty=shared_pty,
        )
        self._spawning: set[str] = set()  # names whose spawn is under way
        self.request_timeout = request_timeout
        #: Tags every process this broker's workers start (see sweep.py).
        self.run_id = secrets.token_hex(8)
        self.store = store
        store.on_error = self._store_failed
        self.transport = SupervisorTransport(self.supervisor)
        self.delivery_engine = DeliveryEngine(store, self.events, self.transport, delivery)
        self.events.listen(self.delivery_engine.on_event)
        self.supervisor.delivery_reports = self.delivery_engine.on_report
        self.supervisor.forgotten = self.delivery_engine.forget
        #: Extra environment for each agent's child, by agent name (the control channel
        #: sets it: TRIO_RELAY_URL and the agent's scoped TRIO_RELAY_TOKEN).
        self.agent_environment: Callable[[str], Mapping[str, str]] | None = None
        #: A cluster's registry of agent names (see trio_relay.cluster), or None: names
        #: are then unique on this broker only.
        self.registry: Registry | None = None

    async def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        restart: RestartPolicy | None = None,
        profile: str | None = None,
        preamble: str | None = None,
        **timing: float,
    ) -> AgentInfo:
        """Start a worker program as agent ``name``; return once it said hello.

        ``env`` is added to the broker's own environment, with ``TRIO_RELAY_AGENT`` set to
        the agent's name. ``timing`` may set ``hello_timeout``, ``grace`` and ``kill_grace``
        (seconds). ``profile`` names the agent's profile, for listing (the worker's command
        line carries the profile itself). ``preamble`` is typed after the first message
        each run of the agent is given (the stored message is not changed). Raises
        AgentExists, SpawnFailed, or ValueError for a bad name or command.
        """
        extra = self.agent_environment(name) if self.agent_environment else {}
        spec = AgentSpec(
            name,
            tuple(argv),
            cwd=cwd,
            env=child_environment(name, self.run_id, env, extra),
            restart=restart or RestartPolicy(),
            profile=profile,
            **timing,
        )
        if self.supervisor.taken(name) or name in self._spawning:
            await trio.lowlevel.checkpoint()
            raise AgentExists(name)
        stored = stored_spec(spec, env, timing, preamble)
        now = time.time()
        self._spawning.add(name)  # from here on a second spawn of the name is refused
        try:
            if self.registry is not None:
                await self.registry.claim_name(name)
            try:
                mode = await self.store.write(
                    lambda conn: sql.put_agent(conn, name, stored, now), f"record agent {name!r}"
                )
            except BaseException:
                if self.registry is not None:  # not recorded: the name is free again
                    with trio.CancelScope(shield=True):
                        await self.registry.release_name(name)
                raise
            self.delivery_engine.register(name, mode)
            self.delivery_engine.set_preamble(name, preamble)
            try:
                return self._info(await self.supervisor.spawn(spec))
            except BaseException:
                # Not started (or the caller gave up before its hello): not one to respawn.
                with trio.CancelScope(shield=True):
                    await self._forget_agent(name)
                    if self.registry is not None:
                        await self.registry.release_name(name)
                raise
        finally:
            self._spawning.discard(name)

    async def respawn(self) -> list[AgentInfo]:
        """Start again every stored agent that was running when the last broker on this
        store stopped or died (not those released); their queued deliveries follow. An
        agent that cannot be started gets ``spawn_failed`` and each of its open deliveries
        a terminal ``delivery_failed``. Returns the agents started. Raises StoreError."""
        rows = await self.store.read(sql.load_agents, "load agents")
        started: list[AgentInfo] = []

        async def one(row: sql.AgentRow) -> None:
            try:
                started.append(await self.spawn(row.name, **spawn_arguments(row.spec)))
            except (
                SpawnFailed,
                AgentExists,
                ClusterUnavailable,
                ValueError,
                TypeError,
                KeyError,
            ) as exc:
                log.error("cannot respawn %s: %s", row.name, exc)
                self.delivery_engine.agent_gone(row.name, f"could not be respawned: {exc}")

        async with trio.open_nursery() as nursery:
            for row in rows:
                if row.running:
                    nursery.start_soon(one, row)
        return started

    async def release(self, name: str) -> AgentInfo:
        """Stop agent ``name`` (see :meth:`Supervisor.release`); it will not be respawned at
        the next start, and each of its open deliveries fails (``delivery_failed``, reason
        ``agent '<name>' was released``): nobody will take them. (A shutdown, by contrast,
        keeps them for the next start.) Raises WorkerNotFound, StoreError."""
        if not self._active(name):
            await trio.lowlevel.checkpoint()
            raise WorkerNotFound(name)
        await self._forget_agent(name)
        try:
            released = await self.supervisor.release(name)
        finally:  # also if cancelled: the stop goes on, and it is no longer one to respawn
            self.delivery_engine.agent_released(name)
            if self.registry is not None:
                with trio.CancelScope(shield=True):
                    await self.registry.release_name(name)
        return self._info(released)

    def _active(self, name: str) -> bool:
        try:
            return self.supervisor.get(name).active
        except WorkerNotFound:
            return False

    async def _forget_agent(self, name: str) -> None:
        await self.store.write(
            lambda conn: sql.set_agent_running(conn, name, False), f"mark {name!r} not running"
        )

    # -- deliveries

    async def send(self, to: str, body: str, *, sender: str, thread: str | None = None) -> Receipt:
        """Queue a message for agent ``to`` (running or restarting) from ``sender`` (a
        person, a program, or another agent's name). Returns once it is committed: its
        ``delivery_id``, ``state`` (``queued``) and the ids ``evicted`` to respect the cap.

        Raises WorkerNotFound, IntakeClosed (shutting down), ValueError, StoreError (nothing
        was committed; a ``store_error`` event says why). Cancellation: once the commit is
        queued the call waits for it, so an accepted message is never unreported.
        """
        return await self.delivery_engine.send(to, body, sender=sender, thread=thread)

    async def wait_delivery(self, delivery_id: str, timeout: float = 30.0) -> DeliveryInfo:
        """Wait until the delivery is verified, unverified (``timeout_fallback``), failed,
        dropped or dead-lettered. Raises DeliveryNotFound, DeliveryTimeout, StoreError."""
        return await self.delivery_engine.wait(delivery_id, timeout)

    async def delivery(self, delivery_id: str) -> DeliveryInfo:
        """Raises DeliveryNotFound, StoreError."""
        return await self.delivery_engine.get(delivery_id)

    async def deliveries(
        self,
        agent: str | None = None,
        *,
        states: Sequence[str] | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[DeliveryInfo]:
        """The newest ``limit`` deliveries (of one agent, in some states), oldest first; with
        ``after`` (a delivery id), the first ``limit`` after it. Raises DeliveryNotFound for
        an ``after`` that is not a delivery id of this broker's, StoreError."""
        return await self.delivery_engine.deliveries(
            agent, tuple(states) if states else None, limit, after
        )

    async def dead_letters(self, agent: str | None = None, limit: int = 1000) -> list[DeliveryInfo]:
        """Deliveries whose retry budget was spent, each with its ``last_error``."""
        return await self.deliveries(agent, states=("dead_letter",), limit=limit)

    async def redeliver(self, delivery_id: str) -> Receipt:
        """Queue a dead letter or failed delivery again (same id, fresh retry budget).
        Raises DeliveryNotFound, DeliveryStateError, WorkerNotFound, StoreError."""
        return await self.delivery_engine.redeliver(delivery_id)

    async def set_mode(self, agent: str, mode: str) -> str:
        """``auto_inject`` or ``hold`` (deliveries stay queued until :meth:`flush`); kept in
        the store. Returns the mode. Raises ValueError, WorkerNotFound, StoreError."""
        await self.delivery_engine.set_mode(agent, mode)
        return mode

    def mode(self, agent: str) -> str:
        """Raises WorkerNotFound."""
        return self.delivery_engine.mode(agent)

    async def pending(self, agent: str) -> list[DeliveryInfo]:
        """The agent's deliveries not yet verified (queued, sent, injected), in order.
        Raises WorkerNotFound."""
        await trio.lowlevel.checkpoint()
        return self.delivery_engine.pending(agent)

    async def flush(self, agent: str) -> int:
        """In hold mode, release every queued delivery for injection; returns how many.
        Raises WorkerNotFound."""
        await trio.lowlevel.checkpoint()
        return self.delivery_engine.flush(agent)

    async def prune(self, older_than: float) -> PruneResult:
        """Delete from the store what ended ``older_than`` seconds ago (see
        :func:`~trio_relay.broker.retention.prune`). Raises StoreError, ValueError."""
        return await retention.prune(self.store, older_than)

    def _store_failed(self, operation: str, error: str) -> None:
        self.events.emit(StoreErrorEvent(operation=operation, error=error))

    async def request_worker(
        self,
        name: str,
        kind: str,
        payload: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a request to a worker and return its answer's payload.

        The one helper for every request/response operation; exactly one outcome per call:
        the payload, WorkerNotFound, RequestTimeout (``timeout`` defaults to the broker's
        ``request_timeout``), WorkerError, WorkerExited, ChannelClosed, or Cancelled.
        """
        return await self.correlator.request(
            name, kind, payload, timeout=self.request_timeout if timeout is None else timeout
        )

    async def snapshot(
        self, name: str, *, ansi: bool = False, timeout: float | None = None
    ) -> dict[str, Any]:
        """What the agent's screen shows: ``{text, rows, cols, cursor, offset}`` (see
        :class:`~trio_relay.wire.ScreenSnapshot`), with ANSI colours and attributes if
        ``ansi``. A PTY agent that has drawn nothing and not been resized since its last
        snapshot is answered from that one (:mod:`.screens`) without a round trip; the
        payload must not be changed. Otherwise as :meth:`request_worker`, and raises what it
        raises. Cancellation: a checkpoint either way."""
        agent = self.supervisor.get(name)
        screens = agent.screens
        hello = agent.hello
        pty = hello is not None and hello.worker == "pty"
        if pty and self.correlator.is_attached(name):
            kept = screens.current(ansi)
            if kept is not None:
                await trio.lowlevel.checkpoint()
                return kept
        token = screens.asking()
        payload = await self.request_worker(name, "snapshot", {"ansi": ansi}, timeout)
        if pty and isinstance(payload, dict):
            screens.keep(ansi, token, payload)
        return payload

    async def write_input(self, name: str, data: str) -> None:
        """Type ``data`` into the agent's terminal; return once the frame is written.
        Raises WorkerNotFound, ChannelClosed, or RequestTimeout if the worker has not read
        it within ``request_timeout`` (the frame then stays queued, whole)."""
        await self._write(name, "input", encode(WriteInput(data=data)))

    async def resize(self, name: str, rows: int, cols: int) -> None:
        """Resize the agent's terminal; return once the frame is written (then an
        ``agent_resized`` event says so). Raises WorkerNotFound, ChannelClosed,
        RequestTimeout, or ValueError for a size out of range."""
        check_terminal_size(rows, cols)
        self.supervisor.get(name).screens.resized()
        await self._write(name, "resize", encode(Resize(rows=rows, cols=cols)))
        self.events.emit(AgentResized(agent=name, rows=rows, cols=cols))

    async def _write(self, name: str, what: str, frame: bytes) -> None:
        writer = self.supervisor.running(name).writer
        with trio.move_on_after(self.request_timeout) as scope:
            await writer.send(frame)
        if scope.cancelled_caught:
            raise RequestTimeout(name, what, self.request_timeout)

    def agent_processes(self) -> AgentProcesses:
        """Each running agent's worker pid and the sessions its processes live in, by
        name: who a connecting process belongs to (see peers.py)."""
        workers: dict[int, str] = {}
        sessions: dict[int, str] = {}
        for agent in self.supervisor.agents():
            proc = agent.proc
            if proc is None or proc.has_exited or not agent.live:
                continue
            if proc.leads_session:  # not an agent in the shared PTY host: its pid is shared
                workers[proc.pid] = agent.name
                sessions[proc.pid] = agent.name
            if proc.program_session is not None:
                sessions[proc.program_session] = agent.name
        return AgentProcesses(self.run_id, workers, sessions)

    def agent(self, name: str) -> AgentInfo:
        """Raises WorkerNotFound."""
        return self._info(self.supervisor.get(name))

    def agents(self) -> list[AgentInfo]:
        return [self._info(agent) for agent in self.supervisor.agents()]

    def logs(self, name: str) -> list[str]:
        """The last lines the agent's worker wrote to stderr. Raises WorkerNotFound."""
        return self.supervisor.get(name).stderr_lines

    def statistics(self) -> CorrelatorStatistics:
        return self.correlator.statistics()

    async def shutdown(self) -> None:
        """Stop taking deliveries, release every agent (``agent_exited`` with ``intended:
        true``); return when all are reaped. Pending deliveries stay in the store, and the
        agents stay marked to be respawned by the next broker on it. Idempotent."""
        self.delivery_engine.close_intake()
        await self.supervisor.shutdown()

    def waiting(self, name: str) -> str | None:
        """Why the deliveries handed to agent ``name``'s worker wait there (it is starting,
        busy, waits for a person, or a draft is in its input line), or None."""
        return self.transport.waiting(name)

    def _info(self, agent: Agent) -> AgentInfo:
        return AgentInfo(
            name=agent.name,
            state=agent.state,
            pid=agent.pid,
            argv=list(agent.spec.argv),
            restarts=agent.restarts,
            started_at=agent.started_at,
            last_exit=agent.last_exit.describe() if agent.last_exit else None,
            last_reason=agent.last_reason,
            last_activity=agent.last_activity,
            pending_deliveries=self.delivery_engine.open_count(agent.name),
            pending_requests=self.correlator.pending_count(agent.name),
            protocol_errors=agent.protocol_errors,
            activity=agent.activity,
            activity_since=agent.activity_since,
            activity_text=agent.activity_text,
            waiting=agent.waiting,
            profile=agent.spec.profile,
        )


@asynccontextmanager
async def open_broker(
    state_dir: StateDir | str | os.PathLike[str] | None = None,
    *,
    respawn: bool = True,
    busy_timeout: float = 5.0,
    retention: float | None = DEFAULT_RETENTION,
    **options: Any,
) -> AsyncIterator[Broker]:
    """Run a broker for the duration of the block; its worker nursery lives inside.

    ``state_dir``: where the store lives (``relay.db``). A path is opened and locked here
    (BrokerAlreadyRunning if another broker has it); a :class:`StateDir` is used as given
    (its lock is the caller's). None: an in-memory store, nothing survives the block.
    On entry, open deliveries are recovered and, with ``respawn``, the agents that were
    running are started again (pass ``respawn=False`` to call :meth:`Broker.respawn`
    yourself, e.g. once ``agent_environment`` is set). Ended deliveries and released
    agents older than ``retention`` seconds are pruned now and then (None: never; see
    :meth:`Broker.prune`). Raises StoreError.

    Leaving the block, however it is left, stops intake and releases every agent under a
    shield, so no child outlives it; pending deliveries stay in the store, which is closed
    last. ``options`` are :class:`Broker`'s keyword arguments.
    """
    state, owned = _state(state_dir)
    try:
        if state is not None:
            state.kill_previous_run()
        path = ":memory:" if state is None else state.db_path
        async with open_store(path, busy_timeout=busy_timeout) as store:
            async with trio.open_nursery() as nursery:
                broker = Broker(nursery, store=store, **options)
                if state is not None:
                    state.run_path.write_text(broker.run_id)
                try:
                    await broker.delivery_engine.recover()
                    nursery.start_soon(broker.delivery_engine.run_timers)
                    if retention is not None and state is not None:
                        nursery.start_soon(prune_every, store, retention)
                    if respawn:
                        await broker.respawn()
                    yield broker
                finally:
                    with trio.CancelScope(shield=True):
                        await broker.shutdown()
                    nursery.cancel_scope.cancel()
    finally:
        if owned and state is not None:
            state.release_lock()


def _state(state_dir: StateDir | str | os.PathLike[str] | None) -> tuple[StateDir | None, bool]:
    if state_dir is None or isinstance(state_dir, StateDir):
        return state_dir, False
    state = StateDir.open(state_dir)
    state.acquire_lock()
    return state, True
