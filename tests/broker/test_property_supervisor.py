"""Property tests of cancellation: the supervisor against generated interleavings.

The companion of ``test_property_cancellation.py`` (the correlator alone): here a real
:class:`Broker` (its correlator, supervisor, event log, delivery engine and an in-memory
store on the Trio thread) supervises one agent whose child is a *fake process*, so the
supervisor's own request/death/release/restart logic is what is tested, on Trio's
MockClock, without real processes.

Hypothesis generates a *scenario*: the agent's restart policy (``never``, ``on-failure``,
``always``; small fixed delays, no jitter, 1-3 attempts, a run counted stable after 3
ticks or never); how each run of its child treats a stop (``obey``: exits 0 on the
shutdown frame; ``term``: ignores it, dies of SIGTERM; ``kill``: ignores SIGTERM too, dies
of SIGKILL); requests (started at an integer tick, with a deadline of ``k + 0.5`` ticks or
the broker's default, answered by the child after ``a`` ticks, answered with an error, or
never); caller cancellations; deaths of the running child with an exit code or a signal;
and releases (``Broker.release``). A driver plays the timeline; a model predicts each
outcome. After every example:

- each request finished with exactly one outcome, the one the model predicts (an answer
  before the deadline wins, from the run that got the request; a death first gives
  WorkerExited with the death's code or signal; a release first gives WorkerExited with
  the status the stop ended in: exit 0, SIGTERM or SIGKILL; a cancellation gives
  Cancelled; the deadline gives RequestTimeout; a request while no run is attached gives
  WorkerNotFound), at the predicted virtual time, never later than its deadline;
- each release returned when the model says (at once during a restart back-off; after
  the grace periods when the child ignores the stop), or raised WorkerNotFound;
- the lifecycle events are exactly the model's, at the model's times: one
  ``agent_spawned`` per run, exactly one terminal ``agent_exited`` per run with
  ``intended`` true exactly for releases and the broker's shutdown, then
  ``agent_restarting``/``agent_gave_up`` as the policy says; no protocol errors;
- no pending entry remains; answers nobody waited for were counted in ``late_dropped``;
  the correlator's counters match the outcomes;
- the child got the stop signals the escalation calls for, and nothing else;
- no task is left running: every fake child's task ended, and ``tasks_living`` is back
  to what it was.

Times are chosen so that nothing the model cannot order happens at the same virtual
instant: requests start and are answered at integer ticks, deadlines fall at ``.5``,
driver actions (cancel, death, release) at ``.25``, SIGTERM after a release at ``.375``
(grace 1.125), SIGKILL at ``.625`` (kill grace 1.25), restarts at ``.3125``/``.375``,
the end of the example (every request still waiting is cancelled, then the broker shuts
down) at ``.75``. Driver actions at one instant run in their drawn order, each settled
(``wait_all_tasks_blocked``) before the next.

One ``trio.run`` with a fresh ``MockClock(autojump_threshold=0)`` per example, for the
reasons given in ``test_property_cancellation.py`` (isolation, time starting at 0, each
example a pure function of the scenario so that Hypothesis can replay and shrink it). The
store runs on the Trio thread (``threaded=False``): a store thread would let the
autojumping clock skip ahead while a release waits for its commit.

The fake process (:class:`FakeProcess`) provides what the supervisor uses of
:class:`~trio_relay.broker.process.WorkerProcess`. Its pure-Trio parts are *borrowed* from
``WorkerProcess`` (``poke``, ``wait_until``, ``has_exited``, ``start_tasks``,
``start_io_task``, ``cancel_io_tasks`` and the real ``stop`` escalation); only the OS is
faked: the pipes (stdin: a writer that hands each frame to the child at once, as a pipe
with room does, and raises ChannelClosed once the child is gone; stdout: a
``MemoryReceiveStream``), the exit watcher and stderr drain (they see the child's death),
``signal_group`` (SIGTERM and SIGKILL reach the child) and ``close``.
"""

from __future__ import annotations

import heapq
import itertools
import random
import signal
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from played import Timeline, attempt

