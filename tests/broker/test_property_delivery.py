"""Property test of the delivery state machine: random operation sequences against a model.

Hypothesis generates a list of operations -- send, inject, verify (echo or
timeout_fallback), fail, reports from the wrong agent, agent crash (it will restart),
agent crash for good (it will not), release, restart, hold/auto mode, flush, redeliver,
expire (time passes until every unacknowledged hand-over is a dead letter), broker
shutdown (agents released, store closed, reopened and recovered) and broker crash (the
engine abandoned without a word, then recovered) -- and plays it against the real
:class:`DeliveryEngine` and a real SQLite store (on the Trio thread, as in
``tests/broker/test_delivery.py``, with the same kind of fake worker transport), and against a
plain-Python model of the documented state machine. After every step:

- the store and the model agree on every delivery's state and attempt count, and the
  engine's in-memory view (``pending``) agrees with both;
- no delivery whose ``send`` returned a receipt (committed) has disappeared from the store;
- every hand-over to a worker (a ``deliver`` frame) corresponds to one attempt;
- operations fail exactly when the model says (WorkerNotFound, DeliveryStateError).

Generated operation lists played in one ``trio.run`` per example (with a fresh MockClock
and a fresh database file) rather than ``RuleBasedStateMachine``: the engine must live
inside a running Trio loop and a nursery, which a state machine's synchronous rules cannot
enter and leave step by step, and one run per example keeps examples isolated (nothing
carries over: tasks, clock, database), while Hypothesis still shrinks the list to the
shortest sequence of operations that fails, printed as a readable list.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from delivery_fakes import FakeTransport, record_transitions
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from trio_relay.broker.delivery import DeliveryEngine, DeliveryPolicy
from trio_relay.broker.events import EventLog
from trio_relay.errors import DeliveryStateError, WorkerNotFound
from trio_relay.store import sql
from trio_relay.store.engine import open_store
from trio_relay.wire import (
    AgentExited,
    AgentSpawned,
    DeliveryFailed,
    DeliveryInjected,
    DeliveryVerified,
)

AGENTS = ("w", "v")
CAP, WINDOW, ACK = 3, 2, 10.0
POLICY = DeliveryPolicy(cap=CAP, window=WINDOW, ack_timeout=ACK, max_attempts=1, deadline=1e7)
OPEN = ("queued", "sent", "injected")
INFLIGHT = ("sent", "injected")

agent_st = st.sampled_from(AGENTS)
pick = st.integers(0, 30)  # which delivery (index into those issued, modulo their count)
operations = st.one_of(
    [
        st.tuples(st.just(name), *args)
        for name, *args in (
            ("send", agent_st),
            ("send", agent_st),
            ("inject", pick),
            ("verify", pick, st.sampled_from(["echo", "timeout_fallback"])),
            ("fail", pick),
            ("wrong_agent_verify", pick),
            ("crash", agent_st),
            ("crash_for_good", agent_st),
            ("release", agent_st),
            ("restart", agent_st),
            ("mode", agent_st, st.sampled_from(["hold", "auto_inject"])),
            ("flush", agent_st),
            ("redeliver", pick),
            ("expire",),
            ("broker_shutdown",),
            ("broker_crash",),
        )
    ]
)


# ---------------------------------------------------------------- the model


@dataclass
class MD:
    seq: int
    agent: str
    state: str = "queued"
    attempts: int = 0
    frames: int = 0  # deliver frames ever written for it
    flushed: bool = False


@dataclass
class MA:
    running: bool = True
    gone: bool = False
    known: bool = True  # this broker life has heard of it (a gone one is forgotten on restart)
    mode: str = "auto_inject"


@dataclass
class Model:
    deliveries: dict[str, MD] = field(default_factory=dict)
    agents: dict[str, MA] = field(default_factory=lambda: {a: MA() for a in AGENTS})

    def of(self, agent: str, states: tuple[str, ...]) -> list[MD]:
        return sorted(
            (d for d in self.deliveries.values() if d.agent == agent and d.state in states),
            key=lambda d: d.seq,
        )

    def finish(self, d: MD, state: str) -> None:
        d.state, d.flushed = state, False

    def pump(self, agent: str) -> None:
        a = self.agents[agent]
        if not a.running:
            return
        room = WINDOW - len(self.of(agent, INFLIGHT))
        for d in self.of(agent, ("queued",)):
            if room <= 0 or (a.mode == "hold" and not d.flushed):
                break
            d.state, d.attempts, d.frames, room = "sent", d.attempts + 1, d.frames + 1, room - 1

    def enqueue(self, d: MD) -> list[MD]:
        queued = self.of(d.agent, ("queued",))
        evicted = []
        if len(queued) >= CAP:
            self.finish(queued[0], "dropped")
            evicted.append(queued[0])
        d.state, d.flushed = "queued", False
        return evicted

    def exited(self, agent: str) -> None:
        self.agents[agent].running = False
        for d in self.of(agent, INFLIGHT):
            d.state = "queued"

    def expire(self) -> None:
        for agent, a in self.agents.items():
            while a.running and self.of(agent, INFLIGHT):
                for d in self.of(agent, INFLIGHT):
                    self.finish(d, "dead_letter")
                self.pump(agent)


# ---------------------------------------------------------------- the real thing


def play(ops: list[tuple[Any, ...]]) -> set[tuple[str, str]]:
    """Play ``ops``; returns every (old, new) state change the store performed."""
    seen: set[tuple[str, str]] = set()

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "relay.db"
            transport = FakeTransport()
            transport.alive.update(AGENTS)
            model = Model()
            issued: list[str] = []  # delivery ids, in the order their sends returned
            remaining = list(ops)
            step = 0
            while True:  # one broker life per iteration
                async with open_store(db, threaded=False) as store:
                    await record_transitions(store, seen)
                    async with trio.open_nursery() as nursery:
                        events = EventLog()
                        engine = DeliveryEngine(
                            store, events, transport, POLICY, wall=trio.current_time
                        )
                        events.listen(engine.on_event)
                        await engine.recover()
                        nursery.start_soon(engine.run_timers)
                        for agent, a in model.agents.items():  # the broker respawns them
                            if a.gone:
                                a.known = False
                                continue
                            mode = await store.write(
                                lambda conn, agent=agent: sql.put_agent(conn, agent, {}, 0.0), "put"
                            )
                            engine.register(agent, mode)
                            transport.running.add(agent)
                            events.emit(AgentSpawned(agent=agent, pid=1, argv=["x"]))
                            a.running = True
                            model.pump(agent)
                        await trio.testing.wait_all_tasks_blocked()
                        await check(engine, store, transport, model, issued, "start")
                        end = None
                        while remaining:
                            op = remaining.pop(0)
                            step += 1
                            if op[0] in ("broker_shutdown", "broker_crash"):
                                end = op[0]
                                break
                            await apply(op, engine, events, transport, model, issued)
                            await trio.testing.wait_all_tasks_blocked()
                            await check(
                                engine, store, transport, model, issued, f"step {step} {op}"
                            )
                        if end == "broker_shutdown":
                            engine.close_intake()
                            for agent, a in model.agents.items():
                                if a.running:
                                    transport.running.discard(agent)
                                    events.emit(
                                        AgentExited(
                                            agent=agent,
                                            code=0,
                                            signal=None,
                                            intended=True,
                                            reason="broker shutdown",
                                        )
                                    )
                                    model.exited(agent)
                            await trio.testing.wait_all_tasks_blocked()
                        nursery.cancel_scope.cancel()
                # a crash leaves sent/injected in the store; recovery requeues them
                transport.running.clear()
                for agent, a in model.agents.items():
                    if a.running:
                        model.exited(agent)
                    for d in model.of(agent, ("queued",)):
                        d.flushed = False  # a flush is not kept across broker restarts
                if end is None:
                    break
            assert seen <= sql.LEGAL, f"undeclared transitions: {seen - sql.LEGAL}"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return seen


async def apply(
    op: tuple[Any, ...],
    engine: DeliveryEngine,
    events: EventLog,
    transport: FakeTransport,
    model: Model,
    issued: list[str],
) -> None:
    kind = op[0]
    if kind == "send":
        agent = op[1]
        if model.agents[agent].gone:
            with pytest.raises(WorkerNotFound):
                await engine.send(agent, "body", sender="me")
            return
        receipt = await engine.send(agent, "body", sender="me")
        seq = sql.parse_delivery_id(engine.store.tag, receipt.delivery_id)
        assert seq is not None
        d = MD(seq, agent)
        evicted = model.enqueue(d)
        model.deliveries[receipt.delivery_id] = d
        issued.append(receipt.delivery_id)
        assert list(receipt.evicted) == [
            sql.delivery_id(engine.store.tag, e.seq) for e in evicted
        ], "evicted the wrong delivery"
        model.pump(agent)
        return
    if kind in ("inject", "verify", "fail", "wrong_agent_verify", "redeliver"):
        if not issued:
            return
        did = issued[op[1] % len(issued)]
        d = model.deliveries[did]
        if kind == "inject":
            engine.on_report(d.agent, DeliveryInjected(delivery_id=did))
            if d.state == "sent":
                d.state = "injected"
        elif kind == "verify":
            engine.on_report(d.agent, DeliveryVerified(delivery_id=did, verification=op[2]))
            if d.state in INFLIGHT:
                model.finish(d, "verified" if op[2] == "echo" else "unverified")
                model.pump(d.agent)
            elif d.state == "dead_letter":  # it reached the agent after all: a late report
                model.finish(d, "verified" if op[2] == "echo" else "unverified")
        elif kind == "fail":
            engine.on_report(d.agent, DeliveryFailed(delivery_id=did, reason="nope"))
            if d.state in INFLIGHT:
                model.finish(d, "failed")
                model.pump(d.agent)
        elif kind == "wrong_agent_verify":
            other = next(a for a in AGENTS if a != d.agent)
            engine.on_report(other, DeliveryVerified(delivery_id=did, verification="echo"))
        else:  # redeliver
            if d.state not in ("dead_letter", "failed"):
                with pytest.raises(DeliveryStateError):
                    await engine.redeliver(did)
            elif model.agents[d.agent].gone:
                with pytest.raises(WorkerNotFound):
                    await engine.redeliver(did)
            else:
                receipt = await engine.redeliver(did)
                evicted = model.enqueue(d)
                d.attempts = 0
                assert list(receipt.evicted) == [
                    sql.delivery_id(engine.store.tag, e.seq) for e in evicted
                ]
                model.pump(d.agent)
        return
    if kind in ("crash", "crash_for_good", "release"):
        agent = op[1]
        a = model.agents[agent]
        if not a.running:
            return  # only a running worker can exit
        transport.running.discard(agent)
        if kind == "crash_for_good":
            transport.alive.discard(agent)
            transport.fates[agent] = "its restart policy is 'never'"
        events.emit(
            AgentExited(
                agent=agent,
                code=3,
                signal=None,
                intended=kind == "release",
                reason="exited with code 3",
            )
        )
        model.exited(agent)
        if kind == "crash_for_good":
            a.gone = True
            for d in model.of(agent, OPEN):
                model.finish(d, "failed")
        return
    if kind == "restart":
        agent = op[1]
        a = model.agents[agent]
        if a.running or a.gone:
            return
        transport.running.add(agent)
        events.emit(AgentSpawned(agent=agent, pid=2, argv=["x"], attempt=1))
        a.running = True
        model.pump(agent)
        return
    if kind in ("mode", "flush") and not model.agents[op[1]].known:
        with pytest.raises(WorkerNotFound):
            if kind == "mode":
                await engine.set_mode(op[1], op[2])
            else:
                engine.flush(op[1])
        return
    if kind == "mode":
        agent, mode = op[1], op[2]
        await engine.set_mode(agent, mode)
        model.agents[agent].mode = mode
        if mode == "auto_inject":
            for d in model.of(agent, OPEN):
                d.flushed = False
        model.pump(agent)
        return
    if kind == "flush":
        agent = op[1]
        count = engine.flush(agent)
        expected = 0
        if model.agents[agent].mode == "hold":
            for d in model.of(agent, ("queued",)):
                expected += not d.flushed
                d.flushed = True
            model.pump(agent)
        assert count == expected
        return
    if kind == "expire":
        await trio.sleep(ACK * 1000)  # every head stalls in turn: max_attempts=1
        model.expire()
        return
    raise AssertionError(op)


async def check(
    engine: DeliveryEngine,
    store: Any,
    transport: FakeTransport,
    model: Model,
    issued: list[str],
    where: str,
) -> None:
    rows = await engine.deliveries(limit=10**6)
    stored = {info.delivery_id: (info.state, info.attempts) for info in rows}
    modelled = {did: (d.state, d.attempts) for did, d in model.deliveries.items()}
    missing = set(issued) - set(stored)
    assert not missing, f"{where}: committed deliveries disappeared: {missing}"
    assert stored == modelled, f"{where}: store {stored} != model {modelled}"
    for agent in AGENTS:
        try:
            pending = [(i.delivery_id, i.state) for i in engine.pending(agent)]
        except WorkerNotFound:  # gone for good, and unknown to this broker life
            assert model.agents[agent].gone, f"{where}: {agent} unknown to the engine"
            pending = []
        want = [(sql.delivery_id(engine.store.tag, d.seq), d.state) for d in model.of(agent, OPEN)]
        assert pending == want, f"{where}: engine memory of {agent} {pending} != model {want}"
    frames = {did: d.frames for did, d in model.deliveries.items() if d.frames}
    assert transport.counts() == frames, f"{where}: frames {transport.counts()} != model {frames}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operations, max_size=30))
def test_store_and_model_agree_after_every_step(ops: list[tuple[Any, ...]]) -> None:
    note(f"operations: {ops}")
    play(ops)


def test_a_known_sequence() -> None:
    """A fixed sequence touching every state, so the model cannot be vacuous."""
    seen = play(
        [
            ("send", "w"),
            ("send", "w"),
            ("send", "w"),  # two sent (the window), one queued
            ("inject", 0),
            ("verify", 0, "echo"),
            ("verify", 1, "timeout_fallback"),
            ("crash", "w"),
            ("send", "w"),
            ("send", "w"),
            ("send", "w"),  # the cap: one dropped
            ("restart", "w"),
            ("fail", 3),
            ("expire",),
            ("redeliver", 3),
            ("broker_crash",),
            ("mode", "v", "hold"),
            ("send", "v"),
            ("flush", "v"),
            ("broker_shutdown",),
            ("crash_for_good", "w"),
            ("send", "w"),
            ("redeliver", 4),
        ]
    )
    # the recorder sees what the store did (and play() checked it against the declaration)
    assert seen == {
        ("queued", "sent"),
        ("sent", "injected"),
        ("injected", "verified"),
        ("sent", "unverified"),
        ("sent", "queued"),
        ("queued", "dropped"),
        ("sent", "failed"),
        ("sent", "dead_letter"),
        ("failed", "queued"),
        ("queued", "failed"),
    }
