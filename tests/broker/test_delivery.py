"""The delivery engine's logic on Trio's MockClock: a fake worker transport, a real SQLite
store on the Trio thread (so the clock only jumps when the engine really waits)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from delivery_fakes import FakeTransport, record_transitions

from trio_relay.broker.delivery import DeliveryEngine, DeliveryPolicy, Receipt
from trio_relay.broker.events import EventLog
from trio_relay.errors import WorkerNotFound
from trio_relay.store import sql
from trio_relay.store.engine import open_store
from trio_relay.wire import (
    AgentExited,
    AgentGaveUp,
    AgentSpawned,
    DeadLetterEvent,
    DeliveryDroppedEvent,
    DeliveryFailedEvent,
    DeliveryInjected,
    DeliveryRequeuedEvent,
    DeliveryRetryingEvent,
    DeliveryUnverifiedEvent,
    DeliveryVerified,
    DeliveryVerifiedEvent,
)


class Rig:
    def __init__(self, engine: DeliveryEngine, transport: FakeTransport, events: EventLog) -> None:
        self.engine, self.transport, self.events = engine, transport, events

    def start(self, agent: str = "w") -> None:
        self.transport.alive.add(agent)
        self.transport.running.add(agent)
        self.events.emit(AgentSpawned(agent=agent, pid=1, argv=["x"]))

    def exit(self, agent: str = "w", *, intended: bool = False, fate: str | None = None) -> None:
        self.transport.running.discard(agent)
        if fate is not None:
            self.transport.fates[agent] = fate
            self.transport.alive.discard(agent)
        self.events.emit(
            AgentExited(
                agent=agent, code=3, signal=None, intended=intended, reason="exited with code 3"
            )
        )

    def ack(self, delivery_id: str, verification: str = "echo", reason: str | None = None) -> None:
        self.engine.on_report("w", DeliveryInjected(delivery_id=delivery_id))
        self.engine.on_report(
            "w",
            DeliveryVerified(delivery_id=delivery_id, verification=verification, reason=reason),  # type: ignore[arg-type]
        )

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events.since(0) if isinstance(e, kind)]

    async def sent(self, body: str) -> Receipt:
        """Send ``body`` to ``w`` and let its commit and hand-over settle; the receipt."""
        receipt = await self.engine.send("w", body, sender="me")
        await self.settle()
        return receipt

    async def settle(self) -> None:
        """Let the queued writes commit (no clock time passes: the store is on this thread)."""
        await trio.testing.wait_all_tasks_blocked()


@asynccontextmanager
async def rig(tmp_path: Path, *, hold: bool = False, **policy: float) -> AsyncIterator[Rig]:
    """The engine on a store on this thread, agent ``w`` running, in hold mode if ``hold``.
    On leaving: every state change the store performed is one the state machine declares,
    and no write raised on its own (a fault such as a move the state machine refuses)."""
    seen: set[tuple[str, str]] = set()
    faults = _Faults()
    logging.getLogger("trio_relay.store.engine").addHandler(faults)
    async with open_store(tmp_path / "relay.db", threaded=False) as store:
        await record_transitions(store, seen)
        async with trio.open_nursery() as nursery:
            events = EventLog()
            transport = FakeTransport()
            engine = DeliveryEngine(
                store,
                events,
                transport,
                DeliveryPolicy(**policy),
                wall=trio.current_time,  # type: ignore[arg-type]
            )
            events.listen(engine.on_event)
            await engine.recover()
            nursery.start_soon(engine.run_timers)
            r = Rig(engine, transport, events)
            r.start()
            if hold:
                await engine.set_mode("w", "hold")
            yield r
            nursery.cancel_scope.cancel()
    logging.getLogger("trio_relay.store.engine").removeHandler(faults)
    assert seen <= sql.LEGAL, f"undeclared transitions: {seen - sql.LEGAL}"
    assert faults.records == [], [r.getMessage() for r in faults.records]


class _Faults(logging.Handler):
    """The store's reports of a write whose own code raised (logged with its traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


