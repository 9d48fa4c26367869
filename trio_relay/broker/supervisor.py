"""The worker nursery: one supervisor task per agent; spawn, release, restart, shutdown.

Each agent's task starts its child (:func:`~trio_relay.broker.process.spawn_process`), reads its frames
(answers to the correlator, events to the event log) and waits for its exit. Its failure
handler turns every death into exactly one terminal event, however many signs of it arrive
(pipe end of file, the exit status, a write error):

- ``agent_exited`` with ``intended: false`` and the real code or signal for an exit nobody
  asked for, after failing each of the worker's in-flight requests with WorkerExited;
- ``agent_exited`` with ``intended: true`` for a release or a broker shutdown;
- ``spawn_failed`` with the OS error when the child cannot be started.

Then the agent's restart policy decides whether it is started again.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Literal

import trio

from trio_relay.broker.correlator import Correlator
from trio_relay.broker.events import EventLog
from trio_relay.broker.lines import read_lines
from trio_relay.broker.process import ExitStatus, WorkerProcess, spawn_process
from trio_relay.errors import (
    AgentExists,
    ChannelClosed,
    ProtocolError,
    SpawnFailed,
    WorkerExited,
    WorkerNotFound,
)
from trio_relay.linux.sweep import is_child_session
from trio_relay.wire import (
    PROTOCOL_VERSION,
    AgentExited,
    AgentGaveUp,
    AgentIdle,
    AgentOutput,
    AgentReady,
    AgentRestarting,
    AgentSpawned,
    BrokerHello,
    DeliveryFailed,
    DeliveryFailedEvent,
    DeliveryInjected,
    DeliveryInjectedEvent,
    DeliveryUnverifiedEvent,
    DeliveryVerified,
    DeliveryVerifiedEvent,
    Exited,
    Idle,
    Output,
    Ready,
    Response,
    SpawnFailedEvent,
    WorkerHello,
    WorkerProtocolError,
    decode_worker_frame,
    encode,
)
from trio_relay.wire.lines import DEFAULT_MAX_LINE, OversizedLine
from trio_relay.wire.vocabulary import RESTART_MODES, RestartMode

log = logging.getLogger(__name__)

DeliveryReport = DeliveryInjected | DeliveryVerified | DeliveryFailed
_DELIVERY_REPORTS = (DeliveryInjected, DeliveryVerified, DeliveryFailed)


@dataclass(frozen=True)
class RestartPolicy:
    """When and how fast an agent that exited on its own is started again.

    ``never``: not restarted. ``on-failure``: restarted after a non-zero exit or a signal.
    ``always``: restarted after any exit the broker did not ask for. The n-th consecutive
    restart waits ``initial_delay * 2**(n-1)`` seconds, capped at ``max_delay``, less a
    random ``jitter`` fraction; after ``max_attempts`` consecutive restarts it gives up. A run
    that lasted ``stable_after`` seconds resets the count.
    """

    mode: RestartMode = "never"
    initial_delay: float = 0.5
    max_delay: float = 30.0
    max_attempts: int = 10
    stable_after: float = 60.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.mode not in RESTART_MODES:
            raise ValueError(f"unknown restart mode {self.mode!r}")
        if not (0 <= self.jitter < 1) or self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("restart delays must be non-negative and jitter in [0, 1)")

    def wants_restart(self, status: ExitStatus | None, intended: bool) -> bool:
        """Whether an exit with ``status`` (None: the restart itself failed to spawn) calls
        for a restart."""
        if intended or self.mode == "never":
            return False
        return self.mode == "always" or status is None or status.failed

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before restart number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * 2 ** min(attempt - 1, 62))
        return base * (1 - self.jitter * rng.random())


class RestartTracker:
    """Counts consecutive restarts for one agent; pure, so it is tested without processes."""

    def __init__(self, policy: RestartPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self, ran_for: float) -> float | None:
        """After a run of ``ran_for`` seconds that wants a restart: the delay before it, or
        None when the attempts are spent (give up)."""
        if ran_for >= self.policy.stable_after:
            self.attempt = 0
        self.attempt += 1
        if self.attempt > self.policy.max_attempts:
            return None
        return self.policy.delay(self.attempt, self._rng)


@dataclass(frozen=True)
class AgentSpec:
    """What to run as an agent. ``env`` is the child's whole environment (None: inherit)."""

    name: str
    argv: Sequence[str]
    cwd: str | None = None
    env: Mapping[str, str] | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    hello_timeout: float = 10.0
    grace: float = 2.0
    kill_grace: float = 2.0

    def __post_init__(self) -> None:
        if not self.name or not self.name.isprintable() or len(self.name) > 128:
            raise ValueError(f"bad agent name {self.name!r}")
        if not self.argv:
            raise ValueError("an agent needs a command")


