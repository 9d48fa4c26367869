"""Spawns that end before their worker said hello: released (as at a broker shutdown), timed
out or cancelled, with the hello coming late, while the broker stops the worker. Real
processes."""

from __future__ import annotations

import sys

import pytest
import trio
from helpers import pid_alive, wait_until

from trio_relay import SpawnFailed, open_broker
from trio_relay.wire import AgentSpawned, SpawnFailedEvent

# Says hello only when the broker asks it to shut down, then stays until its stdin ends.
LATE_HELLO = [
    sys.executable,
    "-c",
    "import os, sys\n"
    "from trio_relay.wire import PROTOCOL_VERSION, WorkerHello, encode\n"
    "for line in sys.stdin.buffer:\n"
    "    if b'shutdown' in line:\n"
    "        hello = WorkerHello(protocol=PROTOCOL_VERSION, worker='late', pid=os.getpid())\n"
    "        sys.stdout.buffer.write(encode(hello)); sys.stdout.flush()\n",
]


async def test_spawns_in_flight_at_a_shutdown_fail_with_a_reason() -> None:
    failures: dict[str, BaseException] = {}

    async def spawn(name: str) -> None:
        with pytest.raises(SpawnFailed) as info:
            await broker.spawn(name, LATE_HELLO, hello_timeout=30)
        failures[name] = info.value

    with trio.fail_after(20):
        async with open_broker() as broker, trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(spawn, f"a{i}")
            await wait_until(lambda: len(broker.agents()) == 5)
            await broker.shutdown()
    assert sorted(failures) == [f"a{i}" for i in range(5)]
    assert all("released before it said hello" in str(e) for e in failures.values())


@pytest.mark.parametrize(
    ("how", "reason"),
    [("released", "released before it said hello"), ("timed out", "did not say hello within")],
)
async def test_a_hello_that_comes_while_the_worker_is_stopped_is_too_late(
    how: str, reason: str
) -> None:
    """The hello arrives after the spawn gave up on it: the spawn fails with its reason
    and one spawn_failed event, and the worker is never announced as spawned."""
    with trio.fail_after(20):
        async with open_broker() as broker:
            async with trio.open_nursery() as nursery:

                async def spawn() -> None:
                    with pytest.raises(SpawnFailed, match=reason):
                        await broker.spawn(
                            "late", LATE_HELLO, hello_timeout=0.5 if how == "timed out" else 30
                        )

                nursery.start_soon(spawn)
                if how == "released":
                    await wait_until(lambda: bool(broker.agents()))
                    await broker.release("late")
            events = [e for e in broker.events.since(0) if getattr(e, "agent", None) == "late"]
            assert not any(isinstance(e, AgentSpawned) for e in events), events
            (failed,) = [e for e in events if isinstance(e, SpawnFailedEvent)]
            assert reason in failed.error
            assert broker.agent("late").state == "failed"
            proc = broker.supervisor.get("late").proc
            assert proc is not None and not pid_alive(proc.pid)


async def test_a_hello_after_the_spawn_was_cancelled_is_too_late() -> None:
    with trio.fail_after(20):
        async with open_broker() as broker:
            with trio.move_on_after(0.3):
                await broker.spawn("late", LATE_HELLO, hello_timeout=30)
            events = [e for e in broker.events.since(0) if getattr(e, "agent", None) == "late"]
            assert not any(isinstance(e, AgentSpawned) for e in events), events
            (failed,) = [e for e in events if isinstance(e, SpawnFailedEvent)]
            assert "the spawn was cancelled before the worker said hello" in failed.error