async def test_retries_back_off_then_dead_letter_then_redeliver(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, ack_timeout=1, backoff=2, max_attempts=3, deadline=1000) as r:
        receipt = await r.engine.send("w", "hello", sender="me")
        start = trio.current_time()
        with trio.fail_after(100):
            dead = await r.engine.wait(receipt.delivery_id, timeout=50)
        assert dead.state == "dead_letter" and dead.attempts == 3
        assert (
            "3 attempts spent" in dead.last_error and "within 4 s of attempt 3" in dead.last_error
        )
        # sent at 0, then after waiting 1 s, then 2 s; given up 4 s after the third
        assert [t - start for t, _, _ in r.transport.frames] == [0, 1, 3]
        assert trio.current_time() - start == 7
        assert [e.attempt for e in r.of(DeliveryRetryingEvent)] == [2, 3]
        (event,) = r.of(DeadLetterEvent)
        assert (event.delivery_id, event.attempts, event.error) == (
            receipt.delivery_id,
            3,
            dead.last_error,
        )
        assert [d.delivery_id for d in await r.engine.deliveries(states=("dead_letter",))] == [
            receipt.delivery_id
        ]

        again = await r.engine.redeliver(receipt.delivery_id)
        assert (again.delivery_id, again.state) == (receipt.delivery_id, "queued")
        await r.settle()
        assert r.transport.ids() == [receipt.delivery_id] * 4
        r.ack(receipt.delivery_id)
        with trio.fail_after(5):
            done = await r.engine.wait(receipt.delivery_id, timeout=5)
        assert (done.state, done.verification, done.attempts) == ("verified", "echo", 1)
        assert await r.engine.deliveries(states=("dead_letter",)) == []


async def test_the_wall_clock_deadline_bounds_the_retries(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, ack_timeout=10, backoff=2, max_attempts=100, deadline=25) as r:
        start = trio.current_time()
        receipt = await r.engine.send("w", "hello", sender="me")
        with trio.fail_after(100):
            dead = await r.engine.wait(receipt.delivery_id, timeout=100)
        assert trio.current_time() - start == 25  # not 30: the deadline cuts the second wait
        assert dead.state == "dead_letter" and "deadline of 25 s passed" in dead.last_error
        assert [t - start for t, _, _ in r.transport.frames] == [0, 10]


async def test_a_delivery_the_worker_holds_for_an_agent_not_ready_spends_no_attempts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The worker says why it holds what it was handed (a dialog waits for a person): the
    # wait for progress starts again without a retry, until the agent takes it...
    async with rig(tmp_path, ack_timeout=1, backoff=2, max_attempts=2, deadline=100) as r:
        r.transport.waits["w"] = "the agent waits for a person: trust this folder?"
        receipt = await r.engine.send("w", "hello", sender="me")
        await trio.sleep(50)
        assert r.transport.ids() == [receipt.delivery_id]  # handed over once, not resent
        assert not r.of(DeliveryRetryingEvent) and not r.of(DeadLetterEvent)
        del r.transport.waits["w"]
        r.ack(receipt.delivery_id, "submitted")
        with trio.fail_after(5):
            done = await r.engine.wait(receipt.delivery_id, timeout=5)
        assert (done.state, done.verification, done.attempts) == ("verified", "submitted", 1)
    # ...or its deadline passes, naming why it waited.
    (tmp_path / "2").mkdir()
    async with rig(tmp_path / "2", ack_timeout=1, max_attempts=2, deadline=30) as r:
        r.transport.waits["w"] = "the agent is busy: esc to interrupt"
        receipt = await r.engine.send("w", "hello", sender="me")
        with trio.fail_after(100):
            dead = await r.engine.wait(receipt.delivery_id, timeout=100)
        assert dead.state == "dead_letter" and dead.attempts == 1
        assert "while it waited (the agent is busy: esc to interrupt)" in dead.last_error


async def test_progress_restarts_the_wait_and_acks_stop_the_retries(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, ack_timeout=1, max_attempts=2) as r:
        receipt = await r.engine.send("w", "slow", sender="me")
        await trio.sleep(0.9)
        r.engine.on_report("w", DeliveryInjected(delivery_id=receipt.delivery_id))
        await trio.sleep(0.9)  # 1.8 s after the send, 0.9 s after the progress: no retry
        assert len(r.transport.frames) == 1
        r.engine.on_report(
            "w", DeliveryVerified(delivery_id=receipt.delivery_id, verification="echo")
        )
        done = await r.engine.wait(receipt.delivery_id, timeout=1)
        await trio.sleep(10)
        assert done.state == "verified" and len(r.transport.frames) == 1
        assert r.of(DeliveryRetryingEvent) == []