AgentState = Literal["starting", "running", "restarting", "exited", "released", "gave_up", "failed"]
#: States in which an agent runs or will run again.
LIVE_STATES = frozenset({"starting", "running", "restarting"})

#: After a death is seen: how long to take in the frames already in the worker's stdout pipe
#: before its in-flight requests fail (an escaped helper that keeps writing cannot hold the
#: news back longer than this).
PIPE_DRAIN_TIMEOUT = 0.1
#: After a death is reported: how long to wait for the rest of the worker's stderr (for
#: ``logs``) before its pipes are closed. Nothing waits on this to learn of the death.
OUTPUT_DRAIN_TIMEOUT = 1.0
#: Ended agents kept for listing and ``logs``; beyond this the oldest are forgotten.
DEFAULT_HISTORY = 256


class Agent:
    """The supervisor's record of one agent, kept a while after it ends (for listing)."""

    def __init__(self, spec: AgentSpec, tracker: RestartTracker) -> None:
        self.spec = spec
        self.tracker = tracker
        self.state: AgentState = "starting"
        self.proc: WorkerProcess | None = None
        self.hello: WorkerHello | None = None
        self.restarts = 0
        self.last_exit: ExitStatus | None = None
        self.last_reason = ""
        self.started_at: float | None = None  # wall clock of the current run's hello
        self.last_activity: float | None = None  # wall clock of the worker's last frame
        self.protocol_errors = 0
        self.stop_requested = False
        self.stop_reason = ""
        self.next_delay: float | None = None  # the restart delay decided when a run ended
        self.done = trio.Event()
        self._backoff_scope: trio.CancelScope | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def active(self) -> bool:
        """Its task is alive (the name is taken), even if its last run has ended."""
        return not self.done.is_set()

    @property
    def live(self) -> bool:
        """It runs, or will run again (its restart policy brings it back)."""
        return self.state in LIVE_STATES

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.state == "running" else None

    @property
    def stderr_lines(self) -> list[str]:
        return self.proc.stderr_ring.lines() if self.proc is not None else []

    def request_stop(self, reason: str) -> None:
        self.stop_requested = True
        self.stop_reason = self.stop_reason or reason


