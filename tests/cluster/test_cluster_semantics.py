"""The delivery engine's guarantees across brokers, in process: two brokers (each with its
own state directory and a real PostgreSQL), their members of one cluster, and real worker
processes. Retries and dead letters, redelivery from another broker, the cap's evictions,
order per agent, and a delivery taken in once however often it is claimed."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest
import trio
from postgres_fixtures import cluster_dsn, postgres_server  # noqa: F401

from trio_relay import Broker, open_broker
from trio_relay.broker.delivery import DeliveryPolicy
from trio_relay.cluster import sql
from trio_relay.cluster.member import ClusterMember
from trio_relay.errors import DeliveryStateError, WorkerNotFound

pytestmark = pytest.mark.timeout(60)

REFERENCE = [sys.executable, "-m", "trio_relay.worker.reference"]


@asynccontextmanager
async def two_brokers(
    dsn: str, root: Path, policy: DeliveryPolicy | None = None
) -> AsyncIterator[tuple[ClusterMember, ClusterMember, Broker]]:
    """Members A and B of the cluster at ``dsn``; B's broker (with ``policy``) is returned
    to spawn agents on."""
    async with (
        open_broker(root / "A") as broker_a,
        open_broker(root / "B", delivery=policy) as broker_b,
        trio.open_nursery() as nursery,
    ):
        a = ClusterMember(broker_a, dsn, "A", lease=2.0)
        b = ClusterMember(broker_b, dsn, "B", lease=2.0)
        await nursery.start(a.run)
        await nursery.start(b.run)
        yield a, b, broker_b
        await broker_a.shutdown()
        await broker_b.shutdown()
        nursery.cancel_scope.cancel()


async def test_a_dead_letter_is_seen_and_redelivered_from_another_broker(
    cluster_dsn: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    policy = DeliveryPolicy(ack_timeout=0.2, max_attempts=2)
    async with two_brokers(cluster_dsn, tmp_path, policy) as (a, _b, broker_b):
        await broker_b.spawn("bob", [*REFERENCE, "--ignore-deliveries", "2"])
        receipt = await a.send("bob", "are you there?", sender="user", thread=None)
        dead = await a.wait(receipt.delivery_id, 20)
        assert dead.state == "dead_letter"
        assert dead.attempts == 2 and dead.last_error
        listed = await a.deliveries(None, ("dead_letter",), 10, None)
        assert [d.delivery_id for d in listed] == [receipt.delivery_id]

        await a.redeliver(receipt.delivery_id)  # the worker takes the third hand-over
        again = await a.wait(receipt.delivery_id, 20)
        assert again.state == "verified" and again.verification == "echo"
        with pytest.raises(DeliveryStateError):
            await a.redeliver(receipt.delivery_id)


async def test_order_per_agent_and_the_caps_evictions_hold(
    cluster_dsn: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    policy = DeliveryPolicy(cap=3)
    async with two_brokers(cluster_dsn, tmp_path, policy) as (a, _b, broker_b):
        journal = tmp_path / "journal"
        await broker_b.spawn("bob", [*REFERENCE, "--journal", str(journal)])
        await broker_b.set_mode("bob", "hold")  # nothing is typed: they wait, queued
        ids = [
            (await a.send("bob", f"m{i}", sender="user", thread=None)).delivery_id for i in range(5)
        ]
        # The two oldest are evicted for the cap of 3, and say so on every broker.
        with trio.fail_after(10):
            while [d.state for d in await a.deliveries("bob", None, 10, None)][:2] != [
                "dropped",
                "dropped",
            ]:
                await trio.sleep(0.05)
        dropped = await a.get(ids[0])
        assert "cap" in (dropped.reason or "")

        await broker_b.set_mode("bob", "auto_inject")
        ended = [await a.wait(i, 10) for i in ids[2:]]
        assert [e.state for e in ended] == ["verified"] * 3
        with psycopg.connect(cluster_dsn) as conn:
            local = dict(
                conn.execute(
                    "SELECT id, local_id FROM trio_relay_deliveries ORDER BY id"
                ).fetchall()
            )
        typed = [line.split()[1] for line in journal.read_text().splitlines()]
        assert typed == [local[sql.parse_cluster_id(i)] for i in ids[2:]]  # in sent order


async def test_a_delivery_is_taken_in_once_however_often_it_is_claimed(
    cluster_dsn: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async with two_brokers(cluster_dsn, tmp_path) as (a, b, broker_b):
        journal = tmp_path / "journal"
        await broker_b.spawn("bob", [*REFERENCE, "--journal", str(journal)])
        receipt = await a.send("bob", "once", sender="user", thread=None)
        assert (await a.wait(receipt.delivery_id, 10)).state == "verified"
        row = sql.parse_cluster_id(receipt.delivery_id)
        # As if B had stopped after taking it in, before PostgreSQL heard of it.
        with psycopg.connect(cluster_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE trio_relay_deliveries SET local_id = NULL, state = 'queued' WHERE id = %s",
                (row,),
            )
        b._held_again = True  # what its start, a reconnect or a spawn does
        b._work.set()
        with trio.fail_after(10):
            while (await a.get(receipt.delivery_id)).state != "verified":
                await trio.sleep(0.05)
        assert len(journal.read_text().splitlines()) == 1  # typed once
        assert len(await broker_b.deliveries("bob")) == 1  # one local delivery


async def test_an_agent_that_is_not_running_anywhere_is_not_found(
    cluster_dsn: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async with two_brokers(cluster_dsn, tmp_path) as (a, _b, broker_b):
        await broker_b.spawn("bob", REFERENCE)
        await broker_b.release("bob")
        with pytest.raises(WorkerNotFound):
            await a.send("bob", "anyone?", sender="user", thread=None)
        assert [x.name for x in await a.agents()] == []


async def test_every_wait_on_one_delivery_ends_with_it(
    cluster_dsn: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async with two_brokers(cluster_dsn, tmp_path) as (a, _b, broker_b):
        await broker_b.spawn("bob", REFERENCE)
        await broker_b.set_mode("bob", "hold")
        receipt = await a.send("bob", "for three", sender="user", thread=None)
        ended: list[str] = []

        async def wait_once() -> None:
            ended.append((await a.wait(receipt.delivery_id, 20)).state)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(wait_once)
                row = sql.parse_cluster_id(receipt.delivery_id)
                while len(a._waiters.get(row, ())) < 3:  # all three are waiting
                    await trio.sleep(0.01)
                while not await broker_b.pending("bob"):  # b took it in (held): flush it
                    await trio.sleep(0.01)
                # Reported (sent, then verified): one wake each at least.
                await broker_b.flush("bob")
        assert ended == ["verified"] * 3
