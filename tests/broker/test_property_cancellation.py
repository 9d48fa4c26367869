"""Property tests of cancellation: the correlator against generated interleavings.

Hypothesis generates a *scenario*: requests (each to worker ``a`` or ``b``, started at an
integer tick, with a deadline of ``k + 0.5`` ticks or none, a frame write that takes
``0`` or ``j + 0.25`` ticks), answers at random ticks (before and after the deadline,
duplicated, errors), answers for unknown ids and from the wrong worker, caller
cancellations, worker deaths (``Correlator.detach`` with WorkerExited and a signal),
releases (``detach`` with exit code 0, as the supervisor does for an intended exit) and
restarts (``attach`` again). A driver task plays the scenario on Trio's MockClock; a
simple model predicts each request's outcome. After every example:

- each request finished with exactly one outcome, and the one the model predicts (an
  answer before the deadline wins; a death before the answer gives WorkerExited with the
  death's code and signal; a death while the frame is being written gives ChannelClosed;
  a cancellation gives Cancelled; a request to a detached worker gives WorkerNotFound);
- it finished at the predicted virtual time, never later than its deadline (on the
  MockClock the cancellation latency is 0);
- no pending entry remains;
- every answer nobody waited for (late, duplicate, unknown id, wrong worker) was dropped
  and counted in ``late_dropped``, not delivered; the other counters match the outcomes;
- no task is left running (``tasks_living`` is back to what it was).

``test_exact_outcomes`` lets every task react to each action before the next one (it
waits for all tasks to block), so the order of events is exactly the scenario's and the
model is exact. ``test_racy_interleavings`` plays actions of the same tick back to back,
so answers, cancellations and deaths race inside one scheduling batch; there the outcome
is not predicted but checked against invariants (see ``check_invariants``).

Why one ``trio.run`` per example, with a fresh ``MockClock(autojump_threshold=0)``, rather
than pytest-trio's clock fixture: Hypothesis calls the test body many times within one
test, and a shared run would carry tasks, clock time and counters from
one example into the next. A fresh run per example isolates them (a leaked task is also
detected by the run itself), starts every example at virtual time 0 so the ticks printed
for a failure are the ticks that happened, and makes each example a pure function of the
scenario, which is what lets Hypothesis replay and shrink a failure to a minimal, readable
timeline (shown with ``note``). Autojump makes virtual time free: an example with a 10-tick
deadline runs in milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from played import Timeline, attempt

from trio_relay.broker.correlator import Correlator
from trio_relay.errors import (
    ChannelClosed,
    WorkerExited,
)
from trio_relay.wire import ErrorInfo

WORKERS = ("a", "b")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Req:
    worker: str
    start: int
    timeout: float | None  # k + 0.5 ticks, or None: wait until something else happens
    write: float  # 0 (written at once) or j + 0.25 ticks


@dataclass(frozen=True, order=True)
class Action:
    tick: int
    rank: float  # order within a tick
    what: str  # start answer error cancel death release restart unknown foreign
    target: Any = None  # request index, or worker name

    def __repr__(self) -> str:
        return f"t{self.tick}:{self.what}({self.target})"


@dataclass
class Scenario:
    requests: list[Req]
    timeline: list[Action]

    def describe(self) -> str:
        reqs = "\n".join(
            f"  r{i}: to {r.worker} at t{r.start}, timeout {r.timeout}, write {r.write}"
            for i, r in enumerate(self.requests)
        )
        return f"requests:\n{reqs}\ntimeline: {sorted(self.timeline)}"


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(1, 6))
    requests: list[Req] = []
    timeline: list[Action] = []
    for i in range(n):
        req = Req(
            worker=draw(st.sampled_from(WORKERS)),
            start=draw(st.integers(0, 8)),
            timeout=draw(st.one_of(st.none(), st.integers(0, 8).map(lambda k: k + 0.5))),
            write=draw(st.one_of(st.just(0.0), st.integers(0, 3).map(lambda j: j + 0.25))),
        )
        requests.append(req)
        rank = draw(st.integers(0, 3))
        timeline.append(Action(req.start, rank, "start", i))
        for _ in range(draw(st.integers(0, 3))):  # answers: first wins, the rest are late
            kind = draw(st.sampled_from(["answer", "answer", "error"]))
            timeline.append(
                Action(req.start + draw(st.integers(1, 10)), draw(st.integers(0, 3)), kind, i)
            )
        if draw(st.booleans()):
            offset = draw(st.integers(0, 10))
            # at offset 0: in the same tick, right after the request started
            c_rank = rank + 0.5 if offset == 0 else draw(st.integers(0, 3))
            timeline.append(Action(req.start + offset, c_rank, "cancel", i))
        if draw(st.booleans()):
            timeline.append(Action(draw(st.integers(1, 14)), draw(st.integers(0, 3)), "foreign", i))
    for _ in range(draw(st.integers(0, 4))):
        what = draw(st.sampled_from(["death", "release", "restart"]))
        timeline.append(
            Action(
                draw(st.integers(0, 14)),
                draw(st.integers(0, 3)),
                what,
                draw(st.sampled_from(WORKERS)),
            )
        )
    for _ in range(draw(st.integers(0, 2))):
        timeline.append(
            Action(
                draw(st.integers(0, 14)),
                draw(st.integers(0, 3)),
                "unknown",
                draw(st.sampled_from(WORKERS)),
            )
        )
    # Stable: actions of one tick and rank keep the order in which they were drawn.
    timeline.sort(key=lambda a: (a.tick, a.rank))
    return Scenario(requests, timeline)


END = 20  # every request still waiting then is cancelled (the end of the example)
DEATH_SIGNAL = 9


# ---------------------------------------------------------------- the model


@dataclass
class Expected:
    outcome: tuple[
        Any, ...
    ]  # ("ok", payload) ("WorkerError", code) ("WorkerExited", code, signal) ...
    end: float
    delivered: int | None = None  # index in the timeline of the answer delivered


@dataclass
class ModelResult:
    outcomes: dict[int, Expected] = field(default_factory=dict)
    resolves: dict[int, bool] = field(default_factory=dict)  # timeline index -> resolve() result
    late_dropped: int = 0


def answer_payload(index: int) -> dict[str, int]:
    return {"answer": index}


def model(sc: Scenario) -> ModelResult:
    """Play the timeline in order, as the settled driver does."""
    result = ModelResult()
    attached = {w: True for w in WORKERS}
    timeline = [*sc.timeline, *(Action(END, 99, "cancel", i) for i in range(len(sc.requests)))]
    # per request: state while open
    written: dict[int, bool] = {}
    open_: dict[int, bool] = {}
    in_write: dict[int, float] = {}  # write completes at this time

    def finish(i: int, outcome: tuple[Any, ...], end: float, delivered: int | None = None) -> None:
        open_[i] = False
        result.outcomes[i] = Expected(outcome, end, delivered)

    def advance(now: float) -> None:
        """Deadlines and write completions strictly before ``now`` (fractional times)."""
        while True:
            soonest: tuple[float, int, str] | None = None
            for i, req in enumerate(sc.requests):
                if not open_.get(i):
                    continue
                if req.timeout is not None:
                    cand = (req.start + req.timeout, i, "deadline")
                    if cand[0] < now and (soonest is None or cand < soonest):
                        soonest = cand
                if i in in_write and in_write[i] < now:
                    cand = (in_write[i], i, "written")
                    if soonest is None or cand < soonest:
                        soonest = cand
            if soonest is None:
                return
            at, i, what = soonest
            if what == "deadline":
                in_write.pop(i, None)
                finish(i, ("RequestTimeout",), at)
            else:
                del in_write[i]
                written[i] = True

    for index, action in enumerate(timeline):
        advance(action.tick)
        t = action.tick
        i = action.target
        if action.what == "start":
            req = sc.requests[i]
            if not attached[req.worker]:
                finish(i, ("WorkerNotFound",), t)
                continue
            open_[i] = True
            if req.write == 0:
                written[i] = True
            else:
                in_write[i] = t + req.write
        elif action.what in ("answer", "error"):
            if not written.get(i):
                continue  # the worker has not got the frame: it cannot answer
            delivered = bool(open_.get(i))
            result.resolves[index] = delivered
            if not delivered:
                result.late_dropped += 1
            elif action.what == "answer":
                finish(i, ("ok", answer_payload(index)), t, index)
            else:
                finish(i, ("WorkerError", f"e{index}"), t, index)
        elif action.what == "foreign":
            if written.get(i):
                result.resolves[index] = False
                result.late_dropped += 1
        elif action.what == "unknown":
            result.resolves[index] = False
            result.late_dropped += 1
        elif action.what == "cancel":
            if open_.get(i):
                in_write.pop(i, None)
                finish(i, ("Cancelled",), t)
        elif action.what in ("death", "release"):
            w = action.target
            if not attached[w]:
                continue
            attached[w] = False
            code, sig = (None, DEATH_SIGNAL) if action.what == "death" else (0, None)
            for j, req in enumerate(sc.requests):
                if req.worker == w and open_.get(j):
                    if j in in_write:  # its pipe broke while the frame was being written
                        del in_write[j]
                        finish(j, ("ChannelClosed",), t)
                    else:
                        finish(j, ("WorkerExited", code, sig), t)
        elif action.what == "restart":
            attached[action.target] = True
    return result


# ---------------------------------------------------------------- the driver


@dataclass
class Played(Timeline):
    resolves: dict[int, bool]
    cancelled: set[int]
    deaths: list[tuple[float, str, int | None, int | None]]
    stats: Any
    tasks_before: int
    tasks_after: int


class Incarnation:
    """One run of a fake worker: a route whose write takes the request's ``write`` ticks
    and breaks (ChannelClosed) if the worker dies meanwhile."""

    def __init__(self, sc: Scenario, rids: dict[int, str]) -> None:
        self.sc, self.rids = sc, rids
        self.died = trio.Event()

    async def route(self, frame: bytes) -> None:
        message = json.loads(frame)
        i = message["i"]
        delay = self.sc.requests[i].write
        if delay:
            with trio.move_on_after(delay):
                await self.died.wait()
            if self.died.is_set():
                raise ChannelClosed("the worker's stdin broke mid-write")
        else:
            await trio.lowlevel.checkpoint()
        self.rids[i] = message["request_id"]


def play(sc: Scenario, *, settle: bool) -> Played:
    async def main() -> Played:
        tasks_before = trio.lowlevel.current_statistics().tasks_living
        c = Correlator()
        rids: dict[int, str] = {}
        current = {w: Incarnation(sc, rids) for w in WORKERS}
        for w in WORKERS:
            c.attach(w, current[w].route)
        outcomes: dict[int, list[tuple[Any, ...]]] = {i: [] for i in range(len(sc.requests))}
        starts: dict[int, float] = {}
        ends: dict[int, float] = {}
        scopes: dict[int, trio.CancelScope] = {}
        resolves: dict[int, bool] = {}
        cancelled: set[int] = set()
        deaths: list[tuple[float, str, int | None, int | None]] = []

        async def caller(i: int) -> None:
            req = sc.requests[i]
            with trio.CancelScope() as scopes[i]:
                if i in cancelled:  # cancelled in the same batch, before it ran
                    scopes[i].cancel()
                await attempt(
                    i,
                    Timeline(outcomes, starts, ends),
                    lambda: c.request(req.worker, "op", {"i": i}, timeout=req.timeout),
                    lambda payload: ("ok", payload),
                )

        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            timeline = [
                *sc.timeline,
                *(Action(END, 99, "cancel", i) for i in range(len(sc.requests))),
            ]
            for index, action in enumerate(timeline):
                await trio.sleep_until(t0 + action.tick)
                i = action.target
                if action.what == "start":
                    nursery.start_soon(caller, i)
                elif action.what in ("answer", "error"):
                    rid = rids.get(i)
                    if rid is not None:
                        worker = sc.requests[i].worker
                        if action.what == "answer":
                            resolves[index] = c.resolve(worker, rid, answer_payload(index), None)
                        else:
                            resolves[index] = c.resolve(
                                worker, rid, None, ErrorInfo(f"e{index}", "no")
                            )
                elif action.what == "foreign":
                    rid = rids.get(i)
                    if rid is not None:
                        other = next(w for w in WORKERS if w != sc.requests[i].worker)
                        resolves[index] = c.resolve(other, rid, "forged", None)
                elif action.what == "unknown":
                    resolves[index] = c.resolve(action.target, f"zz{index}", "who?", None)
                elif action.what == "cancel":
                    cancelled.add(i)
                    if i in scopes:
                        scopes[i].cancel()
                elif action.what in ("death", "release"):
                    w = action.target
                    if c.is_attached(w):
                        code, sig = (None, DEATH_SIGNAL) if action.what == "death" else (0, None)
                        current[w].died.set()
                        c.detach(w, lambda w=w, code=code, sig=sig: WorkerExited(w, code, sig))
                        deaths.append((trio.current_time(), w, code, sig))
                elif action.what == "restart":
                    w = action.target
                    if not c.is_attached(w):
                        current[w] = Incarnation(sc, rids)
                        c.attach(w, current[w].route)
                if settle or index + 1 == len(timeline) or timeline[index + 1].tick != action.tick:
                    await trio.testing.wait_all_tasks_blocked()
        return Played(
            outcomes,
            starts,
            ends,
            resolves,
            cancelled,
            deaths,
            c.statistics(),
            tasks_before,
            trio.lowlevel.current_statistics().tasks_living,
        )

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def check_common(sc: Scenario, p: Played) -> None:
    for i, req in enumerate(sc.requests):
        assert len(p.outcomes[i]) == 1, f"r{i} had outcomes {p.outcomes[i]}"
        elapsed = p.ends[i] - p.starts[i]
        if req.timeout is not None:
            assert elapsed <= req.timeout, f"r{i} took {elapsed} > its timeout {req.timeout}"
    assert p.stats.pending == 0
    assert p.tasks_after == p.tasks_before, "a task was left running"


# ---------------------------------------------------------------- the properties


@SETTINGS
@given(scenarios())
def test_exact_outcomes(sc: Scenario) -> None:
    note(sc.describe())
    expected = model(sc)
    p = play(sc, settle=True)
    note(f"played: {p.outcomes}")
    check_common(sc, p)
    for i in range(len(sc.requests)):
        want = expected.outcomes[i]
        assert p.outcomes[i][0] == want.outcome, (
            f"r{i}: got {p.outcomes[i][0]}, expected {want.outcome}"
        )
        assert p.ends[i] == want.end, f"r{i} ended at {p.ends[i]}, expected {want.end}"
    assert p.resolves == expected.resolves
    kinds = [p.outcomes[i][0][0] for i in range(len(sc.requests))]
    assert p.stats.completed == kinds.count("ok")
    assert p.stats.timed_out == kinds.count("RequestTimeout")
    assert p.stats.cancelled == kinds.count("Cancelled")
    assert p.stats.failed == sum(
        kinds.count(k) for k in ("WorkerError", "WorkerExited", "ChannelClosed")
    )
    assert p.stats.late_dropped == expected.late_dropped


@SETTINGS
@given(scenarios())
def test_racy_interleavings(sc: Scenario) -> None:
    """Same-tick actions race inside one scheduling batch: check invariants only."""
    note(sc.describe())
    p = play(sc, settle=False)
    note(f"played: {p.outcomes}")
    check_common(sc, p)
    check_invariants(sc, p)


def check_invariants(sc: Scenario, p: Played) -> None:
    timeline = sc.timeline
    delivered_to: dict[
        int, list[int]
    ] = {}  # request -> timeline indexes of resolves that returned True
    for index, ok in p.resolves.items():
        action = timeline[index]
        if action.what in ("unknown", "foreign"):
            assert not ok, f"{action} was delivered"
        elif ok:
            delivered_to.setdefault(action.target, []).append(index)
    undelivered = 0
    for i, req in enumerate(sc.requests):
        (outcome,) = p.outcomes[i]
        hits = delivered_to.get(i, [])
        assert len(hits) <= 1, f"r{i} was answered twice: {hits}"
        kind = outcome[0]
        elapsed = p.ends[i] - p.starts[i]
        if kind == "ok":
            assert hits and outcome[1] == answer_payload(hits[0]), (
                f"r{i} got {outcome}, delivered {hits}"
            )
        elif kind == "WorkerError":
            assert hits and outcome[1] == f"e{hits[0]}"
        else:
            undelivered += len(hits)  # answered, but its caller had stopped waiting
        if kind == "Cancelled":
            assert i in p.cancelled, f"r{i} was Cancelled but nobody cancelled it"
        if kind == "RequestTimeout":
            assert req.timeout is not None and elapsed == req.timeout
        if kind in ("WorkerExited", "ChannelClosed"):
            deaths = [
                d for d in p.deaths if d[1] == req.worker and p.starts[i] <= d[0] <= p.ends[i]
            ]
            assert deaths, f"r{i}: {kind} without a death of {req.worker}"
            if kind == "WorkerExited":
                assert outcome[1:] in [(d[2], d[3]) for d in deaths]
        # a request in flight when its worker went away ends then, not later
        later = [d for d in p.deaths if d[1] == req.worker and p.starts[i] < d[0] < p.ends[i]]
        assert not later, f"r{i} outlived the death of {req.worker} at {later[0][0]}: {outcome}"
    drops = sum(1 for ok in p.resolves.values() if not ok)
    assert p.stats.late_dropped == drops + undelivered
    kinds = [p.outcomes[i][0][0] for i in range(len(sc.requests))]
    assert p.stats.completed == kinds.count("ok")
    assert p.stats.timed_out == kinds.count("RequestTimeout")
    assert p.stats.cancelled <= kinds.count("Cancelled")


def test_the_model_is_not_vacuous() -> None:
    """A hand-written scenario with each outcome, so a model that predicted nothing useful
    (or a driver that did nothing) would fail here."""
    sc = Scenario(
        [
            Req("a", 0, 5.5, 0.0),  # answered at t2
            Req("a", 0, 1.5, 0.0),  # times out at t1.5; its answer at t3 is late
            Req("b", 0, None, 0.0),  # b dies at t4: WorkerExited
            Req("b", 5, None, 0.0),  # b is gone: WorkerNotFound
            Req("a", 1, None, 2.25),  # cancelled at t2 while its frame is written
        ],
        [
            Action(0, 0, "start", 0),
            Action(0, 0, "start", 1),
            Action(0, 0, "start", 2),
            Action(1, 0, "start", 4),
            Action(2, 0, "answer", 0),
            Action(2, 1, "cancel", 4),
            Action(3, 0, "answer", 1),
            Action(3, 1, "answer", 0),
            Action(4, 0, "death", "b"),
            Action(5, 0, "start", 3),
            Action(6, 0, "unknown", "a"),
        ],
    )
    expected = model(sc)
    assert [expected.outcomes[i].outcome for i in range(5)] == [
        ("ok", {"answer": 4}),
        ("RequestTimeout",),
        ("WorkerExited", None, 9),
        ("WorkerNotFound",),
        ("Cancelled",),
    ]
    assert expected.late_dropped == 3
    p = play(sc, settle=True)
    assert [p.outcomes[i][0] for i in range(5)] == [expected.outcomes[i].outcome for i in range(5)]
    assert p.stats.late_dropped == 3 and p.stats.pending == 0
