"""Crashes mid-stream across brokers: the owning broker SIGKILLed, PostgreSQL restarted
with ``-m immediate``, the owning broker's connection to PostgreSQL cut and restored.

A sender on broker A streams messages to agent ``bob`` on broker B (the reference worker,
which journals each delivery it receives). What a user checks afterwards: every message
acknowledged (its send returned a receipt) reaches bob, and at most one is received twice
per disruption."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import trio
from cluster_brokers import Brokers, brokers, cli  # noqa: F401
from postgres import CuttableProxy, PostgresServer
from postgres_fixtures import cluster_dsn, postgres_server  # noqa: F401

from trio_relay import open_client
from trio_relay.errors import BrokerUnreachable, RemoteError

pytestmark = pytest.mark.timeout(180)

MESSAGES = 60
DISRUPT_AFTER = 20


async def stream(sender_state: str, count: int, disrupt_at: int, disrupt: Callable) -> list[str]:
    """Send ``count`` messages to bob through the broker at ``sender_state``; after
    ``disrupt_at`` acknowledgements, run ``disrupt`` (in a thread) while sending goes on.
    A send that fails is tried again as a new message. Returns the acknowledged ids."""
    acked: list[str] = []
    with trio.fail_after(90):
        await _stream(sender_state, count, disrupt_at, disrupt, acked)
    return acked


async def _stream(
    sender_state: str, count: int, disrupt_at: int, disrupt: Callable, acked: list[str]
) -> None:
    async with trio.open_nursery() as nursery:
        disrupted = False
        async with open_client(state_dir=sender_state) as client:
            i = 0
            while i < count:
                if len(acked) == disrupt_at and not disrupted:
                    disrupted = True
                    nursery.start_soon(trio.to_thread.run_sync, disrupt)
                try:
                    receipt = await client.send("bob", f"message {i}")
                except (RemoteError, BrokerUnreachable):
                    await trio.sleep(0.1)  # not acknowledged: it does not count
                    continue
                acked.append(receipt.delivery_id)
                i += 1
                await trio.sleep(0.02)


async def wait_all(state: str, ids: list[str]) -> dict[str, str]:
    with trio.fail_after(90):
        async with open_client(state_dir=state) as client:
            return {i: (await client.wait(i, timeout=60)).state for i in ids}


def local_ids(dsn: str, ids: list[str]) -> dict[str, str]:
    """cluster id -> the local delivery id its owner took it in as (from PostgreSQL)."""
    rows = {int(i.removeprefix("cluster-")) for i in ids}
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT id, local_id FROM trio_relay_deliveries WHERE id = ANY(%s)", (list(rows),)
        ).fetchall()
    return {f"cluster-{row_id}": local for row_id, local in found}


def received(journal: Path) -> Counter[str]:
    return Counter(line.split()[1] for line in journal.read_text().splitlines() if line.strip())


def check(dsn: str, journal: Path, acked: list[str], states: dict[str, str], kills: int) -> None:
    assert len(acked) == MESSAGES
    assert set(states.values()) == {"verified"}, Counter(states.values())
    taken = local_ids(dsn, acked)
    got = received(journal)
    missing = [i for i in acked if taken.get(i) not in got]
    assert not missing, f"acknowledged but never received: {missing}"
    twice = {i: n for i, n in got.items() if n > 1}
    assert sum(n - 1 for n in twice.values()) <= kills, twice


def start_pair(brokers: Brokers, tmp_path: Path, b_dsn: str | None = None) -> Path:  # noqa: F811
    brokers.start("A")
    b = brokers.start("B", dsn=b_dsn)
    journal = tmp_path / "bob.journal"
    reference = [sys.executable, "-m", "trio_relay.worker.reference", "--journal", str(journal)]
    cli(b, "spawn", "bob", "--native", "--", *reference)
    return journal


async def test_the_owning_broker_killed_mid_stream(brokers: Brokers, tmp_path: Path) -> None:  # noqa: F811
    journal = start_pair(brokers, tmp_path)

    def kill_and_restart() -> None:
        brokers.kill("B")
        brokers.start("B")  # its state directory: bob is respawned, journaling on

    acked = await stream(brokers.started["A"].state, MESSAGES, DISRUPT_AFTER, kill_and_restart)
    states = await wait_all(brokers.started["A"].state, acked)
    check(brokers.dsn, journal, acked, states, kills=1)


async def test_postgresql_restarted_mid_stream(
    brokers: Brokers,  # noqa: F811
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    journal = start_pair(brokers, tmp_path)
    acked = await stream(
        brokers.started["A"].state,
        MESSAGES,
        DISRUPT_AFTER,
        lambda: postgres_server.restart(mode="immediate"),
    )
    states = await wait_all(brokers.started["A"].state, acked)
    check(brokers.dsn, journal, acked, states, kills=1)


async def test_the_owning_brokers_connection_cut_and_restored(
    brokers: Brokers,  # noqa: F811
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    database = urlsplit(brokers.dsn).path.lstrip("/")
    with CuttableProxy(postgres_server.socket_path) as proxy:
        host, port = proxy.address
        journal = start_pair(
            brokers, tmp_path, b_dsn=f"postgresql://postgres@{host}:{port}/{database}"
        )

        def cut_for_a_while() -> None:
            proxy.cut()
            time.sleep(3)  # an outage longer than B's lease: its agent is unreachable meanwhile
            proxy.restore()

        acked = await stream(brokers.started["A"].state, MESSAGES, DISRUPT_AFTER, cut_for_a_while)
        states = await wait_all(brokers.started["A"].state, acked)
        check(brokers.dsn, journal, acked, states, kills=1)