import trio_relay.broker.supervisor as supervisor_module
from trio_relay.broker.broker import Broker
from trio_relay.broker.process import ExitStatus, StderrRing, WorkerProcess
from trio_relay.broker.restart import RestartPolicy
from trio_relay.errors import ChannelClosed, WorkerNotFound
from trio_relay.store.engine import open_store
from trio_relay.wire import (
    PROTOCOL_VERSION,
    AgentExited,
    AgentGaveUp,
    AgentRestarting,
    AgentSpawned,
    BrokerHello,
    ErrorInfo,
    Ping,
    Response,
    Shutdown,
    SpawnFailedEvent,
    WorkerHello,
    WorkerProtocolError,
    decode_broker_frame,
    encode,
)

AGENT = "w"
GRACE, KILL_GRACE = 1.125, 1.25
DEFAULT_TIMEOUT = 9.5  # the broker's request_timeout, for requests that give none
END = 20.75  # every request still waiting then is cancelled; then the broker shuts down
BEHAVIOURS = ("obey", "term", "kill")
EXIT_STATUSES = ((0, None), (1, None), (3, None), (None, 9), (None, 11), (None, 15))
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- the fake process


class FakeWriter:
    """The child's stdin: each frame reaches the child at once (a pipe with room);
    ChannelClosed once the child is gone or the writer closed, as FrameWriter does."""

    def __init__(self, deliver: Any) -> None:
        self._deliver = deliver
        self._error: BaseException | None = None

    async def send(self, frame: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self.send_nowait(frame)

    def send_nowait(self, frame: bytes) -> None:
        if self._error is not None:
            raise ChannelClosed(f"cannot write to worker: {self._error}")
        self._deliver(frame)

    async def run(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self.fail(ChannelClosed("writer stopped"))

    def fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error

    def close(self) -> None:
        self.fail(ChannelClosed("worker stdin closed"))


class FakeProcess:
    """A worker child without a process: see the module's doc. ``child`` is the program
    (run in the test's own nursery, as the OS runs a process beside the broker)."""

    # The pure-Trio parts of the real thing, so the escalation tested is the real one.
    poke = WorkerProcess.poke
    wait_until = WorkerProcess.wait_until
    has_exited = WorkerProcess.has_exited
    start_tasks = WorkerProcess.start_tasks
    start_io_task = WorkerProcess.start_io_task
    cancel_io_tasks = WorkerProcess.cancel_io_tasks
    stop = WorkerProcess.stop

    def __init__(self, name: str, argv: list[str], run: int, behaviour: str, sc: Scenario) -> None:
        self.name, self.run, self.behaviour, self._sc = name, run, behaviour, sc
        self.pid = self.pgid = 1_000_000 + run  # never signalled for real: signal_group is fake
        self._inbox_send, self._inbox = trio.open_memory_channel[bytes](float("inf"))
        self.writer = FakeWriter(self._inbox_send.send_nowait)
        self.stdout = trio.testing.MemoryReceiveStream()
        self.stderr_ring = StderrRing()
        self.stderr_closed = False
        self.status: ExitStatus | None = None
        self.program_session: int | None = None
        self.on_exit: Any = None
        self.unkillable: list[str] = []
        self.ending_note = ""
        self.leads_session = True
        self._lot = trio.lowlevel.ParkingLot()
        self._io_scopes: list[trio.CancelScope] = []
        # the child's side
        self._exit: ExitStatus | None = None  # it died (a zombie until the watcher sees it)
        self._died = trio.Event()
        self._scope = trio.CancelScope()
        self.signals: list[int] = []
        self.shutdowns = 0
        self.child_done = False

    # -- the OS

    async def _watch_exit(self) -> None:
        await self._died.wait()
        self.status = self._exit
        if self.on_exit is not None:
            self.on_exit()
        self.poke()

    def stdout_pending(self) -> int:
        return 0  # its frames reach the reader at once

    async def kill_tagged(self) -> None:
        """Nothing of a fake escapes its group."""

    async def _drain_stderr(self) -> None:
        await self._died.wait()
        self.stderr_closed = True
        self.poke()

    def signal_group(self, sig: int) -> None:
        if self.status is not None:
            return
        self.signals.append(sig)
        if self._exit is not None:
            return  # a zombie: nothing left to signal
        if sig == signal.SIGKILL or (sig == signal.SIGTERM and self.behaviour != "kill"):
            self.die(ExitStatus(None, sig))

    async def close(self) -> None:
        if self.status is None:
            self.signal_group(signal.SIGKILL)
            self.status = self._exit
        self.writer.close()
        self._inbox_send.close()
        await self.stdout.aclose()

    # -- the child

    def die(self, status: ExitStatus) -> None:
        """The child exits: its pending work stops, its pipes close, it becomes reapable."""
        if self._exit is not None:
            return
        self._exit = status
        self._scope.cancel()
        self.writer.fail(ChannelClosed("broken pipe"))
        self.stdout.put_eof()
        self._died.set()

    def _write(self, frame: Any) -> None:
        self.stdout.put_data(encode(frame))

    async def child(self) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    async for line in self._inbox:
                        frame = decode_broker_frame(line)
                        if type(frame) is BrokerHello:
                            self._write(WorkerHello(protocol=PROTOCOL_VERSION, pid=self.pid))
                        elif type(frame) is Shutdown:
                            self.shutdowns += 1
                            if self.behaviour == "obey":
                                self.die(ExitStatus(0, None))
                        elif type(frame) is Ping:
                            nursery.start_soon(self._answer, frame)
                        else:
                            raise AssertionError(f"unexpected frame {frame!r}")
                    self.die(ExitStatus(0, None))  # its stdin closed: a worker exits
        finally:
            self.child_done = True

    async def _answer(self, frame: Ping) -> None:
        i = frame.data
        script = self._sc.requests[i].script
        if script[0] == "never":
            return
        await trio.sleep(script[1])
        if script[0] == "answer":
            self._write(Response(request_id=frame.request_id, payload={"data": i, "run": self.run}))
        else:
            self._write(Response(request_id=frame.request_id, error=ErrorInfo(f"e{i}", "refused")))


# ---------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Req:
    start: int
    timeout: float | None  # k + 0.5 ticks, or None: the broker's default
    script: tuple[Any, ...]  # ("answer", a) ("error", a) ("never",): what the child does


@dataclass(frozen=True)
class Action:
    time: float
    rank: int  # order within an instant
    what: str  # start cancel kill release end
    target: Any = None  # request index, or the (code, signal) of a kill

    def __repr__(self) -> str:
        return f"t{self.time}:{self.what}({'' if self.target is None else self.target})"


@dataclass
class Scenario:
    policy: RestartPolicy
    behaviours: tuple[str, ...]  # of run 0, 1, ...; the last one for every later run
    requests: list[Req]
    timeline: list[Action]

    def behaviour(self, run: int) -> str:
        return self.behaviours[min(run, len(self.behaviours) - 1)]

    def describe(self) -> str:
        p = self.policy
        reqs = "\n".join(
            f"  r{i}: at t{r.start}, timeout {r.timeout}, child does {r.script}"
            for i, r in enumerate(self.requests)
        )
        return (
            f"policy {p.mode}, max_attempts {p.max_attempts}, stable_after {p.stable_after}\n"
            f"runs on stop: {self.behaviours}\nrequests:\n{reqs}\ntimeline: {self.timeline}"
        )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    policy = RestartPolicy(
        mode=draw(st.sampled_from(["never", "on-failure", "always"])),
        initial_delay=1 / 16,
        max_delay=1 / 8,
        max_attempts=draw(st.integers(1, 3)),
        stable_after=draw(st.sampled_from([3.0, 1000.0])),
        jitter=0.0,
    )
    behaviours = tuple(draw(st.lists(st.sampled_from(BEHAVIOURS), min_size=1, max_size=3)))
    requests: list[Req] = []
    timeline: list[Action] = []
    for i in range(draw(st.integers(1, 6))):
        req = Req(
            start=draw(st.integers(0, 16)),
            timeout=draw(st.one_of(st.none(), st.integers(0, 8).map(lambda k: k + 0.5))),
            script=draw(
                st.one_of(
                    st.tuples(st.sampled_from(["answer", "error"]), st.integers(1, 8)),
                    st.just(("never",)),
                )
            ),
        )
        requests.append(req)
        timeline.append(Action(req.start, draw(st.integers(0, 3)), "start", i))
        if draw(st.booleans()):
            at = min(req.start + draw(st.integers(0, 10)) + 0.25, END - 0.5)
            timeline.append(Action(at, draw(st.integers(0, 3)), "cancel", i))
    kills: list[float] = []
    for _ in range(draw(st.integers(0, 4))):
        what = draw(st.sampled_from(["kill", "kill", "release"]))
        target = draw(st.sampled_from(EXIT_STATUSES)) if what == "kill" else None
        if what == "release" and kills and draw(st.booleans()):
            at = draw(st.sampled_from(kills))  # right after a death: often in the back-off
        else:
            at = draw(st.integers(0, 18)) + 0.25
        if what == "kill":
            kills.append(at)
        timeline.append(Action(at, draw(st.integers(0, 3)), what, target))
    timeline.sort(key=lambda a: (a.time, a.rank))  # stable: drawn order within a rank
    return Scenario(policy, behaviours, requests, timeline)


def full_timeline(sc: Scenario) -> list[Action]:
    assert all(a.time < END for a in sc.timeline)
    return [*sc.timeline, Action(END, 99, "end")]


# ---------------------------------------------------------------- the model


@dataclass
class ModelResult:
    outcomes: dict[int, tuple[tuple[Any, ...], float]] = field(default_factory=dict)
    releases: dict[int, tuple[str, float]] = field(default_factory=dict)  # timeline index ->
    events: list[tuple[Any, ...]] = field(default_factory=list)  # (time, kind, ...)
    reasons: list[str] = field(default_factory=list)  # of each agent_exited, in order
    signals: dict[int, list[int]] = field(default_factory=dict)  # run -> stop signals sent
    late_dropped: int = 0
    final_state: str = ""


def model(sc: Scenario) -> ModelResult:
    """Play the scenario as the supervisor should, as a discrete-event simulation."""
    res = ModelResult()
    pol = sc.policy
    heap: list[tuple[float, int, str, Any]] = []
    order = itertools.count()
    open_: dict[int, int] = {}  # open request -> the run it was written to
    s: dict[str, Any] = dict(
        state="running",
        run=0,
        run_start=0.0,
        attempt=0,
        stopping=False,
        reason="",
        gen=0,
    )
    alive = {0: True}
    waiters: list[int] = []
    res.events.append((0.0, "spawned", 0))

    def at(t: float, kind: str, data: Any) -> None:
        heapq.heappush(heap, (t, next(order), kind, data))

    def finish(i: int, outcome: tuple[Any, ...], t: float) -> None:
        del open_[i]
        res.outcomes[i] = (outcome, t)

    def done(t: float, state: str) -> None:
        s["state"], res.final_state = "done", state
        for w in waiters:
            res.releases[w] = ("released", t)
        waiters.clear()

    def end_run(t: float, code: int | None, sig: int | None) -> None:
        run = s["run"]
        alive[run] = False
        for i in [i for i, r in open_.items() if r == run]:
            finish(i, ("WorkerExited", code, sig), t)
        intended = s["stopping"]
        res.events.append((t, "exited", code, sig, intended))
        res.reasons.append(s["reason"] if intended else ExitStatus(code, sig).describe())
        if intended:
            return done(t, "released")
        failed = sig is not None or code != 0
        if pol.mode == "never" or (pol.mode == "on-failure" and not failed):
            return done(t, "exited")
        if t - s["run_start"] >= pol.stable_after:
            s["attempt"] = 0
        s["attempt"] += 1
        if s["attempt"] > pol.max_attempts:
            res.events.append((t, "gave_up", s["attempt"] - 1))
            return done(t, "gave_up")
        delay = min(pol.max_delay, pol.initial_delay * 2 ** (s["attempt"] - 1))
        res.events.append((t, "restarting", s["attempt"], delay))
        s["state"] = "backoff"
        at(t + delay, "restart", s["gen"])

    def stop(t: float, reason: str, index: int | None) -> None:
        """A release (index: its place in the timeline) or the broker's shutdown (None)."""
        if s["state"] == "done":
            if index is not None:
                res.releases[index] = ("WorkerNotFound", t)
            return
        if s["state"] == "backoff":  # the back-off is cut short; no run, no agent_exited
            s["gen"] += 1
            if index is not None:
                res.releases[index] = ("released", t)
            return done(t, "released")
        if index is not None:
            waiters.append(index)
        if s["stopping"]:
            return
        s["stopping"], s["reason"] = True, reason
        if sc.behaviour(s["run"]) == "obey":
            end_run(t, 0, None)
        else:
            at(t + GRACE, "sigterm", s["run"])

    def internal(t: float, kind: str, data: Any) -> None:
        if kind == "answer":
            i, run, what = data
            if not alive[run]:
                return  # it died first: the answer is never written
            if i not in open_:
                res.late_dropped += 1
            elif what == "answer":
                finish(i, ("ok", i, run), t)
            else:
                finish(i, ("WorkerError", f"e{i}"), t)
        elif kind == "deadline":
            if data in open_:
                finish(data, ("RequestTimeout",), t)
        elif kind == "sigterm":
            if alive[data]:
                res.signals.setdefault(data, []).append(signal.SIGTERM)
                if sc.behaviour(data) == "kill":
                    at(t + KILL_GRACE, "sigkill", data)
                else:
                    end_run(t, None, signal.SIGTERM)
        elif kind == "sigkill":
            if alive[data]:
                res.signals[data].append(signal.SIGKILL)
                end_run(t, None, signal.SIGKILL)
        elif kind == "restart":
            if data == s["gen"] and s["state"] == "backoff":
                run = s["run"] + 1
                s.update(state="running", run=run, run_start=t)
                alive[run] = True
                res.events.append((t, "spawned", s["attempt"]))

    for index, action in enumerate(full_timeline(sc)):
        t = action.time
        while heap and heap[0][0] < t:
            when, _, kind, data = heapq.heappop(heap)
            internal(when, kind, data)
        i = action.target
        if action.what == "start":
            req = sc.requests[i]
            if s["state"] != "running":
                res.outcomes[i] = (("WorkerNotFound",), t)
                continue
            open_[i] = s["run"]
            at(t + (DEFAULT_TIMEOUT if req.timeout is None else req.timeout), "deadline", i)
            if req.script[0] != "never":
                at(t + req.script[1], "answer", (i, s["run"], req.script[0]))
        elif action.what == "cancel":
            if i in open_:
                finish(i, ("Cancelled",), t)
        elif action.what == "kill":
            if s["state"] == "running":
                end_run(t, *i)
        elif action.what == "release":
            stop(t, "released", index)
        elif action.what == "end":
            for j in list(open_):
                finish(j, ("Cancelled",), t)
            stop(t, "broker shutdown", None)
    while heap:
        when, _, kind, data = heapq.heappop(heap)
        internal(when, kind, data)
    return res


# ---------------------------------------------------------------- the driver


@dataclass
class Played(Timeline):
    releases: dict[int, tuple[str, float]]
    events: list[tuple[float, Any]]
    signals: dict[int, list[int]]
    stats: Any
    final_state: str
    children_left: list[int]
    tasks_before: int
    tasks_after: int


def play(sc: Scenario, *, settle: bool = True) -> Played:
    fakes: list[FakeProcess] = []
    os_nursery: list[trio.Nursery] = []

    def fake_spawn(name: str, argv: Any, *, cwd: Any = None, env: Any = None) -> FakeProcess:
        proc = FakeProcess(name, list(argv), len(fakes), sc.behaviour(len(fakes)), sc)
        fakes.append(proc)
        os_nursery[0].start_soon(proc.child)
        return proc

    async def main() -> Played:
        tasks_before = trio.lowlevel.current_statistics().tasks_living
        outcomes: dict[int, list[tuple[Any, ...]]] = {i: [] for i in range(len(sc.requests))}
        starts: dict[int, float] = {}
        ends: dict[int, float] = {}
        scopes: dict[int, trio.CancelScope] = {}
        releases: dict[int, tuple[str, float]] = {}
        events: list[tuple[float, Any]] = []
        async with trio.open_nursery() as outer:
            os_nursery.append(outer)
            async with open_store(":memory:", threaded=False) as store:
                async with trio.open_nursery() as nursery:
                    broker = Broker(
                        nursery, store=store, request_timeout=DEFAULT_TIMEOUT, rng=random.Random(0)
                    )
                    broker.events.listen(lambda e: events.append((trio.current_time(), e)))
                    nursery.start_soon(broker.delivery_engine.run_timers)
                    try:
                        await broker.spawn(
                            AGENT,
                            ["fake-worker"],
                            restart=sc.policy,
                            grace=GRACE,
                            kill_grace=KILL_GRACE,
                        )
                        assert trio.current_time() == 0

                        async def caller(i: int) -> None:
                            req = sc.requests[i]
                            with trio.CancelScope() as scopes[i]:
                                await attempt(
                                    i,
                                    Timeline(outcomes, starts, ends),
                                    lambda: broker.request_worker(
                                        AGENT, "ping", {"data": i}, timeout=req.timeout
                                    ),
                                    lambda p: ("ok", p["data"], p["run"]),
                                )

                        async def releaser(index: int) -> None:
                            try:
                                await broker.release(AGENT)
                                releases[index] = ("released", trio.current_time())
                            except WorkerNotFound:
                                releases[index] = ("WorkerNotFound", trio.current_time())

                        timeline = full_timeline(sc)
                        async with trio.open_nursery() as driver:
                            for index, action in enumerate(timeline):
                                await trio.sleep_until(action.time)
                                i = action.target
                                if action.what == "start":
                                    driver.start_soon(caller, i)
                                elif action.what == "cancel":
                                    if i in scopes:
                                        scopes[i].cancel()
                                elif action.what == "kill":
                                    proc = fakes[-1]
                                    if broker.supervisor.get(AGENT).state == "running":
                                        proc.die(ExitStatus(*i))
                                elif action.what == "release":
                                    driver.start_soon(releaser, index)
                                elif action.what == "end":
                                    for scope in scopes.values():
                                        scope.cancel()
                                last = index + 1 == len(timeline)
                                if settle or last or timeline[index + 1].time != action.time:
                                    await trio.testing.wait_all_tasks_blocked()
                    finally:
                        with trio.CancelScope(shield=True):
                            await broker.shutdown()
                        nursery.cancel_scope.cancel()
                    stats = broker.statistics()
                    final_state = broker.agent(AGENT).state
            children_left = [f.run for f in fakes if not f.child_done]
            outer.cancel_scope.cancel()
        return Played(
            outcomes,
            starts,
            ends,
            releases,
            events,
            {f.run: f.signals for f in fakes if f.signals},
            stats,
            final_state,
            children_left,
            tasks_before,
            trio.lowlevel.current_statistics().tasks_living,
        )

    saved = supervisor_module.spawn_process
    supervisor_module.spawn_process = fake_spawn  # type: ignore[assignment]
    try:
        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        supervisor_module.spawn_process = saved  # type: ignore[assignment]


LIFECYCLE = (AgentSpawned, AgentExited, AgentRestarting, AgentGaveUp, SpawnFailedEvent)


def lifecycle(p: Played) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for t, e in p.events:
        if type(e) is AgentSpawned:
            out.append((t, "spawned", e.attempt))
        elif type(e) is AgentExited:
            out.append((t, "exited", e.code, e.signal, e.intended))
        elif type(e) is AgentRestarting:
            out.append((t, "restarting", e.attempt, e.delay))
        elif type(e) is AgentGaveUp:
            out.append((t, "gave_up", e.attempts))
        elif type(e) is SpawnFailedEvent:
            out.append((t, "spawn_failed", e.error))
    return out


def check_invariants(sc: Scenario, p: Played) -> None:
    """What holds whatever the model says."""
    for i, req in enumerate(sc.requests):
        assert len(p.outcomes[i]) == 1, f"r{i} had outcomes {p.outcomes[i]}"
        timeout = DEFAULT_TIMEOUT if req.timeout is None else req.timeout
        elapsed = p.ends[i] - p.starts[i]
        assert elapsed <= timeout, f"r{i} took {elapsed} > its timeout {timeout}"
        if p.outcomes[i][0] == ("RequestTimeout",):
            assert elapsed == timeout, f"r{i} timed out after {elapsed}, not {timeout}"
    assert p.stats.pending == 0, "a pending entry remains"
    assert p.children_left == [], f"fake children still running: {p.children_left}"
    assert p.tasks_after == p.tasks_before, "a task was left running"
    # one terminal event per run, and the run's events inside it
    life = [e[1:] for e in lifecycle(p)]
    running = False
    for e in life:
        if e[0] == "spawned":
            assert not running, f"a run started before the last one ended: {life}"
            running = True
        elif e[0] == "exited":
            assert running, f"agent_exited without a run: {life}"
            running = False
        else:
            assert not running, f"{e[0]} during a run: {life}"
    assert not running, f"a run never got its agent_exited: {life}"
    assert not [e for _, e in p.events if type(e) is WorkerProtocolError]


# ---------------------------------------------------------------- the properties


@SETTINGS
@given(scenarios())
def test_supervisor_outcomes(sc: Scenario) -> None:
    note(sc.describe())
    expected = model(sc)
    p = play(sc)
    note(f"played: {p.outcomes}\nevents: {lifecycle(p)}\nreleases: {p.releases}")
    check_invariants(sc, p)
    for i in range(len(sc.requests)):
        got = (p.outcomes[i][0], p.ends[i])
        assert got == expected.outcomes[i], f"r{i}: got {got}, expected {expected.outcomes[i]}"
    assert p.releases == expected.releases
    assert lifecycle(p) == expected.events
    reasons = [e.reason for _, e in p.events if type(e) is AgentExited]
    assert len(reasons) == len(expected.reasons)
    for got_reason, want in zip(reasons, expected.reasons):
        assert got_reason.endswith(want), f"reason {got_reason!r}, expected {want!r}"
    assert p.signals == expected.signals
    assert p.final_state == expected.final_state
    kinds = [p.outcomes[i][0][0] for i in range(len(sc.requests))]
    assert p.stats.completed == kinds.count("ok")
    assert p.stats.timed_out == kinds.count("RequestTimeout")
    assert p.stats.cancelled == kinds.count("Cancelled")
    assert p.stats.failed == kinds.count("WorkerError") + kinds.count("WorkerExited")
    assert p.stats.late_dropped == expected.late_dropped


def test_the_model_is_not_vacuous() -> None:
    """A hand-written scenario with each outcome and a restart, a SIGTERM and a SIGKILL
    escalation, so a model or driver that did nothing useful would fail here."""
    sc = Scenario(
        RestartPolicy(
            "on-failure",
            initial_delay=1 / 16,
            max_delay=1 / 8,
            max_attempts=3,
            stable_after=1000.0,
            jitter=0.0,
        ),
        ("term", "kill"),
        [
            Req(0, 5.5, ("answer", 2)),  # answered at t2 by run 0
            Req(0, 1.5, ("answer", 3)),  # times out at t1.5; its answer at t3 is late
            Req(1, None, ("never",)),  # run 0 killed by SIGSEGV at t4.25: WorkerExited
            Req(1, None, ("error", 1)),  # WorkerError at t2
            Req(5, 3.5, ("never",)),  # t5: run 1 (restarted at t4.3125); cancelled at t6.25
            Req(7, None, ("answer", 9)),  # released at t7.25: SIGTERM ignored, SIGKILL at t9.625
            Req(8, None, ("answer", 1)),  # sent during the release's grace: answered at t9
            Req(12, None, ("answer", 1)),  # released: WorkerNotFound
        ],
        [
            Action(0, 0, "start", 0),
            Action(0, 0, "start", 1),
            Action(1, 0, "start", 2),
            Action(1, 0, "start", 3),
            Action(4.25, 0, "kill", (None, 11)),
            Action(5, 0, "start", 4),
            Action(6.25, 0, "cancel", 4),
            Action(7, 0, "start", 5),
            Action(7.25, 0, "release"),
            Action(8, 0, "start", 6),
            Action(12, 0, "start", 7),
        ],
    )
    expected = model(sc)
    assert [expected.outcomes[i] for i in range(8)] == [
        (("ok", 0, 0), 2),
        (("RequestTimeout",), 1.5),
        (("WorkerExited", None, 11), 4.25),
        (("WorkerError", "e3"), 2),
        (("Cancelled",), 6.25),
        (("WorkerExited", None, 9), 7.25 + GRACE + KILL_GRACE),
        (("ok", 6, 1), 9),
        (("WorkerNotFound",), 12),
    ]
    assert expected.events == [
        (0.0, "spawned", 0),
        (4.25, "exited", None, 11, False),
        (4.25, "restarting", 1, 1 / 16),
        (4.3125, "spawned", 1),
        (9.625, "exited", None, 9, True),
    ]
    assert expected.signals == {1: [signal.SIGTERM, signal.SIGKILL]}
    assert expected.late_dropped == 1 and expected.final_state == "released"
    p = play(sc)
    check_invariants(sc, p)
    assert {i: (p.outcomes[i][0], p.ends[i]) for i in range(8)} == expected.outcomes
    assert lifecycle(p) == expected.events
    assert p.signals == expected.signals
    assert p.releases == {8: ("released", 9.625)} == expected.releases
    assert p.stats.late_dropped == 1


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_racy_interleavings(sc: Scenario) -> None:
    """Driver actions of one instant (a death, a release, a cancellation) run back to back
    in one scheduling batch, so they race: check what must hold whichever wins."""
    note(sc.describe())
    p = play(sc, settle=False)
    note(f"played: {p.outcomes}\nevents: {lifecycle(p)}\nreleases: {p.releases}")
    check_invariants(sc, p)
    life = lifecycle(p)
    exits = [(e[0], e[2], e[3]) for e in life if e[1] == "exited"]
    stops = [a.time for a in sc.timeline if a.what == "release"] + [END]
    for t, _, code, sig, intended in [e for e in life if e[1] == "exited"]:
        # Whether the broker saw the death or the stop first decides; an exit of the same
        # instant as a stop may go either way.
        if any(at < t for at in stops):
            assert intended, f"exit at {t}, after a stop, reported as a crash"
        elif not any(at == t for at in stops):
            assert not intended, f"exit at {t}, before any stop, reported as intended"
    for i, req in enumerate(sc.requests):
        (outcome,) = p.outcomes[i]
        end, kind = p.ends[i], outcome[0]
        if kind == "ok":
            assert req.script[0] == "answer" and end == req.start + req.script[1]
            assert outcome[1] == i
        elif kind == "WorkerError":
            assert req.script[0] == "error" and end == req.start + req.script[1]
        elif kind == "WorkerExited":
            assert (end, outcome[1], outcome[2]) in exits, (
                f"r{i}: {outcome} at {end}, exits {exits}"
            )
        elif kind == "Cancelled":
            assert end == END or Action(end, 0, "cancel", i) in [
                Action(a.time, 0, a.what, a.target) for a in sc.timeline
            ], f"r{i} Cancelled at {end} but not cancelled then"
        elif kind == "WorkerNotFound":
            assert end == req.start
        else:
            assert kind == "RequestTimeout", f"r{i}: unexpected {outcome}"
    for index, (how, t) in p.releases.items():
        assert t >= sc.timeline[index].time
        if how == "released":
            # Released, unless the death it raced with was seen first: then it stays a crash.
            crashed_then = any(
                e[1] == "exited" and not e[4] and e[0] == sc.timeline[index].time for e in life
            )
            assert p.final_state == "released" or crashed_then, p.final_state
