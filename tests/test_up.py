"""`trio-relay up` as a real process: a real start, a clean stop, and no orphans on SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import trio

from helpers import pid_alive, wait_until
from trio_relay.framing import LineSplitter

UP = [sys.executable, "-m", "trio_relay", "up", "--events-json", "--agent"]


async def start_up(*extra: str) -> tuple[trio.Process, list[dict], trio.abc.ReceiveStream]:
    proc = await trio.lowlevel.open_process(
        [*UP, "second=" + " ".join([sys.executable, "-m", "trio_relay.reference_worker"]), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    return proc, [], proc.stdout  # type: ignore[return-value]


async def read_events_until(stream, events: list[dict], predicate) -> None:  # type: ignore[no-untyped-def]
    """Append the broker's JSON event lines to ``events`` until ``predicate(events)``."""
    splitter = SPLITTERS.setdefault(id(stream), LineSplitter())
    with trio.fail_after(20):
        while not predicate(events):
            chunk = await stream.receive_some()
            if not chunk:
                raise AssertionError(f"broker ended before the expected events: {events}")
            events.extend(json.loads(line) for line in splitter.feed(chunk))  # type: ignore[arg-type]


SPLITTERS: dict[int, LineSplitter] = {}


async def stop(proc: trio.Process) -> None:
    """SIGKILL the broker process (if still running) and reap it."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await proc.stdout.aclose()  # type: ignore[union-attr]


def spawned(events: list[dict]) -> list[dict]:
    return [e for e in events if e["kind"] == "agent_spawned"]


async def test_up_starts_agents_and_stops_them_cleanly_on_sigterm() -> None:
    proc, events, stdout = await start_up()
    try:
        await read_events_until(stdout, events, lambda ev: len(spawned(ev)) == 2)
        pids = [e["pid"] for e in spawned(events)]
        assert all(pid_alive(p) for p in pids)
        proc.send_signal(signal.SIGTERM)
        await read_events_until(
            stdout, events, lambda ev: sum(e["kind"] == "agent_exited" for e in ev) == 2
        )
        with trio.fail_after(20):
            assert await proc.wait() == 0
    finally:
        await stop(proc)
    exits = [e for e in events if e["kind"] == "agent_exited"]
    assert all(e["intended"] for e in exits)
    assert not any(pid_alive(p) for p in pids)


async def test_a_broker_killed_with_sigkill_leaves_no_worker_alive() -> None:
    proc, events, stdout = await start_up()
    try:
        await read_events_until(stdout, events, lambda ev: len(spawned(ev)) == 2)
        pids = [e["pid"] for e in spawned(events)]
    finally:
        await stop(proc)
    await wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=10)