@dataclass
class _Run:
    """One run of an agent's child: what the frame reader learned, and how it ended."""

    attempt: int = 0
    began: float = 0.0
    hello: WorkerHello | None = None
    failure: str | None = None
    eof: bool = False
    attached: bool = False
    reported_exit: Exited | None = None
    note: str = ""
    #: Whether the broker had asked for the exit when the death was seen (None: not yet).
    intended: bool | None = None
    #: Its one terminal event (agent_exited or spawn_failed) was emitted.
    ended: bool = False
    #: Cancelled from outside (a broker shutdown, or a spawn whose caller gave up).
    cancelled: bool = False


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
    ) -> None:
        self._nursery = nursery
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
        agent = Agent(spec, RestartTracker(spec.restart, self._rng))
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
        if agent._backoff_scope is not None:
            agent._backoff_scope.cancel()
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
                self._events.emit(
                    AgentRestarting(
                        agent=agent.name, attempt=agent.tracker.attempt, delay=agent.next_delay
                    )
                )
                with trio.CancelScope() as agent._backoff_scope:
                    await trio.sleep(agent.next_delay)
                agent._backoff_scope = None
                if agent.stop_requested:
                    agent.state = "released"
                    return
        except Exception as exc:
            if not started:
                raise
            # A fault between runs: this agent ends here, and nothing else does.
            log.exception("supervisor of %s failed", agent.name)
            agent.state, agent.last_reason = "failed", f"supervisor error: {exc!r}"
            self._events.emit(
                AgentGaveUp(
                    agent=agent.name, attempts=agent.tracker.attempt, reason=agent.last_reason
                )
            )
        finally:
            agent.done.set()
            self._remember(agent)

    async def _run_once(self, agent: Agent, task_status: trio.TaskStatus[Agent] | None) -> None:
        """Run the agent's child once, from spawn to reaped, and end the run with its one
        terminal event (which also decides what comes next: see :meth:`_report_exit`).
        Raises SpawnFailed if it never said hello.

        Cancellation: the child is stopped and reaped under a shield before Cancelled
        propagates, and the exit is reported as intended (a broker shutdown). Any other
        exception (a fault of ours) ends the run and the agent, never the caller.
        """
        spec, name = agent.spec, agent.spec.name
        run = _Run(attempt=agent.tracker.attempt, began=trio.current_time())
        agent.state = "starting"
        try:
            proc = spawn_process(name, spec.argv, cwd=spec.cwd, env=spec.env)
        except SpawnFailed as exc:
            self._end_unstarted(agent, run, exc.reason, exc.errno)
            raise
        except Exception as exc:
            log.exception("cannot spawn %s", name)
            self._end_unstarted(agent, run, f"internal error: {exc!r}")
            raise SpawnFailed(name, f"internal error: {exc!r}") from exc
        agent.proc = proc
        proc.on_exit = lambda: setattr(run, "intended", agent.stop_requested)
        fault: Exception | None = None
        try:
            try:
                async with trio.open_nursery() as nursery:
                    proc.start_tasks(nursery)
                    proc.start_io_task(nursery, self._read_frames, agent, proc, run)
                    try:
                        await self._greet(agent, proc, run)
                        if run.attached:
                            if task_status is not None:
                                task_status.started(agent)
                            await proc.wait_until(
                                lambda: proc.has_exited or run.eof or agent.stop_requested
                            )
                            if not proc.has_exited and not agent.stop_requested:
                                run.note = "closed its stdout; "
                    except BaseException as exc:
                        # Cancelled from outside (not by a failing task of this nursery):
                        # the broker is shutting down, or the spawn's caller gave up.
                        if _is_cancelled(exc) and not nursery.cancel_scope.cancel_called:
                            run.cancelled = True
                            agent.request_stop("broker shutdown")
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
            except Exception as exc:  # a fault of ours, in this run's tasks or its ending
                fault = exc
                log.exception("supervisor of %s failed", name)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await proc.close()
                except Exception as exc:
                    fault = fault or exc
                    log.exception("cannot close the pipes of %s", name)
            if fault is not None:
                self._end_by_fault(agent, proc, run, fault)
        if not run.attached:
            raise SpawnFailed(name, run.failure or f"internal error: {fault!r}")

    async def _end_run(self, agent: Agent, proc: WorkerProcess, run: _Run, *, report: bool) -> None:
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
            self._report_exit(agent, proc, run)
        else:
            self._end_unstarted(agent, run, self._no_hello(proc, run, agent))
        with trio.move_on_after(OUTPUT_DRAIN_TIMEOUT):
            await proc.wait_until(lambda: run.eof and proc.stderr_closed)

    async def _greet(self, agent: Agent, proc: WorkerProcess, run: _Run) -> None:
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
        if run.attached or run.failure is not None or agent.stop_requested:
            return
        if proc.has_exited or run.eof:  # its last words on stderr belong in the reason
            with trio.move_on_after(0.5):
                await proc.wait_until(lambda: proc.stderr_closed)
        run.failure = self._no_hello(proc, run, agent)

    def _accept_hello(
        self, agent: Agent, proc: WorkerProcess, run: _Run, hello: WorkerHello
    ) -> None:
        """Called by the reader on the worker's hello, before it reads the next frame, so
        ``agent_spawned`` precedes every event of the run."""
        run.hello = hello
        proc.poke()
        if hello.protocol != PROTOCOL_VERSION:
            run.failure = (
                f"speaks worker protocol {hello.protocol}; this broker speaks {PROTOCOL_VERSION}"
            )
            return
        agent.hello = hello
        if hello.program_pid is not None:
            if is_child_session(proc.pid, hello.program_pid):
                proc.program_session = hello.program_pid
            else:
                self._protocol_error(
                    agent,
                    f"its hello names program_pid {hello.program_pid}, which does not lead a"
                    f" session of its own children; not trusted (that session will not be"
                    f" killed with it)",
                    b"",
                )
        self._correlator.attach(agent.name, proc.writer.send)
        run.attached = True
        agent.state, agent.started_at = "running", time.time()
        self._events.emit(
            AgentSpawned(
                agent=agent.name, pid=proc.pid, argv=list(agent.spec.argv), attempt=run.attempt
            )
        )

    def _report_exit(self, agent: Agent, proc: WorkerProcess, run: _Run) -> None:
        """The failure handler: fail the worker's in-flight requests, decide what comes next
        (released, exited, restarting after a delay, gave up), and emit the run's one
        terminal event. Idempotent."""
        if run.ended:
            return
        status = proc.status or ExitStatus(None, None)
        if run.reported_exit is not None:  # a wrapper told us how the program inside ended
            status = ExitStatus(run.reported_exit.code, run.reported_exit.signal)
        intended = run.intended if run.intended is not None else agent.stop_requested
        reason = (
            (agent.stop_reason or "broker shutdown") if intended else run.note + status.describe()
        )
        if proc.unkillable:
            reason += (
                f"; {len(proc.unkillable)} process(es) it left could not be killed"
                f" ({proc.unkillable[0]})"
            )
        self._correlator.detach(
            agent.name, lambda: WorkerExited(agent.name, status.code, status.signal)
        )
        agent.last_exit, agent.last_reason = status, reason
        agent.state = "released" if intended else "exited"
        gave_up = not intended and self._decide_restart(agent, run, status)
        run.ended = True
        self._events.emit(
            AgentExited(
                agent=agent.name,
                code=status.code,
                signal=status.signal,
                intended=intended,
                reason=reason,
            )
        )
        if gave_up:
            self._events.emit(
                AgentGaveUp(agent=agent.name, attempts=agent.tracker.attempt - 1, reason=reason)
            )

    def _decide_restart(self, agent: Agent, run: _Run, status: ExitStatus | None) -> bool:
        """After a run that ended on its own (``status`` None: a restart that could not be
        spawned): set the agent restarting (with its delay) if its policy says so. Returns
        whether it gave up instead (its attempts are spent)."""
        if agent.stop_requested or not agent.spec.restart.wants_restart(status, False):
            return False
        agent.next_delay = agent.tracker.next_delay(trio.current_time() - run.began)
        if agent.next_delay is None:
            agent.state = "gave_up"
            return True
        agent.state = "restarting"
        agent.restarts += 1
        return False

    def _end_unstarted(self, agent: Agent, run: _Run, error: str, errno: int | None = None) -> None:
        """The terminal event of a run that never got past its hello. Idempotent."""
        if run.ended:
            return
        run.failure = error
        agent.state, agent.last_reason = "failed", f"cannot start {agent.name!r}: {error}"
        gave_up = run.attempt > 0 and self._decide_restart(agent, run, None)
        run.ended = True
        self._events.emit(SpawnFailedEvent(agent=agent.name, error=error, errno=errno))
        if gave_up:
            self._events.emit(
                AgentGaveUp(agent=agent.name, attempts=agent.tracker.attempt - 1, reason=error)
            )

    def _end_by_fault(self, agent: Agent, proc: WorkerProcess, run: _Run, fault: Exception) -> None:
        """A fault of ours ended the run: it ends the agent too (no restart), with the run's
        one terminal event if it has not had it yet."""
        if not run.attached:
            self._end_unstarted(agent, run, f"internal error: {fault!r}")
            agent.state = "failed"
            return
        reason = f"supervisor error: {fault!r}"
        agent.state, agent.last_reason = "failed", reason
        if run.ended:
            return
        status = proc.status or ExitStatus(None, None)
        self._correlator.detach(
            agent.name, lambda: WorkerExited(agent.name, status.code, status.signal)
        )
        agent.last_exit = status
        run.ended = True
        self._events.emit(
            AgentExited(
                agent=agent.name,
                code=status.code,
                signal=status.signal,
                intended=False,
                reason=reason,
            )
        )

    @staticmethod
    def _no_hello(proc: WorkerProcess, run: _Run, agent: Agent) -> str:
        """Why a run did not get past its hello."""
        if run.failure is not None:
            return run.failure
        tail = "; ".join(proc.stderr_ring.lines()[-3:])
        tail = f" (stderr: {tail})" if tail else ""
        if run.cancelled:
            return f"the spawn was cancelled before the worker said hello{tail}"
        if agent.stop_requested:
            return f"released before it said hello{tail}"
        if proc.status is not None:
            return f"{proc.status.describe()} before saying hello{tail}"
        if run.eof:
            return f"closed its stdout before saying hello{tail}"
        return (
            f"did not say hello within {agent.spec.hello_timeout:g} s; is it a worker? "
            f"Terminal programs run under the PTY worker{tail}"
        )

    async def _read_frames(self, agent: Agent, proc: WorkerProcess, run: _Run) -> None:
        """Route every frame the worker writes until its stdout ends."""
        name = agent.name
        resolve = self._correlator.resolve
        async with aclosing(read_lines(proc.stdout, self._max_line)) as batches:
            async for batch in batches:
                agent.last_activity = time.time()
                for line in batch:
                    if type(line) is OversizedLine:
                        self._protocol_error(
                            agent,
                            f"line of {line.length} bytes exceeds the {self._max_line} byte limit;"
                            " discarded",
                            line.head,
                        )
                        continue
                    try:
                        frame = decode_worker_frame(line)  # type: ignore[arg-type]
                    except ProtocolError as exc:
                        self._protocol_error(agent, str(exc), line)  # type: ignore[arg-type]
                        continue
                    if type(frame) is Response:
                        resolve(name, frame.request_id, frame.payload, frame.error)
                    elif run.hello is None:
                        if type(frame) is WorkerHello:
                            self._accept_hello(agent, proc, run, frame)
                        else:
                            self._protocol_error(
                                agent, f"{type(frame).__name__} before hello", line
                            )
                    elif run.attached and not run.ended:  # nothing follows agent_exited
                        self._on_event(agent, run, frame)
        run.eof = True
        proc.poke()

    def _on_event(self, agent: Agent, run: _Run, frame: object) -> None:
        name = agent.name
        emit = self._events.emit
        if type(frame) is Output:
            emit(AgentOutput(agent=name, offset=frame.offset, data=frame.data))
        elif type(frame) is Ready:
            emit(AgentReady(agent=name))
        elif type(frame) is Idle:
            emit(AgentIdle(agent=name))
        elif type(frame) is Exited:
            if frame.code is None and frame.signal is None:
                self._protocol_error(agent, "an exited frame with neither code nor signal", b"")
            else:
                run.reported_exit = frame
        elif self.delivery_reports is not None and type(frame) in _DELIVERY_REPORTS:
            self.delivery_reports(name, frame)  # type: ignore[arg-type]
        elif type(frame) is DeliveryInjected:
            emit(DeliveryInjectedEvent(agent=name, delivery_id=frame.delivery_id))
        elif type(frame) is DeliveryVerified:
            verdict = (
                DeliveryVerifiedEvent if frame.verification == "echo" else DeliveryUnverifiedEvent
            )
            emit(
                verdict(
                    agent=name,
                    delivery_id=frame.delivery_id,
                    verification=frame.verification,
                    reason=frame.reason,
                )
            )
        elif type(frame) is DeliveryFailed:
            emit(
                DeliveryFailedEvent(agent=name, delivery_id=frame.delivery_id, reason=frame.reason)
            )
        elif type(frame) is WorkerHello:
            self._protocol_error(agent, "a second hello", b"")
        else:  # pragma: no cover - every WorkerFrame kind is handled above
            raise AssertionError(f"unhandled frame {frame!r}")

    def _protocol_error(self, agent: Agent, error: str, line: bytes) -> None:
        agent.protocol_errors += 1
        excerpt = line[:200].decode("utf-8", "replace")
        log.warning("%s: protocol error: %s: %r", agent.name, error, excerpt)
        self._events.emit(WorkerProtocolError(agent=agent.name, error=error, excerpt=excerpt))


def _is_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is Cancelled, or a group holding one."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(trio.Cancelled) is not None
    return isinstance(exc, trio.Cancelled)
