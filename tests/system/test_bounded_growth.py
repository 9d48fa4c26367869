"""A broker that runs for weeks does not grow without limit: ended agents, store rows, frames
for a worker that does not read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from helpers import REFERENCE_WORKER, wait_until

from trio_relay import RequestTimeout, open_broker

DEAF = [  # says hello, then never reads its stdin
    sys.executable,
    "-c",
    'import os, time; os.write(1, b\'{"kind":"hello","protocol":1}\\n\'); time.sleep(300)',
]


async def test_ended_agents_are_kept_up_to_the_history_bound() -> None:
    async with open_broker(history=5) as broker:
        for i in range(20):
            await broker.spawn(f"agent-{i}", REFERENCE_WORKER)
            await broker.send(f"agent-{i}", "hello", sender="test")
            await broker.release(f"agent-{i}")
        names = [a.name for a in broker.agents()]
        assert names == [f"agent-{i}" for i in range(15, 20)]
        assert broker.delivery_engine.statistics()["mailboxes"] <= 5


async def test_the_broker_prunes_on_its_own_after_the_retention(tmp_path: Path) -> None:
    async with open_broker(tmp_path / "state", retention=0.2) as broker:
        await broker.spawn("w", REFERENCE_WORKER)
        receipt = await broker.send("w", "hello", sender="test")
        assert (await broker.wait_delivery(receipt.delivery_id, timeout=10)).state == "verified"
        with trio.fail_after(10):
            while await broker.deliveries():
                await trio.sleep(0.05)


async def test_timed_out_requests_leave_nothing_queued_for_a_worker_that_does_not_read() -> None:
    async with open_broker(request_timeout=0.1) as broker:
        await broker.spawn("deaf", DEAF)
        writer = broker.supervisor.running("deaf").writer
        for _ in range(50):
            with pytest.raises(RequestTimeout):
                await broker.write_input("deaf", "x" * 100_000)
            with pytest.raises(RequestTimeout):
                await broker.request_worker("deaf", "ping", {"data": "y" * 50_000}, timeout=0.05)
        # Only the frame whose writing began is still queued (a pipe holds 64 KiB).
        assert writer.queued <= 100_100
        await broker.release("deaf")


async def test_a_release_during_a_flood_of_spawns_leaves_no_record_behind() -> None:
    async with open_broker(history=3) as broker:
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(broker.spawn, f"f{i}", REFERENCE_WORKER)
        await wait_until(lambda: len(broker.agents()) == 10)
        await broker.shutdown()
        assert len(broker.agents()) == 3