async def test_timeout_fallback_is_recorded_as_unverified_never_as_success(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        receipt = await r.sent("hi")
        r.ack(receipt.delivery_id, "timeout_fallback", "not echoed within 5 s")
        info = await r.engine.wait(receipt.delivery_id, timeout=1)
        assert (info.state, info.verification, info.reason) == (
            "unverified",
            "timeout_fallback",
            "not echoed within 5 s",
        )
        assert info.describe().startswith("injected but not verified (timeout_fallback")
        (event,) = r.of(DeliveryUnverifiedEvent)  # its own kind: never counted as verified
        assert (event.verification, event.reason) == ("timeout_fallback", "not echoed within 5 s")
        assert r.of(DeliveryVerifiedEvent) == []
        assert await r.engine.deliveries(states=("verified",)) == []


async def test_the_cap_evicts_the_oldest_pending_and_the_sender_learns(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, cap=2, hold=True) as r:
        first, second = [await r.engine.send("w", f"m{i}", sender="me") for i in range(2)]
        assert first.evicted == second.evicted == ()
        third = await r.engine.send("w", "m2", sender="me")
        assert third.evicted == (first.delivery_id,)
        (event,) = r.of(DeliveryDroppedEvent)
        assert (event.delivery_id, event.evicted_by) == (first.delivery_id, third.delivery_id)
        assert "2 deliveries were already pending" in event.reason
        dropped = await r.engine.wait(first.delivery_id, timeout=1)
        assert dropped.state == "dropped" and dropped.reason == event.reason
        assert [d.delivery_id for d in r.engine.pending("w")] == [
            second.delivery_id,
            third.delivery_id,
        ]
        assert r.transport.frames == []  # held: nothing was handed over


async def test_hold_then_flush_hands_over_in_order_within_the_window(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, window=2, hold=True) as r:
        ids = [(await r.engine.send("w", f"m{i}", sender="me")).delivery_id for i in range(5)]
        await r.settle()
        assert r.transport.frames == [] and r.engine.mode("w") == "hold"
        assert r.engine.flush("w") == 5
        await r.settle()
        assert r.transport.ids() == ids[:2]  # the window
        for i in range(5):
            r.ack(ids[i])
            await r.settle()
        assert r.transport.ids() == ids
        late = await r.sent("after the flush")
        assert late.delivery_id not in r.transport.ids()  # still holding new ones
        await r.engine.set_mode("w", "auto_inject")
        await r.settle()
        assert r.transport.ids()[-1] == late.delivery_id
        assert r.engine.flush("w") == 0


async def test_a_crashed_worker_gets_its_deliveries_again_in_order_when_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        ids = [(await r.engine.send("w", f"m{i}", sender="me")).delivery_id for i in range(3)]
        await r.settle()
        r.ack(ids[0])
        r.exit()
        await r.settle()
        assert [e.delivery_id for e in r.of(DeliveryRequeuedEvent)] == ids[1:]
        assert [d.state for d in r.engine.pending("w")] == ["queued", "queued"]
        extra = (await r.engine.send("w", "while down", sender="me")).delivery_id
        r.start()
        await r.settle()
        assert r.transport.ids() == [*ids, ids[1], ids[2], extra]
        assert r.of(DeliveryFailedEvent) == []


async def test_a_crashed_worker_that_will_not_restart_fails_each_delivery(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, hold=True) as r:
        held = await r.engine.send("w", "held", sender="me")
        r.engine.flush("w")
        sent = await r.sent("queued")
        r.exit(fate="its restart policy is 'never'")
        with trio.fail_after(5):
            infos = [await r.engine.wait(x.delivery_id, timeout=5) for x in (held, sent)]
        for info in infos:
            assert info.state == "failed"
            assert info.reason == (
                "agent 'w' exited with code 3 and will not restart: its restart policy is 'never'"
            )
        assert len(r.of(DeliveryFailedEvent)) == 2
        with pytest.raises(WorkerNotFound):
            await r.engine.send("w", "too late", sender="me")


async def test_an_agent_that_gave_up_fails_each_delivery_naming_its_attempts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        sent = await r.sent("queued")
        r.exit(fate="it gave up after 4 restarts")  # agent_gave_up follows agent_exited at once
        r.events.emit(AgentGaveUp(agent="w", attempts=4, reason="exited with code 3"))
        with trio.fail_after(5):
            info = await r.engine.wait(sent.delivery_id, timeout=5)
        assert info.state == "failed"
        assert info.reason == (
            "agent 'w' will not restart: it gave up after 4 restarts (exited with code 3)"
        )


async def test_a_worker_that_reads_nothing_gets_the_delivery_again_later(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Its input queue is full (InputQueueFull): the hand-over is no error, the retry timer
    sends the delivery again, and nothing else stops."""
    async with rig(tmp_path, ack_timeout=1) as r:
        r.transport.full.add("w")
        receipt = await r.sent("m")
        assert r.transport.ids() == []
        r.transport.full.discard("w")
        with trio.fail_after(30):
            while receipt.delivery_id not in r.transport.ids():
                await trio.sleep(0.5)
        r.ack(receipt.delivery_id)
        info = await r.engine.wait(receipt.delivery_id, timeout=10)
        assert info.state == "verified"


async def test_a_released_worker_keeps_its_deliveries(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        receipt = await r.sent("m")
        r.exit(intended=True)
        await r.settle()
        await trio.sleep(3600)
        (pending,) = r.engine.pending("w")
        assert (pending.delivery_id, pending.state) == (receipt.delivery_id, "queued")
        assert r.of(DeliveryFailedEvent) == r.of(DeadLetterEvent) == []


async def test_duplicate_and_unknown_reports_change_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        receipt = await r.sent("m")
        r.ack(receipt.delivery_id)
        r.ack(receipt.delivery_id)  # a re-acknowledgement, as after a retry
        r.engine.on_report(
            "w", DeliveryVerified(delivery_id=receipt.delivery_id + "0", verification="echo")
        )
        await r.settle()
        assert len(r.of(DeliveryVerifiedEvent)) == 1
        assert r.engine.stale_reports == 3
        # an id this store never issued (a deliver frame written by hand) is relayed as is
        r.engine.on_report("w", DeliveryVerified(delivery_id="by-hand", verification="echo"))
        assert r.of(DeliveryVerifiedEvent)[-1].delivery_id == "by-hand"


# ---------------------------------------------------------------- deadlines


async def test_a_delivery_past_its_deadline_is_dead_lettered_and_never_typed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, deadline=10, ack_timeout=5, hold=True) as r:
        old = await r.engine.send("w", "held too long", sender="me")
        await trio.sleep(20)  # held (or the broker down, or the agent away) past the deadline
        fresh = await r.engine.send("w", "just now", sender="me")
        assert r.engine.flush("w") == 2
        await r.settle()
        assert r.transport.ids() == [fresh.delivery_id]  # the expired one is never typed
        dead = await r.engine.wait(old.delivery_id, timeout=1)
        assert dead.state == "dead_letter" and dead.attempts == 0
        assert dead.last_error == "deadline of 10 s passed before it could be delivered"
        (event,) = r.of(DeadLetterEvent)
        assert (event.delivery_id, event.attempts) == (old.delivery_id, 0)
        assert event.error == dead.last_error
        assert [d.delivery_id for d in r.engine.pending("w")] == [fresh.delivery_id]


async def test_a_delivery_sent_just_before_its_deadline_gets_a_full_ack_wait(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, deadline=10, ack_timeout=5, hold=True) as r:
        receipt = await r.engine.send("w", "m", sender="me")
        await trio.sleep(9)
        r.engine.flush("w")
        await r.settle()
        sent_at = trio.current_time()
        assert r.transport.ids() == [receipt.delivery_id]
        dead = await r.engine.wait(receipt.delivery_id, timeout=100)
        assert trio.current_time() - sent_at == 5  # not 1: the deadline does not cut it short
        assert dead.state == "dead_letter" and "deadline of 10 s passed" in dead.last_error


# ---------------------------------------------------------------- late reports


@pytest.mark.parametrize("verification", ["echo", "timeout_fallback"])
async def test_a_late_report_on_a_dead_letter_is_recorded(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, verification: str
) -> None:
    async with rig(tmp_path, ack_timeout=1, max_attempts=1) as r:
        receipt = await r.engine.send("w", "m", sender="me")
        assert (await r.engine.wait(receipt.delivery_id, timeout=10)).state == "dead_letter"
        r.engine.on_report("w", DeliveryInjected(delivery_id=receipt.delivery_id))  # stale
        r.engine.on_report(
            "x", DeliveryVerified(delivery_id=receipt.delivery_id, verification="echo")
        )  # another agent's report on it: stale
        await r.settle()
        assert (await r.engine.get(receipt.delivery_id)).state == "dead_letter"
        reason = None if verification == "echo" else "not seen"
        r.engine.on_report(
            "w",
            DeliveryVerified(
                delivery_id=receipt.delivery_id,
                verification=verification,
                reason=reason,  # type: ignore[arg-type]
            ),
        )
        await r.settle()
        info = await r.engine.get(receipt.delivery_id)
        kind = DeliveryVerifiedEvent if verification == "echo" else DeliveryUnverifiedEvent
        assert info.state == ("verified" if verification == "echo" else "unverified")
        assert (info.verification, info.reason) == (verification, reason)
        (event,) = r.of(kind)
        assert event.delivery_id == receipt.delivery_id
        assert r.engine.stale_reports == 2
        assert await r.engine.deliveries(states=("dead_letter",)) == []


# ---------------------------------------------------------------- cancellation


async def test_redeliver_cancelled_during_its_read_leaves_no_claim(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path, cap=2, ack_timeout=1, max_attempts=1) as r:
        dead = await r.engine.send("w", "a", sender="me")
        assert (await r.engine.wait(dead.delivery_id, timeout=10)).state == "dead_letter"
        await r.engine.set_mode("w", "hold")
        held = [await r.engine.send("w", m, sender="me") for m in ("b", "c")]  # the cap: full
        scope = trio.CancelScope()
        real_get = sql.get_delivery

        def cancelled_meanwhile(conn: Any, seq: int) -> Any:
            scope.cancel()  # the caller is cancelled while the store read runs
            return real_get(conn, seq)

        monkeypatch.setattr(sql, "get_delivery", cancelled_meanwhile)
        with scope:
            await r.engine.redeliver(dead.delivery_id)
        monkeypatch.setattr(sql, "get_delivery", real_get)
        assert scope.cancelled_caught
        box = r.engine._core.mailbox("w")
        assert (box.incoming, box.leaving) == (0, set())
        assert (await r.engine.get(dead.delivery_id)).state == "dead_letter"
        # nothing is stuck: the held ones go when released, and another send evicts as usual
        third = await r.engine.send("w", "d", sender="me")
        assert third.evicted == (held[0].delivery_id,)
        r.engine.flush("w")
        await r.settle()
        assert r.transport.ids()[1:] == [held[1].delivery_id, third.delivery_id]


# ---------------------------------------------------------------- store failures in hooks


def failing(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    times: int,
    when: Callable[..., bool] = lambda *a, **k: True,
) -> list[int]:
    """Make ``store.<name>`` raise a disk I/O error ``times`` times (when ``when`` says)."""
    real = getattr(sql, name)
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if calls[0] < times and when(*args, **kwargs):
            calls[0] += 1
            raise sqlite3.OperationalError("disk I/O error")
        return real(*args, **kwargs)

    monkeypatch.setattr(sql, name, wrapper)
    return calls


async def test_a_report_the_store_cannot_commit_is_recorded_later(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path, ack_timeout=100, store_retry=1) as r:
        errors: list[str] = []
        r.engine.store.on_error = lambda what, error: errors.append(what)
        receipt = await r.sent("m")
        calls = failing(
            monkeypatch, "transition", 2, lambda conn, seq, f, to, *a, **k: to == "verified"
        )
        r.ack(receipt.delivery_id)
        start = trio.current_time()
        info = await r.engine.wait(receipt.delivery_id, timeout=10)
        assert info.state == "verified" and trio.current_time() - start == 2
        assert calls == [2] and len(errors) == 2 and all("verified" in e for e in errors)
        assert len(r.of(DeliveryVerifiedEvent)) == 1


async def test_failing_the_deliveries_of_a_crashed_agent_is_retried_until_it_commits(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path, store_retry=1) as r:
        errors: list[str] = []
        r.engine.store.on_error = lambda what, error: errors.append(what)
        receipt = await r.sent("m")
        failing(monkeypatch, "requeue_agent", 1)
        failing(monkeypatch, "fail_open", 2)
        r.exit(fate="its restart policy is 'never'")
        info = await r.engine.wait(receipt.delivery_id, timeout=10)
        assert info.state == "failed" and "will not restart" in info.reason
        assert errors == ["requeue the deliveries of 'w'"] + ["fail the deliveries of 'w'"] * 2
        (event,) = r.of(DeliveryFailedEvent)
        assert event.delivery_id == receipt.delivery_id


# ---------------------------------------------------------------- release


async def test_an_explicitly_released_agent_fails_its_open_deliveries(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        sent = await r.sent("handed over")
        await r.engine.set_mode("w", "hold")
        held = await r.engine.send("w", "held", sender="me")
        r.exit(intended=True)
        r.transport.alive.discard("w")
        r.engine.agent_released("w")
        for receipt in (sent, held):
            info = await r.engine.wait(receipt.delivery_id, timeout=1)
            assert (info.state, info.reason) == ("failed", "agent 'w' was released")
        assert len(r.of(DeliveryFailedEvent)) == 2 and r.engine.pending("w") == []
