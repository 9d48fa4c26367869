"""Durable delivery through a real broker, real reference workers and a real SQLite file:
crashes, restarts, dead letters, a locked store, and a broker killed with SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import trio
from helpers import REFERENCE_WORKER, SUPPORT, kill_and_reap, pid_alive, wait_until

from trio_relay import RestartPolicy, WorkerNotFound, open_broker
from trio_relay.broker.delivery import DeliveryPolicy
from trio_relay.errors import StoreError
from trio_relay.wire import (
    AgentSpawned,
    DeadLetterEvent,
    DeliveryFailedEvent,
    DeliveryRequeuedEvent,
    StoreErrorEvent,
)
from trio_relay.wire.lines import LineSplitter

DRIVER = SUPPORT / "delivery_driver.py"
FAST_RESTART = RestartPolicy("on-failure", initial_delay=0.05, jitter=0)


async def received(broker, agent: str = "w") -> dict:  # type: ignore[no-untyped-def]
    return await broker.request_worker(agent, "received")  # type: ignore[no-any-return]


async def test_an_agent_sends_to_another_by_name() -> None:
    async with open_broker() as broker:
        await broker.spawn("alice", REFERENCE_WORKER)
        await broker.spawn("bob", REFERENCE_WORKER)
        receipt = await broker.send("bob", "hi bob", sender="alice", thread="t1")
        with trio.fail_after(10):
            info = await broker.wait_delivery(receipt.delivery_id, timeout=10)
        assert (info.state, info.verification, info.sender, info.thread) == (
            "verified",
            "echo",
            "alice",
            "t1",
        )
        assert await received(broker, "bob") == {
            "deliveries": [receipt.delivery_id],
            "senders": ["alice"],
            "bodies": ["hi bob"],
        }
        with pytest.raises(WorkerNotFound):
            await broker.send("carol", "nobody there", sender="alice")


async def test_a_preamble_follows_the_first_message_of_each_run(tmp_path: Path) -> None:
    async with open_broker(tmp_path / "state") as broker:
        await broker.spawn("w", REFERENCE_WORKER, restart=FAST_RESTART, preamble="(tools!)")
        await broker.spawn("plain", REFERENCE_WORKER)
        for body in ("one", "two"):
            done = await broker.wait_delivery(
                (await broker.send("w", body, sender="me")).delivery_id, 10
            )
            assert done.body == body  # the stored message is as it was sent
        plain = await broker.send("plain", "one", sender="me")
        await broker.wait_delivery(plain.delivery_id, 10)
        assert (await received(broker))["bodies"] == ["one\n\n(tools!)", "two"]
        assert (await received(broker, "plain"))["bodies"] == ["one"]
        # A new run (the worker was killed, and restarted) gets it again.
        pid = broker.agent("w").pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: broker.agent("w").pid not in (None, pid), timeout=20)
        await wait_until(lambda: broker.agent("w").state == "running", timeout=20)
        again = await broker.send("w", "three", sender="me")
        await broker.wait_delivery(again.delivery_id, 20)
        assert (await received(broker))["bodies"] == ["three\n\n(tools!)"]


async def test_the_recipient_crashes_mid_delivery_and_gets_it_after_its_restart(
    tmp_path: Path,
) -> None:
    argv = [*REFERENCE_WORKER, "--crash-on-deliver", str(tmp_path / "crashed")]
    async with open_broker(tmp_path / "state") as broker:
        await broker.spawn("w", argv, restart=FAST_RESTART)
        receipt = await broker.send("w", "survive this", sender="me")
        with trio.fail_after(20):
            info = await broker.wait_delivery(receipt.delivery_id, timeout=20)
        assert info.state == "verified" and info.attempts == 2
        assert (tmp_path / "crashed").exists()  # the first run did crash on it
        (requeued,) = [e for e in broker.events.since(0) if isinstance(e, DeliveryRequeuedEvent)]
        assert requeued.delivery_id == receipt.delivery_id
        assert "exited with code 3" in requeued.reason
        respawn = [e for e in broker.events.since(requeued.seq) if isinstance(e, AgentSpawned)]
        assert respawn and respawn[0].attempt == 1
        assert (await received(broker))["deliveries"] == [receipt.delivery_id]


async def test_the_recipient_crashes_and_will_not_restart_so_each_delivery_fails(
    tmp_path: Path,
) -> None:
    argv = [*REFERENCE_WORKER, "--crash-on-deliver", str(tmp_path / "crashed")]
    async with open_broker(tmp_path / "state") as broker:
        await broker.spawn("w", argv, restart=RestartPolicy("never"))
        await broker.set_mode("w", "hold")  # both go to the worker at once on the flush
        receipts = [await broker.send("w", f"m{i}", sender="me") for i in range(2)]
        assert await broker.flush("w") == 2
        with trio.fail_after(20):
            infos = [await broker.wait_delivery(r.delivery_id, timeout=20) for r in receipts]
        for info in infos:
            assert info.state == "failed"
            assert (
                "exited with code 3" in info.reason and "restart policy is 'never'" in info.reason
            )
        failed = [e for e in broker.events.since(0) if isinstance(e, DeliveryFailedEvent)]
        assert sorted(e.delivery_id for e in failed) == sorted(r.delivery_id for r in receipts)


async def test_dead_letters_are_listed_and_redelivered(tmp_path: Path) -> None:
    policy = DeliveryPolicy(ack_timeout=0.2, max_attempts=2)
    argv = [*REFERENCE_WORKER, "--ignore-deliveries", "2"]
    async with open_broker(tmp_path / "state", delivery=policy) as broker:
        await broker.spawn("w", argv)
        receipt = await broker.send("w", "anyone there?", sender="me")
        with trio.fail_after(20):
            dead = await broker.wait_delivery(receipt.delivery_id, timeout=20)
        assert dead.state == "dead_letter" and dead.attempts == 2
        assert "no acknowledgement from 'w'" in dead.last_error
        (event,) = [e for e in broker.events.since(0) if isinstance(e, DeadLetterEvent)]
        assert event.error == dead.last_error
        assert [d.delivery_id for d in await broker.dead_letters()] == [receipt.delivery_id]

        await broker.redeliver(receipt.delivery_id)
        with trio.fail_after(20):
            done = await broker.wait_delivery(receipt.delivery_id, timeout=20)
        assert done.state == "verified"
        assert await broker.dead_letters() == []
        assert (await received(broker))["deliveries"] == [receipt.delivery_id]


async def test_a_store_write_failure_is_an_error_and_an_event_and_loses_nothing(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    async with open_broker(state, busy_timeout=0.2) as broker:
        await broker.spawn("w", REFERENCE_WORKER)
        await broker.set_mode("w", "hold")
        kept = await broker.send("w", "committed before", sender="me")
        other = sqlite3.connect(state / "relay.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # someone else holds the database's write lock
        try:
            with trio.fail_after(10):
                with pytest.raises(StoreError, match="database is locked"):
                    await broker.send("w", "refused", sender="me")
        finally:
            other.execute("ROLLBACK")
            other.close()
        (event,) = [e for e in broker.events.since(0) if isinstance(e, StoreErrorEvent)]
        assert "database is locked" in event.error and "queue a delivery for 'w'" in event.operation
        assert [d.delivery_id for d in await broker.pending("w")] == [kept.delivery_id]
        later = await broker.send("w", "after the lock", sender="me")
    async with open_broker(state) as broker:
        assert [d.body for d in await broker.pending("w")] == ["committed before", "after the lock"]
        assert later.delivery_id in [d.delivery_id for d in await broker.deliveries("w")]


async def test_graceful_shutdown_keeps_pending_deliveries_for_the_next_start(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    async with open_broker(state) as broker:
        await broker.spawn("w", REFERENCE_WORKER, restart=FAST_RESTART)
        await broker.spawn("gone", REFERENCE_WORKER)
        done = await broker.send("w", "before", sender="me")
        with trio.fail_after(10):
            await broker.wait_delivery(done.delivery_id, timeout=10)
        await broker.set_mode("w", "hold")
        pending = [(await broker.send("w", f"m{i}", sender="me")).delivery_id for i in range(3)]
        await broker.set_mode("gone", "hold")
        orphan = await broker.send("gone", "nobody will take this", sender="me")
        await broker.release("gone")  # released on request: its open deliveries fail
        with trio.fail_after(10):
            failed = await broker.wait_delivery(orphan.delivery_id, timeout=10)
        assert (failed.state, failed.reason) == ("failed", "agent 'gone' was released")
        (event,) = [e for e in broker.events.since(0) if isinstance(e, DeliveryFailedEvent)]
        assert (event.delivery_id, event.reason) == (orphan.delivery_id, failed.reason)
        first_pids = [a.pid for a in broker.agents() if a.pid]
    assert not any(pid_alive(p) for p in first_pids)

    async with open_broker(state) as broker:
        assert [a.name for a in broker.agents()] == ["w"]  # the released one is not respawned
        assert broker.mode("w") == "hold"
        assert [d.delivery_id for d in await broker.pending("w")] == pending
        await broker.set_mode("w", "auto_inject")
        with trio.fail_after(10):
            for delivery_id in pending:
                assert (await broker.wait_delivery(delivery_id, timeout=10)).state == "verified"
        assert (await received(broker))["deliveries"] == pending  # in order, and not "before"


async def test_a_broker_killed_with_sigkill_mid_stream_loses_no_acknowledged_delivery(
    tmp_path: Path,
) -> None:
    state, journal = tmp_path / "state", tmp_path / "journal"
    seed = random.randrange(1 << 30)
    stop_after = random.Random(seed).randint(20, 400)
    acknowledged: list[str] = []
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(DRIVER), str(state), "send", str(journal)],
        stdout=subprocess.PIPE,
    )
    try:
        splitter, first_worker = LineSplitter(), None
        with trio.fail_after(30):
            while len(acknowledged) < stop_after:
                chunk = await proc.stdout.receive_some()  # type: ignore[union-attr]
                assert chunk, "the driver ended early"
                for line in splitter.feed(chunk):
                    message = json.loads(line)  # type: ignore[arg-type]
                    first_worker = message.get("worker", first_worker)
                    if "queued" in message:
                        acknowledged.append(message["queued"])
        proc.kill()  # SIGKILL, mid-stream
        with trio.fail_after(10):
            await proc.wait()
            while chunk := await proc.stdout.receive_some():  # type: ignore[union-attr]
                for line in splitter.feed(chunk):  # acknowledged before it died
                    acknowledged.append(json.loads(line)["queued"])  # type: ignore[arg-type]
    finally:
        await kill_and_reap(proc)
    assert first_worker is not None
    await wait_until(lambda: not pid_alive(first_worker), timeout=10)

    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, str(DRIVER), str(state), "recover"], capture_stdout=True
        )
    result = json.loads(done.stdout)
    states, before = result["states"], set(result["verified_before"])
    context = f"seed {seed}, killed after {len(acknowledged)} acknowledged"
    # The reference worker acknowledges every delivery: each one ends verified.
    assert all(states[d] == "verified" for d in acknowledged), context
    assert all(s == "verified" for s in states.values()), context

    runs: dict[int, list[str]] = {}
    for line in journal.read_text().splitlines():
        pid, delivery_id = line.split()
        runs.setdefault(int(pid), []).append(delivery_id)
    assert set(runs) <= {first_worker, result["worker"]}, context
    for pid, ids in runs.items():  # no worker ever got the same delivery twice
        assert not [d for d, n in Counter(ids).items() if n > 1], context
    again = runs.get(result["worker"], [])
    assert not before & set(again), context  # verified before the kill: never redelivered
    typed = {d for ids in runs.values() for d in ids}
    assert all(d in typed for d, s in states.items() if s == "verified"), context
    assert not pid_alive(first_worker) and not pid_alive(result["worker"])
    print(f"{context}; {len(states)} stored, {len(again)} redelivered after the restart")


def _dies_on_first_message(marker: Path, *, then: str | None, typing: bool = False) -> list[str]:
    """A PTY agent whose program reads one line without echoing it and exits with code 3
    (the message typed, being verified); with ``typing``, it exits after the first 4
    characters (the message still being typed). With ``then``, the next run (after a
    restart) is ``then`` instead."""
    script = "stty -echo; read line; exit 3"
    options = ["--settle", "0.1"]
    if typing:
        script = "stty raw -echo; head -c 4 >/dev/null; exit 3"
        options += ["--chunk", "4", "--key-delay", "0.1"]
    if then is not None:
        script = (
            f'if [ -e "{marker}" ]; then stty sane; exec {then}; fi; touch "{marker}"; {script}'
        )
    return [sys.executable, "-m", "trio_relay.worker.pty", *options, "--", "sh", "-c", script]


@pytest.mark.parametrize("typing", [False, True], ids=["while-verified", "while-typed"])
async def test_a_pty_agent_dying_mid_delivery_gets_it_again_after_its_restart(
    tmp_path: Path, typing: bool
) -> None:
    argv = _dies_on_first_message(tmp_path / "died", then="cat", typing=typing)
    async with open_broker(tmp_path / "state") as broker:
        await broker.spawn("w", argv, restart=FAST_RESTART)
        receipt = await broker.send("w", "survive this", sender="me")
        with trio.fail_after(20):
            info = await broker.wait_delivery(receipt.delivery_id, timeout=20)
        assert (tmp_path / "died").exists()  # the first run did die on it
        # Not "unverified" or "failed" by the dying run: requeued, then typed to the new run.
        assert (info.state, info.verification, info.attempts) == ("verified", "echo", 2)
        (requeued,) = [e for e in broker.events.since(0) if isinstance(e, DeliveryRequeuedEvent)]
        assert requeued.delivery_id == receipt.delivery_id
        assert "exited with code 3" in requeued.reason


async def test_a_pty_agent_dying_mid_delivery_without_restart_fails_it_naming_the_exit(
    tmp_path: Path,
) -> None:
    async with open_broker(tmp_path / "state") as broker:
        await broker.spawn("w", _dies_on_first_message(tmp_path / "died", then=None))
        receipt = await broker.send("w", "into the void", sender="me")
        with trio.fail_after(20):
            info = await broker.wait_delivery(receipt.delivery_id, timeout=20)
        assert info.state == "failed"
        assert "exited with code 3" in info.reason and "restart policy is 'never'" in info.reason
