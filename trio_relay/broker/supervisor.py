"""The worker nursery: one supervisor task per agent; spawn, release, restart, shutdown.

Each agent's task starts its child (:func:`~trio_relay.broker.process.spawn_process`), reads
its frames (:class:`~trio_relay.broker.reader.FrameReader`) and waits for its exit. However
the run ends, it ends with one terminal event (see :mod:`trio_relay.broker.endings`); then
the agent's restart policy (:mod:`trio_relay.broker.restart`) decides whether it is started
again.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable

import trio

from trio_relay.broker import endings
from trio_relay.broker.agent import Agent, AgentSpec, Run
from trio_relay.broker.correlator import Correlator
from trio_relay.broker.events import EventLog
from trio_relay.broker.process import WorkerProcess, spawn_process
from trio_relay.broker.pty_host import PtyHost, hosted_args
from trio_relay.broker.reader import DeliveryReport, FrameReader, protocol_error
from trio_relay.broker.restart import RestartTracker
from trio_relay.broker.screens import LastScreens
from trio_relay.errors import AgentExists, ChannelClosed, SpawnFailed, WorkerNotFound
from trio_relay.linux.procfs import process_stat
from trio_relay.linux.sweep import is_child_session
from trio_relay.wire import (
    PROTOCOL_VERSION,
    AgentGaveUp,
    AgentRestarting,
    AgentSpawned,
    BrokerHello,
    WorkerHello,
    encode,
)
from trio_relay.wire.lines import DEFAULT_MAX_LINE

log = logging.getLogger(__name__)

#: After a death is seen: how long to take in the frames already in the worker's stdout pipe
#: before its in-flight requests fail (an escaped helper that keeps writing cannot hold the
#: news back longer than this).
PIPE_DRAIN_TIMEOUT = 0.1
#: After a death is reported: how long to wait for the rest of the worker's stderr (for
#: ``logs``) before its pipes are closed. Nothing waits on this to learn of the death.
OUTPUT_DRAIN_TIMEOUT = 1.0
#: Ended agents kept for listing and ``logs``; beyond this the oldest are forgotten.
DEFAULT_HISTORY = 256


class Supervisor:
    """Owns the worker nursery. Create one per broker with the nursery its tasks live in.

    Whatever goes wrong in one agent's supervision (a fault in our code, a leftover process
    the broker may not signal, a worker's lie) ends that agent only: one terminal event,
    its in-flight requests failed, its child reaped. Nothing escapes into the nursery.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        correlator: Correlator,
        events: EventLog,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        history: int = DEFAULT_HISTORY,
        rng: random.Random | None = None,
        shared_pty: bool = False,
    ) -> None:
        self._nursery = nursery
        #: Where PTY workers run with ``shared_pty`` (one process for all), else None.
        self.pty_host = PtyHost(nursery) if shared_pty else None
        self._correlator = correlator
        self._events = events
        self._max_line = max_line
        self._history = history
        self._rng = rng or random.Random()
        self._agents: dict[str, Agent] = {}
        self._ended: deque[Agent] = deque()  # ended agents, oldest first
        #: Where the worker's delivery reports go (``delivery_injected``/``_verified``/
        #: ``_failed`` frames), called as ``hook(agent, frame)`` from the frame reader; it
        #: must be quick and not raise. Unset, each becomes its broker event at once.
        self.delivery_reports: Callable[[str, DeliveryReport], None] | None = None
        #: Called with an agent's name when its record is forgotten (see ``history``).
        self.forgotten: Callable[[str], None] | None = None

    # -- operations

    async def spawn(self, spec: AgentSpec) -> Agent:
        """Start an agent; return once its child has said hello.

        Raises AgentExists if an agent by that name runs or will run again, SpawnFailed
        (after a ``spawn_failed`` event) if it cannot be started. An agent by that name
        whose last run has ended but whose task is still closing its pipes is waited for.
        Cancellation: if cancelled before the hello, the child is stopped and reaped and a
        ``spawn_failed`` event says so before this returns.
        """
        existing = self._agents.get(spec.name)
        if existing is not None and existing.active:
            if self.taken(spec.name):
                raise AgentExists(spec.name)
            await existing.done.wait()  # ended; its pipes close within OUTPUT_DRAIN_TIMEOUT
            if self._agents.get(spec.name) is not existing:
                raise AgentExists(spec.name)
        agent = Agent(spec, RestartTracker(spec.restart, self._rng), self._events.emit)
        self._agents[spec.name] = agent
        await self._nursery.start(self._supervise, agent)
        return agent

    async def release(self, name: str, reason: str = "released") -> Agent:
        """Stop an agent for good: shutdown frame, SIGTERM after its grace, then SIGKILL.

        Returns once its child is reaped and ``agent_exited(intended=true)`` is emitted.
        Raises WorkerNotFound if no active agent has that name. Cancellation: the stop
        goes on in the agent's own task; cancelling only stops waiting for it.
        """
        agent = self._agents.get(name)
        if agent is None or not agent.active:
            await trio.lowlevel.checkpoint()
            raise WorkerNotFound(name)
        agent.request_stop(reason)
        if agent.proc is not None:
            agent.proc.poke()
        if agent.backoff_scope is not None:
            agent.backoff_scope.cancel()
        await agent.done.wait()
        return agent

    async def shutdown(self) -> None:
        """Release every active agent at once; return when all are reaped."""
        async with trio.open_nursery() as nursery:
            for agent in list(self._agents.values()):
                if agent.active:
                    nursery.start_soon(self._release_quietly, agent.name)

    async def _release_quietly(self, name: str) -> None:
        try:
            await self.release(name, "broker shutdown")
        except WorkerNotFound:
            pass  # it ended on its own meanwhile: nothing left to release

    def taken(self, name: str) -> bool:
        """Whether a spawn of ``name`` would be refused: an agent by that name runs, will
        run again, or is being released."""
        agent = self._agents.get(name)
        return agent is not None and agent.active and (agent.live or agent.stop_requested)

    def get(self, name: str) -> Agent:
        agent = self._agents.get(name)
        if agent is None:
            raise WorkerNotFound(name)
        return agent

    def running(self, name: str) -> WorkerProcess:
        """The running child of agent ``name``. Raises WorkerNotFound."""
        agent = self._agents.get(name)
        if agent is None or agent.state != "running" or agent.proc is None:
            raise WorkerNotFound(name)
        return agent.proc

    def agents(self) -> list[Agent]:
        return list(self._agents.values())

    def _remember(self, agent: Agent) -> None:
        """Keep the ended ``agent`` for listing; forget the oldest beyond ``history``."""
        self._ended.append(agent)
        while len(self._ended) > self._history:
            old = self._ended.popleft()
            if self._agents.get(old.name) is old:
                del self._agents[old.name]
                if self.forgotten is not None:
                    self.forgotten(old.name)

    # -- the agent's task

    async def _supervise(
        self, agent: Agent, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        try:
            while True:
                try:
                    await self._run_once(agent, None if started else task_status)
                except SpawnFailed:
                    if not started:
                        raise
                started = True
                if agent.state != "restarting":
                    return
                assert agent.next_delay is not None
                agent.change_state(
                    "restarting",
                    AgentRestarting(
                        agent=agent.name, attempt=agent.tracker.attempt, delay=agent.next_delay
                    ),
                )
                with trio.CancelScope() as agent.backoff_scope:
                    await trio.sleep(agent.next_delay)
                agent.backoff_scope = None
                if agent.stop_requested:
                    agent.change_state("released")
                    return
        except Exception as exc:
            if not started:
                raise
            # A fault between runs: this agent ends here, and nothing else does.
            log.exception("supervisor of %s failed", agent.name)
            reason = f"supervisor error: {exc!r}"
            agent.change_state(
                "failed",
                AgentGaveUp(agent=agent.name, attempts=agent.tracker.attempt, reason=reason),
                reason=reason,
            )
        finally:
            agent.done.set()
            self._remember(agent)

    async def _run_once(self, agent: Agent, task_status: trio.TaskStatus[Agent] | None) -> None:
        """Run the agent's child once, from spawn to reaped, and end the run with its one
        terminal event (which also decides what comes next: see :mod:`.endings`).
        Raises SpawnFailed if it never said hello, or (``task_status``) if the run ended
        before the spawn was told it started.

        Cancellation: the child is stopped and reaped under a shield before Cancelled
        propagates, and the exit is reported as intended (a broker shutdown). Any other
        exception (a fault of ours) ends the run and the agent, never the caller.
        """
        run = Run(attempt=agent.tracker.attempt, began=trio.current_time())
        agent.screens = LastScreens()
        agent.change_state("starting")
        proc = await self._start_child(agent, run)
        fault: Exception | None = None
        try:
            await self._attend(agent, proc, run, task_status)
        except Exception as exc:  # a fault of ours, in this run's tasks or its ending
            fault = exc
            log.exception("supervisor of %s failed", agent.name)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await proc.close()
                except Exception as exc:
                    fault = fault or exc
                    log.exception("cannot close the pipes of %s", agent.name)
            if fault is not None:
                endings.end_by_fault(agent, proc, run, fault, self._correlator)
        if not run.attached:
            raise SpawnFailed(agent.name, run.failure or f"internal error: {fault!r}")
        if task_status is not None and not run.reported:  # it ended before the spawn returned
            raise SpawnFailed(agent.name, agent.last_reason or f"internal error: {fault!r}")

    async def _start_child(self, agent: Agent, run: Run) -> WorkerProcess:
        """Spawn the run's child (or, with the shared PTY host, start its PTY worker
        there). Raises SpawnFailed after ending the run with it."""
        spec, name = agent.spec, agent.name
        hosted = hosted_args(spec.argv) if self.pty_host is not None else None
        try:
            if self.pty_host is not None and hosted is not None:
                proc: WorkerProcess = await self.pty_host.start_worker(
                    name, hosted, cwd=spec.cwd, env=spec.env
                )
            else:
                proc = spawn_process(name, spec.argv, cwd=spec.cwd, env=spec.env)
        except SpawnFailed as exc:
            endings.end_unstarted(agent, run, exc.reason, exc.errno)
            raise
        except Exception as exc:
            log.exception("cannot spawn %s", name)
            endings.end_unstarted(agent, run, f"internal error: {exc!r}")
            raise SpawnFailed(name, f"internal error: {exc!r}") from exc
        agent.proc = proc
        proc.on_exit = lambda: setattr(run, "intended", agent.stop_requested)
        return proc

    async def _attend(
        self,
        agent: Agent,
        proc: WorkerProcess,
        run: Run,
        task_status: trio.TaskStatus[Agent] | None,
    ) -> None:
        """Greet the child, report the spawn (``task_status``), wait for its end, and end
        the run (shielded). Raises a fault of ours; Cancelled after the run has ended."""
        reader = FrameReader(
            agent,
            proc,
            run,
            correlator=self._correlator,
            events=self._events,
            max_line=self._max_line,
            on_hello=lambda hello: self._accept_hello(agent, proc, run, hello),
            reports=lambda: self.delivery_reports,
        )
        async with trio.open_nursery() as nursery:
            proc.start_tasks(nursery)
            proc.start_io_task(nursery, reader.read)
            try:
                await self._greet(agent, proc, run)
                if run.attached:
                    if task_status is not None:
                        task_status.started(agent)
                        run.reported = True
                    await proc.wait_until(
                        lambda: proc.has_exited or run.eof or agent.stop_requested
                    )
                    if not proc.has_exited and not agent.stop_requested:
                        run.note = "closed its stdout; "
            except BaseException as exc:
                # Cancelled from outside (not by a failing task of this nursery): the
                # broker is shutting down, or the spawn's caller gave up.
                if _is_cancelled(exc) and not nursery.cancel_scope.cancel_called:
                    run.cancelled = True
                    agent.request_stop("broker shutdown")
                    run.gave_up = not run.attached  # a hello from now on is too late
                raise
            finally:
                try:
                    with trio.CancelScope(shield=True):
                        # A task that failed leaves the report to the fault handler.
                        await self._end_run(
                            agent, proc, run, report=not nursery.cancel_scope.cancel_called
                        )
                finally:
                    proc.cancel_io_tasks()

    async def _end_run(self, agent: Agent, proc: WorkerProcess, run: Run, *, report: bool) -> None:
        """Stop the child (if it still runs), take in what it wrote before it died, kill
        what it left behind, and (with ``report``) end the run with its terminal event; then
        collect its last stderr lines. Shielded by the caller."""
        await proc.stop(agent.spec.grace, agent.spec.kill_grace)
        # Frames already in the pipe were written before the death (answers to requests
        # in flight, the wrapper's exit report): take them in, but no longer than a moment.
        with trio.move_on_after(PIPE_DRAIN_TIMEOUT):
            while not run.eof and proc.stdout_pending():  # noqa: ASYNC110 (no event for a pipe's fill level)
                await trio.sleep(0.001)
        await proc.kill_tagged()  # what left the worker's session but carries its tag
        if not report:
            return
        if run.attached:
            endings.report_exit(agent, proc, run, self._correlator)
        else:
            endings.end_unstarted(agent, run, endings.no_hello(proc, run, agent))
        with trio.move_on_after(OUTPUT_DRAIN_TIMEOUT):
            await proc.wait_until(lambda: run.eof and proc.stderr_closed)

    async def _greet(self, agent: Agent, proc: WorkerProcess, run: Run) -> None:
        """Send our hello and wait for the reader to accept the worker's (``run.attached``)
        or to find it wanting (``run.failure``)."""
        try:
            await proc.writer.send(encode(BrokerHello()))
        except ChannelClosed:
            pass  # it is already gone; the wait below sees how
        with trio.move_on_after(agent.spec.hello_timeout):
            await proc.wait_until(
                lambda: (
                    run.attached
                    or run.failure is not None
                    or proc.has_exited
                    or run.eof
                    or agent.stop_requested
                )
            )
        if run.attached or run.failure is not None:
            return
        if agent.stop_requested:
            run.gave_up = True  # released: the run ends with no_hello's reason
            return
        if proc.has_exited or run.eof:
            # Its last words on stderr, and its exit status when the end of its stdout
            # came first, belong in the reason.
            with trio.move_on_after(0.5):
                await proc.wait_until(lambda: proc.stderr_closed and proc.has_exited)
            if run.attached or run.failure is not None:
                return
        run.failure = endings.no_hello(proc, run, agent)

    def _accept_hello(
        self, agent: Agent, proc: WorkerProcess, run: Run, hello: WorkerHello
    ) -> None:
        """Called by the reader on the worker's hello, before it reads the next frame, so
        ``agent_spawned`` precedes every event of the run."""
        run.hello = hello
        proc.poke()
        # Too late if the spawn gave up on it (released, cancelled, timed out): the run is
        # not attached, though its program's session is still noted, to be killed with it.
        late = run.gave_up or run.failure is not None
        if not late and hello.protocol != PROTOCOL_VERSION:
            run.failure = (
                f"speaks worker protocol {hello.protocol}; this broker speaks {PROTOCOL_VERSION}"
            )
            return
        if hello.program_pid is not None:
            if is_child_session(proc.pid, hello.program_pid):
                proc.program_session = hello.program_pid
            elif process_stat(hello.program_pid) is None:
                # Gone already (a program that exits at once, like `true`): there is no
                # session to trust or to kill, and nothing a person needs to hear about.
                log.debug("%s: its program %d has already exited", agent.name, hello.program_pid)
            else:
                protocol_error(
                    self._events,
                    agent,
                    f"its hello names program_pid {hello.program_pid}, which does not lead a"
                    f" session of its own children; not trusted (that session will not be"
                    f" killed with it)",
                    b"",
                )
        if late:
            return
        agent.hello = hello
        self._correlator.attach(agent.name, proc.writer.send)
        run.attached = True
        agent.started_at = time.time()
        agent.change_state(
            "running",
            AgentSpawned(
                agent=agent.name, pid=proc.pid, argv=list(agent.spec.argv), attempt=run.attempt
            ),
        )


def _is_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is Cancelled, or a group holding one."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(trio.Cancelled) is not None
    return isinstance(exc, trio.Cancelled)
