"""The event log: numbering, replay, explicit gaps, and a publisher nobody can stall."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_relay.broker.events import EventLog, text_bytes
from trio_relay.broker.packed_output import PackedOutput
from trio_relay.wire import AgentIdle, AgentOutput, AgentReady, Event, Gap


def idle(n: int) -> AgentIdle:
    return AgentIdle(agent=f"a{n}")


async def test_events_are_numbered_from_one_and_replayable() -> None:
    log = EventLog(capacity=8)
    for n in range(5):
        log.emit(idle(n))
    assert [e.seq for e in log.since(0)] == [1, 2, 3, 4, 5]
    assert [e.seq for e in log.since(3)] == [4, 5]
    assert log.last_seq == 5 and all(e.time > 0 for e in log.since(0))


async def test_subscriber_replays_then_follows(autojump_clock: trio.abc.Clock) -> None:
    log = EventLog()
    log.emit(idle(1))
    seen: list[int] = []

    async def follow() -> None:
        async for event in log.subscribe(since=0):
            seen.append(event.seq)
            if len(seen) == 3:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.sleep(1)
        log.emit(idle(2))
        log.emit(idle(3))
    assert seen == [1, 2, 3]


async def test_subscribe_without_since_sees_only_new_events() -> None:
    log = EventLog()
    log.emit(idle(1))
    sub = log.subscribe()
    log.emit(idle(2))
    assert (await sub.__anext__()).seq == 2


async def test_a_subscriber_that_falls_behind_gets_an_explicit_gap() -> None:
    log = EventLog(capacity=4)
    sub = log.subscribe(since=0)
    for n in range(10):  # the publisher never waits for the slow subscriber
        log.emit(idle(n))
    first = await sub.__anext__()
    assert isinstance(first, Gap) and (first.first, first.last) == (1, 6)
    assert [(await sub.__anext__()).seq for _ in range(4)] == [7, 8, 9, 10]


async def test_wait_for_returns_the_matching_event_and_raises_on_a_gap(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = EventLog(capacity=2)
    async with trio.open_nursery() as nursery:

        async def later() -> None:
            await trio.sleep(1)
            log.emit(idle(1))
            log.emit(AgentReady(agent="x"))

        nursery.start_soon(later)
        event = await log.wait_for(lambda e: isinstance(e, AgentReady))
    assert event.seq == 2
    for n in range(5):
        log.emit(idle(n))
    with pytest.raises(LookupError):
        await log.wait_for(lambda e: False, since=0)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        EventLog(capacity=0)


async def test_listeners_see_every_event_in_order_even_past_the_ring() -> None:
    log = EventLog(capacity=2)
    seen: list[int] = []
    log.listen(lambda event: seen.append(event.seq))
    for n in range(10):
        log.emit(idle(n))
    assert seen == list(range(1, 11))


async def test_a_failing_listener_stops_neither_the_emitter_nor_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = EventLog()
    seen: list[int] = []

    def broken(event: object) -> None:
        raise RuntimeError("a bug in a listener")

    log.listen(broken)
    log.listen(lambda event: seen.append(event.seq))
    stream = log.subscribe(0)
    for n in range(3):
        assert log.emit(idle(n)).seq == n + 1
    assert seen == [1, 2, 3]
    assert [e.seq for e in stream.ready(10)] == [1, 2, 3]
    assert log.listener_failures == 3
    assert "a bug in a listener" in caplog.text


async def test_ready_takes_what_is_there_without_waiting_and_reports_a_gap() -> None:
    log = EventLog(capacity=4)
    sub = log.subscribe(since=0)
    assert sub.ready(10) == []
    for n in range(6):
        log.emit(idle(n))
    batch = sub.ready(3)
    assert isinstance(batch[0], Gap) and (batch[0].first, batch[0].last) == (1, 2)
    assert [e.seq for e in batch[1:]] == [3, 4]
    assert [e.seq for e in sub.ready(10)] == [5, 6]


async def test_agent_output_past_the_budget_is_dropped_oldest_first_with_a_gap() -> None:
    log = EventLog(capacity=64, output_budget=10_000)
    sub = log.subscribe(since=0)
    log.emit(idle(0))
    for n in range(5):  # 5 x 4 KB of text: only the last two fit the budget
        log.emit(AgentOutput(agent="a", offset=n * 4000, data="x" * 4000))
    log.emit(idle(1))  # no output: costs nothing
    assert log.first_seq == 5
    assert [type(e).__name__ for e in log.since(0)] == ["AgentOutput", "AgentOutput", "AgentIdle"]
    first = await sub.__anext__()
    assert isinstance(first, Gap) and (first.first, first.last) == (1, 4)
    assert [(await sub.__anext__()).seq for _ in range(3)] == [5, 6, 7]


async def test_the_budget_counts_the_memory_text_takes() -> None:
    log = EventLog(capacity=64, output_budget=10_000)
    for n in range(3):  # 3,000 ASCII characters are 3 KB: three fit
        log.emit(AgentOutput(agent="a", offset=n * 3000, data="x" * 3000))
    assert len(log.since(0)) == 3
    for n in range(3):  # 3,000 box drawing characters: 6 KB, and 9 KB of UTF-8 once sent
        log.emit(AgentOutput(agent="a", offset=n * 9000, data="─" * 3000))
    assert [e.seq for e in log.since(0)] == [6]
    assert text_bytes("─" * 3000) > 15_000 and text_bytes("x" * 3000) < 3_100


async def test_one_event_larger_than_the_budget_is_still_kept() -> None:
    log = EventLog(capacity=8, output_budget=100)
    log.emit(AgentOutput(agent="a", offset=0, data="y" * 500))
    assert [e.seq for e in log.since(0)] == [1]
    log.emit(AgentOutput(agent="a", offset=500, data="z"))
    assert [e.seq for e in log.since(0)] == [2]


async def test_the_budget_counts_what_the_ring_overwrote() -> None:
    log = EventLog(capacity=4, output_budget=10_000)
    for n in range(20):  # each 3,000: four of them would pass the budget, three fit
        log.emit(AgentOutput(agent="a", offset=n * 3000, data="w" * 3000))
    assert [e.seq for e in log.since(0)] == [18, 19, 20]
    for n in range(8):
        log.emit(idle(n))  # the ring turns over: no output left in it
    assert log.first_seq == 25 and len(log.since(0)) == 4


def redraw(n: int) -> str:
    """An agent CLI's redraw: cursor moves, colours, a spinner and a box, as they come."""
    spinner = "⠋⠙⠹⠸⠼⠴⠦⠧"[n % 8]
    return (
        f"\x1b[?2026h\x1b[{n % 40 + 1};1H\x1b[38;5;208m{spinner}\x1b[0m Thinking… ({n} s)"
        f"\x1b[2;1H╭{'─' * 70}╮\x1b[3;1H│ > \x1b[1mfix the tests\x1b[0m 🙂{' ' * 50}│"
        "\x1b[?2026l"
    )


