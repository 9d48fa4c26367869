"""The correlator alone, on Trio's MockClock: exactly one outcome per request, no leftovers."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from helpers import keep_failure

from trio_relay.broker.correlator import Correlator
from trio_relay.errors import (
    ChannelClosed,
    RequestTimeout,
    WorkerError,
    WorkerExited,
    WorkerNotFound,
)
from trio_relay.wire import ErrorInfo


class FakeWorker:
    """A route that records frames; the test answers them when it likes."""

    def __init__(self, correlator: Correlator, name: str = "w") -> None:
        self.correlator, self.name = correlator, name
        self.frames: list[dict[str, Any]] = []
        self.arrived = trio.Event()
        correlator.attach(name, self.route)

    async def route(self, frame: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.frames.append(json.loads(frame))
        self.arrived.set()

    async def next_id(self) -> str:
        await self.arrived.wait()
        self.arrived = trio.Event()
        return self.frames[-1]["request_id"]

    def answer(self, request_id: str, payload: Any = None, error: ErrorInfo | None = None) -> bool:
        return self.correlator.resolve(self.name, request_id, payload, error)


def correlated() -> tuple[Correlator, FakeWorker]:
    """A correlator with one fake worker, ``w``, attached to it."""
    c = Correlator()
    return c, FakeWorker(c)


async def test_answered_request(autojump_clock: trio.abc.Clock) -> None:
    c, w = correlated()
    async with trio.open_nursery() as nursery:

        async def answer_later() -> None:
            rid = await w.next_id()
            await trio.sleep(1)
            assert w.answer(rid, {"pong": w.frames[-1]["data"]})

        nursery.start_soon(answer_later)
        assert await c.request("w", "ping", {"data": 5}, timeout=10) == {"pong": 5}
    assert w.frames[0]["kind"] == "ping"
    stats = c.statistics()
    assert (stats.pending, stats.completed, stats.late_dropped) == (0, 1, 0)


async def test_timeout_and_the_entry_is_gone(autojump_clock: trio.abc.Clock) -> None:
    c = Correlator()
    FakeWorker(c)
    start = trio.current_time()
    with pytest.raises(RequestTimeout) as info:
        await c.request("w", "hang", timeout=3)
    assert trio.current_time() - start == pytest.approx(3)
    assert "3 s" in str(info.value)
    stats = c.statistics()
    assert (stats.pending, stats.timed_out) == (0, 1)


async def test_worker_error(autojump_clock: trio.abc.Clock) -> None:
    c, w = correlated()
    async with trio.open_nursery() as nursery:

        async def fail() -> None:
            w.answer(await w.next_id(), error=ErrorInfo("no_screen", "nothing to show"))

        nursery.start_soon(fail)
        with pytest.raises(WorkerError) as info:
            await c.request("w", "snapshot", timeout=10)
    assert (info.value.code, info.value.message) == ("no_screen", "nothing to show")
    assert c.statistics().failed == 1


async def test_detach_fails_in_flight_requests_at_once(autojump_clock: trio.abc.Clock) -> None:
    c = Correlator()
    FakeWorker(c)
    outcomes: list[BaseException] = []

    hang = lambda: c.request("w", "hang", timeout=100)  # noqa: E731
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(keep_failure, outcomes, WorkerExited, hang)
        await trio.sleep(1)
        assert c.pending_count("w") == 5
        died_at = trio.current_time()
        assert c.detach("w", lambda: WorkerExited("w", None, 9)) == 5
    assert trio.current_time() == died_at  # not at the deadline
    assert len(outcomes) == 5 and all(o.signal == 9 for o in outcomes)
    assert len({id(o) for o in outcomes}) == 5  # each caller gets its own exception
    assert c.statistics().pending == 0
    with pytest.raises(WorkerNotFound):
        await c.request("w", "ping", timeout=1)


async def test_worker_not_found() -> None:
    with pytest.raises(WorkerNotFound):
        await Correlator().request("nobody", "ping", timeout=1)


async def test_cancelled_caller_leaves_no_entry_and_the_late_answer_is_counted(
    autojump_clock: trio.abc.Clock,
) -> None:
    c, w = correlated()
    with trio.move_on_after(2) as scope:
        await c.request("w", "hang", timeout=100)
    assert scope.cancelled_caught
    assert c.statistics().pending == 0
    assert c.statistics().cancelled == 1
    rid = w.frames[0]["request_id"]
    assert not w.answer(rid, {"too": "late"})
    assert c.statistics().late_dropped == 1


async def test_answer_after_timeout_is_dropped_and_counted(autojump_clock: trio.abc.Clock) -> None:
    c, w = correlated()
    with pytest.raises(RequestTimeout):
        await c.request("w", "slow", timeout=1)
    assert not w.answer(w.frames[0]["request_id"], "late")
    assert c.statistics().late_dropped == 1


async def test_duplicate_and_unknown_answers_are_counted(autojump_clock: trio.abc.Clock) -> None:
    c, w = correlated()
    async with trio.open_nursery() as nursery:

        async def twice() -> None:
            rid = await w.next_id()
            assert w.answer(rid, 1)
            assert not w.answer(rid, 2)
            assert not w.answer("no-such-id", 3)

        nursery.start_soon(twice)
        assert await c.request("w", "ping", timeout=5) == 1
    assert c.statistics().late_dropped == 2


async def test_an_answer_from_another_worker_is_not_delivered(
    autojump_clock: trio.abc.Clock,
) -> None:
    c = Correlator()
    a, b = FakeWorker(c, "a"), FakeWorker(c, "b")
    async with trio.open_nursery() as nursery:

        async def impostor() -> None:
            rid = await a.next_id()
            assert not b.answer(rid, "forged")
            assert a.answer(rid, "genuine")

        nursery.start_soon(impostor)
        assert await c.request("a", "ping", timeout=5) == "genuine"


async def test_channel_closed_when_the_frame_cannot_be_written() -> None:
    c = Correlator()

    async def broken(frame: bytes) -> None:
        raise ChannelClosed("pipe broke")

    c.attach("w", broken)
    with pytest.raises(ChannelClosed):
        await c.request("w", "ping", timeout=5)
    assert c.statistics().pending == 0 and c.statistics().failed == 1


async def test_the_deadline_covers_writing_the_frame(autojump_clock: trio.abc.Clock) -> None:
    c = Correlator()

    async def stuck(frame: bytes) -> None:
        await trio.sleep_forever()

    c.attach("w", stuck)
    with pytest.raises(RequestTimeout):
        await c.request("w", "ping", timeout=4)
    assert trio.current_time() == pytest.approx(4)
    assert c.statistics().pending == 0


async def test_request_ids_are_unique_and_carried_on_the_frame(
    autojump_clock: trio.abc.Clock,
) -> None:
    c, w = correlated()
    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(_quiet_timeout, c)
    ids = [f["request_id"] for f in w.frames]
    assert len(ids) == 50 and len(set(ids)) == 50


async def _quiet_timeout(c: Correlator) -> None:
    with pytest.raises(RequestTimeout):
        await c.request("w", "hang", timeout=1)


async def test_a_cancelled_request_to_an_unknown_worker_counts_as_cancelled() -> None:
    c = Correlator()
    with trio.CancelScope() as scope:
        scope.cancel()
        await c.request("nobody", "ping", timeout=1)
    assert c.statistics().cancelled == 1
