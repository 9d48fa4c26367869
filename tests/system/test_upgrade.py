"""A state directory an older trio-relay wrote still works: what it recorded comes back."""

from __future__ import annotations

import json
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

from trio_relay import open_broker


async def test_agents_recorded_under_the_old_worker_module_names_are_respawned(
    tmp_path: Path,
) -> None:
    """Before the layout, a PTY agent was stored as ``-m trio_relay.pty_worker`` and a native
    one as ``-m trio_relay.reference_worker``; the next broker starts both from where those
    workers live now, with their queued deliveries."""
    state = tmp_path / "state"
    old = {
        "pty": [sys.executable, "-m", "trio_relay.pty_worker", "--", "cat"],
        "native": [sys.executable, "-m", "trio_relay.reference_worker"],
    }
    async with open_broker(state) as broker:
        await broker.spawn("pty", [sys.executable, "-m", "trio_relay.worker.pty", "--", "cat"])
        await broker.spawn("native", [sys.executable, "-m", "trio_relay.worker.reference"])
        await broker.set_mode("native", "hold")
        receipt = await broker.send("native", "kept for the next broker", sender="t")
    with closing(sqlite3.connect(state / "relay.db")) as conn, conn:
        conn.execute("UPDATE agents SET running = 1")  # as a broker killed mid-run leaves them
        for name, argv in old.items():
            (spec,) = conn.execute("SELECT spec FROM agents WHERE name = ?", (name,)).fetchone()
            conn.execute(
                "UPDATE agents SET spec = ? WHERE name = ?",
                (json.dumps({**json.loads(spec), "argv": argv}), name),
            )
    async with open_broker(state) as broker:
        assert {a.name: a.state for a in broker.agents()} == {"pty": "running", "native": "running"}
        assert await broker.request_worker("native", "ping", {"data": 1}) == {"data": 1}
        assert (await broker.delivery(receipt.delivery_id)).state == "queued"
