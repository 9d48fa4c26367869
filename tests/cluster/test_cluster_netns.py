"""A broker in a network namespace of its own that reaches PostgreSQL only through a veth
pair, so its network can be cut (the link goes down: packets are dropped, nothing is
refused) and restored. Needs root and `ip netns`; skipped, saying so, where it cannot."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from cluster_brokers import Brokers, cli
from postgres import PostgresServer, postgres_missing_reason
from test_cluster_crashes import DISRUPT_AFTER, MESSAGES, check, stream, wait_all

pytestmark = pytest.mark.timeout(180)

HOST, PEER = "10.231.0.1", "10.231.0.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespace() -> Iterator[tuple[str, str]]:
    """A network namespace joined to this one by a veth pair: (its name, the host end)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"trr{secrets.token_hex(3)}"
    host_end, peer_end = f"{name}h", f"{name}p"
    try:
        ip("netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", peer_end)
        ip("link", "set", peer_end, "netns", name)
        ip("addr", "add", f"{HOST}/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{PEER}/30", "dev", peer_end)
        ip("netns", "exec", name, "ip", "link", "set", peer_end, "up")
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, peer_end
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.fixture
def tcp_server(namespace: tuple[str, str], tmp_path: Path) -> Iterator[PostgresServer]:
    reason = postgres_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer(tcp_address=(HOST, 15432))
    try:
        server.start()
        yield server
    finally:
        server.close()


async def test_a_broker_whose_network_is_cut_and_restored(
    namespace: tuple[str, str], tcp_server: PostgresServer, tmp_path: Path
) -> None:
    ns, link = namespace
    dsn = tcp_server.create_database("netns")
    brokers = Brokers(dsn, tmp_path)
    try:
        brokers.start("A")  # here, on the Unix socket
        remote = f"postgresql://postgres@{HOST}:15432/netns"
        b = brokers.start("B", dsn=remote, prefix=["ip", "netns", "exec", ns])
        journal = tmp_path / "bob.journal"
        reference = [sys.executable, "-m", "trio_relay.worker.reference", "--journal", str(journal)]
        cli(b, "spawn", "bob", "--native", "--", *reference)

        def cut_for_a_while() -> None:
            ip("netns", "exec", ns, "ip", "link", "set", link, "down")
            time.sleep(4)  # an outage longer than B's lease; shorter than its TCP timeouts
            ip("netns", "exec", ns, "ip", "link", "set", link, "up")

        acked = await stream(brokers.started["A"].state, MESSAGES, DISRUPT_AFTER, cut_for_a_while)
        states = await wait_all(brokers.started["A"].state, acked)
        check(dsn, journal, acked, states, kills=1)
    finally:
        await trio.to_thread.run_sync(brokers.stop_all)