async def test_older_output_is_kept_compressed_and_replays_as_it_was_emitted() -> None:
    log = EventLog(capacity=4096, hot_budget=64_000)
    emitted: list[Event] = []
    for n in range(2000):
        emitted.append(log.emit(AgentOutput(agent=f"a{n % 3}", offset=n, data=redraw(n))))
        if n % 100 == 0:
            emitted.append(log.emit(idle(n)))
    as_strings = sum(text_bytes(e.data) for e in emitted if isinstance(e, AgentOutput))
    assert as_strings > 1_000_000 and log.output_bytes < as_strings / 10
    assert log.since(0) == emitted  # every field: seq, time, agent, offset and the text
    late = log.subscribe(since=0)  # a subscriber reading from the start gets the same
    assert late.ready(5000) == emitted
    assert isinstance(log._ring[1], PackedOutput)  # the test did pack
    log._texts.clear()  # finding the newest event of a kind (a subscription's replay end)
    last_idle = max(e.seq for e in emitted if isinstance(e, AgentIdle))
    assert log.newest(0, lambda e: isinstance(e, AgentIdle)) == last_idle
    assert log.newest(0, lambda e: e.seq == 3) == 3 and log._texts == []  # unpacks nothing


def out(n: int) -> AgentOutput:
    return AgentOutput(agent="a", offset=n * 10, data="x" * 10)  # 59 bytes as a string


async def test_the_ring_turns_over_a_block_one_event_at_a_time() -> None:
    log = EventLog(capacity=8, hot_budget=200)
    emitted = [log.emit(e) for e in (out(1), idle(2), out(3), out(4), out(5))]  # 236 bytes:
    block = log._ring[1]  # 1, 3 and 4 are packed
    assert isinstance(block, PackedOutput) and list(block.seqs) == [1, 3, 4]
    held = log.output_bytes
    sub = log.subscribe(since=0)
    for n in range(6, 10):  # event 9 takes event 1's place: 3 and 4 are still there
        log.emit(idle(n))
    first = await sub.__anext__()
    assert isinstance(first, Gap) and (first.first, first.last) == (1, 1)
    assert [await sub.__anext__() for _ in range(4)] == emitted[1:]
    assert [e.seq for e in log.since(0)] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert log.output_bytes == held  # the block is held until its last event goes
    for n in range(3):  # 10, 11 and 12 take the places of 2, 3 and 4: the block goes
        log.emit(idle(n))
    assert log.output_bytes == held - block.size
    for n in range(8):  # the ring turns over: no output left in it
        log.emit(idle(n))
    assert log.output_bytes == 0 and len(log.since(0)) == 8


