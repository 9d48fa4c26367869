"""The worker nursery: one supervisor task per agent; spawn, release, restart, shutdown.

Each agent's task starts its child (:func:`~trio_relay.worker.spawn_process`), reads its frames
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import trio

from .correlator import Correlator
from .errors import AgentExists, ChannelClosed, ProtocolError, SpawnFailed, WorkerExited, WorkerNotFound
from .events import EventLog
from .framing import DEFAULT_MAX_LINE, OversizedLine, read_lines
from .protocol import (
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
    DeliveryVerified,
    DeliveryUnverifiedEvent,
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
from .worker import ExitStatus, WorkerProcess, spawn_process

log = logging.getLogger(__name__)

RestartMode = Literal["never", "on-failure", "always"]
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
        if self.mode not in ("never", "on-failure", "always"):
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


class Agent:
    """The supervisor's record of one agent, kept after it ends (for listing)."""

    def __init__(self, spec: AgentSpec) -> None:
        self.spec = spec
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
        self.done = trio.Event()
        self._backoff_scope: trio.CancelScope | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def active(self) -> bool:
        return not self.done.is_set()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.state == "running" else None

    @property
    def stderr_lines(self) -> list[str]:
        return self.proc.stderr_ring.lines() if self.proc is not None else []


@dataclass
class _Run:
    """What the frame reader learned during one run of an agent's child."""

    attempt: int = 0
    hello: WorkerHello | None = None
    failure: str | None = None
    eof: bool = False
    attached: bool = False
    reported_exit: Exited | None = None
    note: str = ""


