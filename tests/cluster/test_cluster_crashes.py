"""Crashes mid-stream across brokers: the owning broker SIGKILLed, PostgreSQL restarted
with ``-m immediate``, the owning broker's connection to PostgreSQL cut and restored.

A sender on broker A streams messages to agent ``bob`` on broker B (the reference worker,
which journals each delivery it receives). What a user checks afterwards: every message
acknowledged (its send returned a receipt) reaches bob, and at most one is received twice
per disruption."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cluster_brokers import Brokers, brokers, cli  # noqa: F401
from cluster_stream import DISRUPT_AFTER, MESSAGES, check, stream, wait_all
from postgres import CuttableProxy, PostgresServer
from postgres_fixtures import cluster_dsn, postgres_server  # noqa: F401

pytestmark = pytest.mark.timeout(180)


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