async def test_the_newest_event_stays_even_when_its_block_is_past_the_budget() -> None:
    log = EventLog(capacity=8, output_budget=100, hot_budget=100)
    for event in (out(1), idle(2), out(3)):  # 118 bytes: 1 and 3 are packed
        log.emit(event)
    assert log._ring[3] is log._ring[1] and [e.seq for e in log.since(0)] == [1, 2, 3]
    log.emit(out(4))
    assert [e.seq for e in log.since(0)] == [4]


async def test_the_budget_counts_blocks_and_drops_the_oldest_whole() -> None:
    log = EventLog(capacity=64, output_budget=3_000, hot_budget=1)
    for n in range(20):  # each a block of its own, with its arrays some 570 bytes: 5 fit
        log.emit(AgentOutput(agent="a", offset=n, data=f"{n**17:x}" * 20))
    assert [e.seq for e in log.since(0)] == [16, 17, 18, 19, 20]
    assert log.output_bytes <= 3_000


TEXT = st.text(st.sampled_from("ab \x1b[m─⠋🙂\n"), max_size=200)
OPS = st.lists(st.one_of(TEXT, st.none(), st.integers(1, 40)), max_size=120)


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 24),
    output_budget=st.integers(0, 3_000),
    hot_budget=st.integers(0, 1_500),
    ops=OPS,
)
def test_the_ring_replays_an_unbroken_tail_of_what_was_emitted(
    capacity: int, output_budget: int, hot_budget: int, ops: list[str | int | None]
) -> None:
    """Whatever is emitted (text: an output event; None: another event) and whenever a
    subscriber reads (a number: up to that many events), the log keeps the newest events
    unbroken and equal to what was emitted, within its budget, and a subscriber gets each
    event once, in order, or a gap naming exactly those it missed."""
    log = EventLog(capacity=capacity, output_budget=output_budget, hot_budget=hot_budget)
    emitted: list[Event] = []
    sub = log.subscribe(since=0)
    picky = log.subscribe(since=0, wanted=lambda e: isinstance(e, AgentIdle))
    read: list[int] = []
    picked: set[int] = set()  # what the picky one got, or was told it missed
    for op in ops:
        if isinstance(op, int):
            for event in picky.ready(op):
                if isinstance(event, Gap):
                    picked.update(range(event.first, event.last + 1))
                else:
                    assert isinstance(event, AgentIdle) and event == emitted[event.seq - 1]
                    assert event.seq not in picked
                    picked.add(event.seq)
            idle_seen = {e.seq for e in emitted[: picky.cursor - 1] if isinstance(e, AgentIdle)}
            assert idle_seen <= picked
            for event in sub.ready(op):
                if isinstance(event, Gap):
                    read.extend(range(event.first, event.last + 1))
                    assert event.last < log.first_seq
                else:
                    assert event == emitted[event.seq - 1]
                    read.append(event.seq)
            assert read == list(range(1, len(read) + 1))
            continue
        if op is None:
            emitted.append(log.emit(idle(len(emitted))))
        else:
            emitted.append(log.emit(AgentOutput(agent="a", offset=len(emitted), data=op)))
        retained = log.since(0)
        assert retained == emitted[log.first_seq - 1 :]
        assert 1 <= len(retained) <= capacity
        output = sum(isinstance(e, AgentOutput) for e in retained)
        if log.output_bytes > output_budget:  # then only the newest event's holder is left
            newest = log._ring[log.last_seq % capacity]
            assert all(
                log._ring[e.seq % capacity] is newest
                for e in retained
                if isinstance(e, AgentOutput)
            ), (output, log.output_bytes)
        if output == 0:
            assert log.output_bytes == 0
        # what the ring holds is what it counts: its events' text, and each block once
        blocks = {id(item): item for item in log._ring if isinstance(item, PackedOutput)}
        hot = sum(text_bytes(item.data) for item in log._ring if isinstance(item, AgentOutput))
        assert (log._hot, log.output_bytes) == (hot, hot + sum(b.size for b in blocks.values()))
        assert sum(log._sizes) == log.output_bytes
        assert all(log.first_seq <= b.last for b in blocks.values())
        for since in (0, len(emitted) // 2):
            newest_output = max(
                (e.seq for e in retained if isinstance(e, AgentOutput) and e.seq > since),
                default=0,
            )
            assert log.newest(since, lambda e: isinstance(e, AgentOutput)) == newest_output


async def test_a_filtered_subscription_waits_for_what_it_wants_and_unpacks_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = EventLog(capacity=64, hot_budget=100)  # output is packed as it comes
    quiet = log.subscribe(since=0, wanted=lambda e: not isinstance(e, AgentOutput))
    emitted = [log.emit(out(n) if n % 3 else idle(n)) for n in range(12)]
    assert isinstance(log._ring[2], PackedOutput)
    assert quiet.ready(100) == [e for e in emitted if isinstance(e, AgentIdle)]
    assert log._texts == []  # no output was unpacked to be filtered out
    got: list[Event] = []

    async def follow() -> None:
        got.append(await quiet.__anext__())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.sleep(1)
        log.emit(out(13))  # not wanted: the subscriber goes on waiting
        await trio.sleep(1)
        assert got == []
        wanted = log.emit(idle(14))
    assert got == [wanted]


async def test_a_filtered_subscription_is_told_of_a_gap() -> None:
    log = EventLog(capacity=4)
    none = log.subscribe(since=0, wanted=lambda e: False)
    for n in range(6):
        log.emit(idle(n))
    gap = none.ready(10)
    assert len(gap) == 1 and isinstance(gap[0], Gap) and (gap[0].first, gap[0].last) == (1, 2)
    assert none.ready(10) == [] and none.cursor == 7


class _Steps(trio.abc.Instrument):
    """Counts the scheduler's steps of each task."""

    def __init__(self) -> None:
        self.steps: dict[trio.lowlevel.Task, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] = self.steps.get(task, 0) + 1


async def test_a_waiting_filtered_subscription_is_not_woken_by_what_it_does_not_want(
    autojump_clock: trio.abc.Clock,
) -> None:
    # An agent's own subscription, while other agents are busy: their output must cost it
    # no wake-up, and must not push it off the ring (no gap) however much of it comes.
    log = EventLog(capacity=8)
    mine = log.subscribe(wanted=lambda e: getattr(e, "agent", None) == "mine")
    steps = _Steps()
    got: list[Event] = []

    async def follow() -> None:
        got.append(await mine.__anext__())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.sleep(1)  # it is waiting
        (task,) = (t for t in nursery.child_tasks)
        trio.lowlevel.add_instrument(steps)
        try:
            for n in range(100):  # twelve times what the ring holds
                log.emit(AgentOutput(agent="busy", offset=n, data="."))
                await trio.sleep(0.01)
            assert steps.steps.get(task, 0) == 0
            assert mine.cursor == log.last_seq + 1  # caught up, without running
            wanted = log.emit(AgentIdle(agent="mine"))
        finally:
            trio.lowlevel.remove_instrument(steps)
    assert got == [wanted]  # no gap before it
    assert log._waiting == {}  # no longer waiting


async def test_a_cancelled_wait_of_a_filtered_subscription_leaves_no_trace(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = EventLog()
    picky = log.subscribe(wanted=lambda e: False)
    with trio.move_on_after(1):
        await picky.__anext__()
    assert log._waiting == {}
    log.emit(idle(1))  # nothing waits to be woken, and nothing fails
    assert picky.ready(10) == [] and picky.cursor == 2


async def test_a_listener_that_emits_does_not_strand_a_waiting_filtered_subscription(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = EventLog()
    mine = log.subscribe(wanted=lambda e: getattr(e, "agent", None) == "mine")

    def answer(event: Event) -> None:  # emits while the first event is being emitted
        if getattr(event, "agent", None) == "busy":
            log.emit(AgentIdle(agent="mine"))

    log.listen(answer)
    got: list[Event] = []

    async def follow() -> None:
        got.append(await mine.__anext__())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.sleep(1)
        log.emit(AgentOutput(agent="busy", offset=0, data="."))
    assert [(type(e), e.seq) for e in got] == [(AgentIdle, 2)]


async def test_a_failing_filter_stops_neither_emit_nor_the_others_and_reaches_its_reader(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = EventLog()

    def broken(event: Event) -> bool:
        raise RuntimeError("a filter's bug")

    bad = log.subscribe(wanted=broken)
    good = log.subscribe(wanted=lambda e: isinstance(e, AgentIdle))
    errors: list[BaseException] = []
    got: list[Event] = []

    async def read_bad() -> None:
        try:
            await bad.__anext__()
        except RuntimeError as exc:
            errors.append(exc)

    async def read_good() -> None:
        got.append(await good.__anext__())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_bad)
        nursery.start_soon(read_good)
        await trio.sleep(1)
        emitted = log.emit(idle(1))  # does not raise
    assert got == [emitted]
    assert [str(e) for e in errors] == ["a filter's bug"]