class Supervisor:
    """Owns the worker nursery. Create one per broker with the nursery its tasks live in."""

    def __init__(
        self,
        nursery: trio.Nursery,
        correlator: Correlator,
        events: EventLog,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        rng: random.Random | None = None,
    ) -> None:
        self._nursery = nursery
        self._correlator = correlator
        self._events = events
        self._max_line = max_line
        self._rng = rng or random.Random()
        self._agents: dict[str, Agent] = {}
        #: Where the worker's delivery reports go (``delivery_injected``/``_verified``/
        #: ``_failed`` frames), called as ``hook(agent, frame)`` from the frame reader; it
        #: must be quick and not raise. Unset, each becomes its broker event at once.
        self.delivery_reports: Callable[[str, DeliveryReport], None] | None = None

    # -- operations

    async def spawn(self, spec: AgentSpec) -> Agent:
        """Start an agent; return once its child has said hello.

        Raises AgentExists if an active agent has that name, SpawnFailed (after a
        ``spawn_failed`` event) if it cannot be started. Cancellation: if cancelled before
        the hello, the child is stopped and reaped before this returns.
        """
        existing = self._agents.get(spec.name)
        if existing is not None and existing.active:
            raise AgentExists(spec.name)
        agent = Agent(spec)
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
        agent.stop_requested = True
        agent.stop_reason = agent.stop_reason or reason
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

    # -- the agent's task

    async def _supervise(
        self, agent: Agent, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED
    ) -> None:
        tracker = RestartTracker(agent.spec.restart, self._rng)
        started = False
        try:
            while True:
                began = trio.current_time()
                status: ExitStatus | None = None
                intended = False
                try:
                    status, intended = await self._run_once(
                        agent, tracker.attempt, task_status if not started else None
                    )
                    started = True
                except SpawnFailed as exc:
                    self._events.emit(
                        SpawnFailedEvent(agent=agent.name, error=exc.reason, errno=exc.errno)
                    )
                    agent.state, agent.last_reason = "failed", str(exc)
                    if not started:
                        raise
                except Exception as exc:
                    # A fault in our own code, not the worker's: the child was stopped and
                    # reaped on the way out; report it as this agent's end, never as silence.
                    log.exception("supervisor of %s failed", agent.name)
                    self._events.emit(
                        AgentExited(
                            agent=agent.name, code=None, signal=None, intended=False,
                            reason=f"supervisor error: {exc!r}",
                        )
                    )
                    agent.state, agent.last_reason = "exited", f"supervisor error: {exc!r}"
                    if not started:
                        raise
                    return
                if agent.stop_requested:
                    agent.state = "released"
                    return
                if not agent.spec.restart.wants_restart(status, intended):
                    return
                delay = tracker.next_delay(trio.current_time() - began)
                if delay is None:
                    agent.state = "gave_up"
                    self._events.emit(
                        AgentGaveUp(
                            agent=agent.name,
                            attempts=tracker.attempt - 1,
                            reason=agent.last_reason,
                        )
                    )
                    return
                agent.state = "restarting"
                agent.restarts += 1
                self._events.emit(
                    AgentRestarting(agent=agent.name, attempt=tracker.attempt, delay=delay)
                )
                with trio.CancelScope() as agent._backoff_scope:
                    await trio.sleep(delay)
                agent._backoff_scope = None
                if agent.stop_requested:
                    agent.state = "released"
                    return
        finally:
            agent.done.set()

    async def _run_once(
        self, agent: Agent, attempt: int, task_status: trio.TaskStatus[Agent] | None
    ) -> tuple[ExitStatus, bool]:
        """Run the agent's child once, from spawn to reaped. Returns its exit status and
        whether the broker asked for the exit. Raises SpawnFailed if it never said hello.

        Cancellation: the child is stopped and reaped under a shield before Cancelled
        propagates, and the exit is reported as intended (a broker shutdown).
        """
        spec, name = agent.spec, agent.spec.name
        agent.state = "starting"
        proc = spawn_process(name, spec.argv, cwd=spec.cwd, env=spec.env)
        agent.proc = proc
        run = _Run(attempt=attempt)
        failure: str | None = None
        cancelled = False
        try:
            async with trio.open_nursery() as nursery:
                proc.start_tasks(nursery)
                proc.start_io_task(nursery, self._read_frames, agent, proc, run)
                try:
                    failure = await self._greet(agent, proc, run)
                    if failure is None:
                        if task_status is not None:
                            task_status.started(agent)
                        await proc.wait_until(
                            lambda: proc.has_exited or run.eof or agent.stop_requested
                        )
                        if not proc.has_exited and not agent.stop_requested:
                            run.note = "closed its stdout; "
                finally:
                    with trio.CancelScope(shield=True):
                        await proc.stop(spec.grace, spec.kill_grace)
                        # Take in what it wrote before it died, so answers sent just before
                        # the end still reach their callers, and its last stderr lines.
                        with trio.move_on_after(1.0):
                            await proc.wait_until(lambda: run.eof and proc.stderr_closed)
                    proc.cancel_io_tasks()
        except BaseException as exc:
            cancelled = isinstance(exc, trio.Cancelled) or (
                isinstance(exc, BaseExceptionGroup) and exc.subgroup(trio.Cancelled) is not None
            )
            raise
        finally:
            with trio.CancelScope(shield=True):
                await proc.close()
            if run.attached:
                self._report_exit(agent, proc, run, cancelled)
        if failure is not None:
            raise SpawnFailed(name, failure)
        assert proc.status is not None
        return proc.status, agent.stop_requested

    async def _greet(self, agent: Agent, proc: WorkerProcess, run: _Run) -> str | None:
        """Send our hello and wait for the reader to accept the worker's. Returns None on
        success, else why the worker did not start."""
        try:
            await proc.writer.send(encode(BrokerHello()))
        except ChannelClosed:
            pass  # it is already gone; the wait below sees how
        with trio.move_on_after(agent.spec.hello_timeout):
            await proc.wait_until(
                lambda: run.attached or run.failure is not None or proc.has_exited
                or run.eof or agent.stop_requested
            )
        if run.attached:
            return None
        if run.failure is not None:
            return run.failure
        if agent.stop_requested:
            return "released before it said hello"
        if proc.has_exited or run.eof:  # its last words on stderr belong in the reason
            with trio.move_on_after(0.5):
                await proc.wait_until(lambda: proc.stderr_closed)
        return self._no_hello(proc, run, agent.spec)

    def _accept_hello(self, agent: Agent, proc: WorkerProcess, run: _Run, hello: WorkerHello) -> None:
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
        proc.program_session = hello.program_pid
        self._correlator.attach(agent.name, proc.writer.send)
        run.attached = True
        agent.state, agent.started_at = "running", time.time()
        self._events.emit(
            AgentSpawned(
                agent=agent.name, pid=proc.pid, argv=list(agent.spec.argv), attempt=run.attempt
            )
        )

    def _report_exit(self, agent: Agent, proc: WorkerProcess, run: _Run, cancelled: bool) -> None:
        """The failure handler: the one terminal event of a run that got past its hello,
        after failing the worker's in-flight requests."""
        status = proc.status or ExitStatus(None, None)
        if run.reported_exit is not None:  # a wrapper told us how the program inside ended
            status = ExitStatus(run.reported_exit.code, run.reported_exit.signal)
        intended = agent.stop_requested or cancelled
        reason = (agent.stop_reason or "broker shutdown") if intended else run.note + status.describe()
        self._correlator.detach(
            agent.name, lambda: WorkerExited(agent.name, status.code, status.signal)
        )
        agent.last_exit, agent.last_reason = status, reason
        agent.state = "released" if intended else "exited"
        self._events.emit(
            AgentExited(
                agent=agent.name, code=status.code, signal=status.signal,
                intended=intended, reason=reason,
            )
        )

    @staticmethod
    def _no_hello(proc: WorkerProcess, run: _Run, spec: AgentSpec) -> str:
        tail = "; ".join(proc.stderr_ring.lines()[-3:])
        tail = f" (stderr: {tail})" if tail else ""
        if proc.status is not None:
            return f"{proc.status.describe()} before saying hello{tail}"
        if run.eof:
            return f"closed its stdout before saying hello{tail}"
        return (
            f"did not say hello within {spec.hello_timeout:g} s; is it a worker? "
            f"Terminal programs run under the PTY worker{tail}"
        )

    async def _read_frames(self, agent: Agent, proc: WorkerProcess, run: _Run) -> None:
        """Route every frame the worker writes until its stdout ends."""
        name = agent.name
        resolve = self._correlator.resolve
        async for batch in read_lines(proc.stdout, self._max_line):
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
                        self._protocol_error(agent, f"{type(frame).__name__} before hello", line)
                elif run.attached:
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
            verdict = DeliveryVerifiedEvent if frame.verification == "echo" else DeliveryUnverifiedEvent
            emit(
                verdict(
                    agent=name, delivery_id=frame.delivery_id,
                    verification=frame.verification, reason=frame.reason,
                )
            )
        elif type(frame) is DeliveryFailed:
            emit(DeliveryFailedEvent(agent=name, delivery_id=frame.delivery_id, reason=frame.reason))
        elif type(frame) is WorkerHello:
            self._protocol_error(agent, "a second hello", b"")
        else:  # pragma: no cover - every WorkerFrame kind is handled above
            raise AssertionError(f"unhandled frame {frame!r}")

    def _protocol_error(self, agent: Agent, error: str, line: bytes) -> None:
        agent.protocol_errors += 1
        excerpt = line[:200].decode("utf-8", "replace")
        log.warning("%s: protocol error: %s: %r", agent.name, error, excerpt)
        self._events.emit(WorkerProtocolError(agent=agent.name, error=error, excerpt=excerpt))

