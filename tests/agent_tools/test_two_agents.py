"""Two bash agents talk through the relay tools: each runs an MCP client (the SDK's, in
tests/support/mcp_peer.py) that starts `trio-relay mcp` from inside the agent, so the broker
places it as that agent. alice sends bob ten messages, each followed to its end; bob reads
them back with relay_inbox and answers each; nothing is lost, doubled or reordered."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio
from helpers import SUPPORT, Relay
from test_mcp_server import spawn_bash

from trio_relay.client import open_client

pytestmark = pytest.mark.timeout(120)
COUNT = 10


async def run_in(client, r: Relay, agent: str, args: list[str], out: Path) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """Type the peer program's command line into the agent's shell; its report."""
    line = " ".join([sys.executable, str(SUPPORT / "mcp_peer.py"), *args, str(out)])
    await client.input(agent, line + "\r")
    report = trio.Path(out)
    with trio.fail_after(90):
        while not await report.exists() or not (await report.read_text()).endswith("\n"):
            await trio.sleep(0.1)
    return json.loads(await report.read_text())  # type: ignore[no-any-return]


async def test_two_agents_exchange_messages_through_the_tools(
    daemon: Relay, tmp_path: Path
) -> None:
    await spawn_bash(daemon, "alice", tmp_path)
    await spawn_bash(daemon, "bob", tmp_path)
    async with open_client(state_dir=daemon.state) as owner:
        sent = (await run_in(owner, daemon, "alice", ["send", "bob", str(COUNT)], tmp_path / "a"))[
            "sent"
        ]
        assert [(state, level) for _, state, level in sent] == [("verified", "submitted")] * COUNT
        with trio.fail_after(20):  # alice's shell is back at its prompt
            while [a.activity for a in await owner.agents() if a.name == "alice"] != ["idle"]:
                await trio.sleep(0.05)
        answered = await run_in(
            owner, daemon, "bob", ["answer", "alice", str(COUNT)], tmp_path / "b"
        )
        assert answered["received"] == [
            [i, "alice", f"echo {n}"] for n, (i, _, _) in enumerate(sent)
        ]
        for ack in answered["acks"]:
            done = await owner.wait(ack, timeout=30)
            assert (done.state, done.sender, done.agent) == ("verified", "bob", "alice")
        to_alice = await owner.deliveries("alice")
        assert [d.body for d in to_alice] == [f"echo ack {i}" for i, _, _ in sent]
        to_bob = await owner.deliveries("bob")
        assert [d.delivery_id for d in to_bob] == [i for i, _, _ in sent]
