"""A stream of cross-broker messages under a disruption, and what a user checks after it:
every message acknowledged reaches the agent, at most once more per disruption. Shared by
tests/cluster/test_cluster_crashes.py and test_cluster_netns.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import trio

from trio_relay import open_client
from trio_relay.errors import BrokerUnreachable, RemoteError

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
    wanted = {taken[i] for i in acked}
    firsts = list(dict.fromkeys(x for x in journal_order(journal) if x in wanted))
    assert firsts == [taken[i] for i in acked], "not received in the order sent"


def journal_order(journal: Path) -> list[str]:
    return [line.split()[1] for line in journal.read_text().splitlines() if line.strip()]
