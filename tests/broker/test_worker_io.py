"""The frame writer and the restart arithmetic, without a supervisor."""

from __future__ import annotations

import os
import random

import pytest
import trio

from trio_relay.broker.process import ExitStatus, StderrRing
from trio_relay.broker.restart import RestartPolicy, RestartTracker
from trio_relay.broker.writer import FrameWriter
from trio_relay.errors import ChannelClosed


async def drain(read_fd: int, total: int) -> bytes:
    received = bytearray()
    os.set_blocking(read_fd, False)
    while len(received) < total:
        await trio.lowlevel.wait_readable(read_fd)
        received.extend(os.read(read_fd, 65536))
    return bytes(received)


async def test_frames_go_out_in_order_through_a_full_pipe() -> None:
    read_fd, write_fd = os.pipe()
    writer = FrameWriter(write_fd)
    frames = [b"%05d:" % i + b"x" * 3000 + b"\n" for i in range(200)]  # ~600 KB > a pipe

    async def send_all() -> None:
        for frame in frames:
            await writer.send(frame)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        nursery.start_soon(send_all)
        received = await drain(read_fd, sum(map(len, frames)))
        writer.close()
    os.close(read_fd)
    assert received == b"".join(frames)


async def test_a_sender_cancelled_while_waiting_drops_its_frame_unless_begun() -> None:
    read_fd, write_fd = os.pipe()
    writer = FrameWriter(write_fd)
    filler = b"f" * 65535 + b"\n"
    frames = [b"%03d" % i * 1000 + b"\n" for i in range(30)]
    scopes = [trio.CancelScope() for _ in frames]
    outcomes: dict[bytes, str] = {}

    async def send(scope: trio.CancelScope, frame: bytes) -> None:
        with scope:
            await writer.send(frame)
            outcomes[frame] = "sent"
            return
        outcomes[frame] = "cancelled"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await writer.send(filler)  # nobody reads yet: the pipe is now full
        # The first frame's batch is taken for writing (it waits for the pipe); the others
        # then wait in the next batch, not taken yet. Started all at once, they could all
        # land in the first batch (Trio's scheduling order varies) and none be droppable.
        nursery.start_soon(send, scopes[0], frames[0])
        await trio.testing.wait_all_tasks_blocked()
        for scope, frame in zip(scopes[1:], frames[1:]):
            nursery.start_soon(send, scope, frame)
        await trio.testing.wait_all_tasks_blocked()
        for scope in scopes[::3]:
            scope.cancel()
        received = bytearray()
        os.set_blocking(read_fd, False)
        while writer.queued or len(outcomes) < len(frames):  # read until nothing is left
            with trio.move_on_after(0.01):
                await trio.lowlevel.wait_readable(read_fd)
            try:
                received.extend(os.read(read_fd, 65536))
            except BlockingIOError:
                await trio.testing.wait_all_tasks_blocked()
        writer.close()
    while True:  # what the last writes left in the pipe after the loop saw the queue empty
        try:
            chunk = os.read(read_fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        received.extend(chunk)
    os.close(read_fd)
    lines = bytes(received).split(b"\n")[:-1]
    assert lines[0] == filler[:-1]
    # Every frame sent went out whole and once; a cancelled one not yet taken for writing
    # never reached the worker; one taken already was written whole, never cut.
    sent = sorted(f[:-1] for f, how in outcomes.items() if how == "sent")
    assert sorted(set(lines[1:])) == sorted(lines[1:])
    assert set(sent) <= set(lines[1:]) <= {f[:-1] for f in frames}
    assert len(lines) - 1 < len(frames), "no cancelled frame was dropped"


async def test_a_sender_cancelled_after_a_partial_write_still_gets_its_frame_out_whole() -> None:
    read_fd, write_fd = os.pipe()
    writer = FrameWriter(write_fd)
    frame = b"p" * 100_000 + b"\n"  # more than the pipe holds: the first write is partial
    then = b"next\n"
    scope = trio.CancelScope()

    async def send() -> None:
        with scope:
            await writer.send(frame)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()  # begun, the rest queued; run() not started
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(writer.run)
        nursery.start_soon(writer.send, then)
        received = bytearray()
        with trio.fail_after(5):
            while not received.endswith(then):
                await trio.lowlevel.wait_readable(read_fd)
                received.extend(os.read(read_fd, 65536))
        writer.close()
    os.close(read_fd)
    assert bytes(received) == frame + then


async def test_frames_beyond_the_bound_are_refused_not_queued() -> None:
    from trio_relay.errors import InputQueueFull

    read_fd, write_fd = os.pipe()
    writer = FrameWriter(write_fd, max_queued=10_000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await writer.send(b"f" * 65535 + b"\n")  # the pipe is full
        for _ in range(3):
            writer.send_nowait(b"x" * 3000 + b"\n")
        with pytest.raises(InputQueueFull, match="not reading its input"):
            writer.send_nowait(b"x" * 3000 + b"\n")
        with pytest.raises(InputQueueFull):
            await writer.send(b"y" * 3000 + b"\n")
        assert writer.queued == 3 * 3001
        await drain(read_fd, 65536 + 3 * 3001)
        await writer.send(b"ok\n")  # room again once the worker reads
        writer.close()
    os.close(read_fd)


async def test_a_broken_pipe_is_channel_closed() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    writer = FrameWriter(write_fd)
    with pytest.raises(ChannelClosed, match="Broken pipe"):
        await writer.send(b"x\n")
    with pytest.raises(ChannelClosed):
        await writer.send(b"y\n")
    writer.close()


async def test_senders_waiting_on_a_closed_writer_get_channel_closed() -> None:
    read_fd, write_fd = os.pipe()
    writer = FrameWriter(write_fd)
    failures: list[Exception] = []

    async def send(frame: bytes) -> None:
        try:
            await writer.send(frame)
        except ChannelClosed as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        for _ in range(10):  # nobody reads: the pipe fills and senders wait
            nursery.start_soon(send, b"z" * 65536)
        await trio.testing.wait_all_tasks_blocked()
        writer.close()
    os.set_blocking(read_fd, False)
    written = 0
    while True:
        try:
            chunk = os.read(read_fd, 1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        written += len(chunk)
    os.close(read_fd)
    # Each sender either got its whole frame into the pipe or heard ChannelClosed; none hang.
    assert len(failures) == 10 - written // 65536


def test_exit_status_descriptions() -> None:
    assert ExitStatus.from_returncode(-9).describe() == "killed by SIGKILL"
    assert ExitStatus.from_returncode(3).describe() == "exited with code 3"
    assert not ExitStatus(0, None).failed and ExitStatus(None, 15).failed


def test_stderr_ring_keeps_the_last_lines_bounded() -> None:
    ring = StderrRing(max_lines=3, max_line=10)
    ring.feed(b"one\ntwo\nthr")
    ring.feed(b"ee\nfour\n" + b"y" * 50)
    lines = ring.lines()
    assert lines[:2] == ["three", "four"] and lines[2].startswith("yyyyyyyyyy")


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    policy = RestartPolicy("on-failure", initial_delay=1, max_delay=8, jitter=0.25)
    tracker = RestartTracker(policy, random.Random(1))
    delays = [tracker.next_delay(ran_for=0) for _ in range(6)]
    for delay, base in zip(delays, [1, 2, 4, 8, 8, 8]):
        assert base * 0.75 <= delay <= base


def test_backoff_gives_up_after_max_attempts_and_resets_after_a_stable_run() -> None:
    policy = RestartPolicy("always", initial_delay=1, max_attempts=2, stable_after=60, jitter=0)
    tracker = RestartTracker(policy)
    assert tracker.next_delay(0) == 1 and tracker.next_delay(0) == 2
    assert tracker.next_delay(0) is None
    assert tracker.next_delay(ran_for=61) == 1  # a stable run starts the count again


@pytest.mark.parametrize(
    ("mode", "status", "intended", "restart"),
    [
        ("never", ExitStatus(1, None), False, False),
        ("on-failure", ExitStatus(1, None), False, True),
        ("on-failure", ExitStatus(None, 9), False, True),
        ("on-failure", ExitStatus(0, None), False, False),
        ("on-failure", None, False, True),
        ("always", ExitStatus(0, None), False, True),
        ("always", ExitStatus(1, None), True, False),
    ],
)
def test_which_exits_call_for_a_restart(
    mode: str, status: ExitStatus | None, intended: bool, restart: bool
) -> None:
    assert RestartPolicy(mode).wants_restart(status, intended) is restart  # type: ignore[arg-type]


def test_bad_restart_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        RestartPolicy("sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RestartPolicy(jitter=1.5)
