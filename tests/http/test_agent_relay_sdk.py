"""agent-relay's own Python SDK (agent-relay-sdk 14.0.0, unchanged) against trio-relay's
HTTP port: the main flow of AgentRelayClient and of the AgentRelay wrapper, which starts
trio-relay through the shim (AGENT_RELAY_BIN)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_relay import AgentRelay, AgentRelayClient
from agent_relay.client import AgentRelayProtocolError
from helpers import pid_alive, wait_for

pytestmark = pytest.mark.timeout(90)

RELAY_CLI = f"{sys.executable} -m trio_relay"


async def until(events: list[dict[str, Any]], test: Any, what: str, timeout: float = 20) -> Any:
    """The first event in ``events`` (filled by the SDK's listener) passing ``test``."""
    try:
        async with asyncio.timeout(timeout):
            while (found := next((e for e in events if test(e)), None)) is None:
                await asyncio.sleep(0.02)
    except TimeoutError:
        kinds = [e.get("kind") for e in events[-20:]]
        raise AssertionError(f"no {what} within {timeout} s; the last events: {kinds}") from None
    return found


def test_client_main_flow(http_broker: Any) -> None:
    broker_pid = http_broker.relay.pid

    async def flow() -> None:
        client = AgentRelayClient(base_url=http_broker.url, api_key=http_broker.token)
        events: list[dict[str, Any]] = []
        client.on_event(events.append)
        await client._connect_ws()  # what AgentRelayClient.spawn does after get_session
        try:
            session = await client.get_session()
            assert session["protocol_version"] == 2 and session["mode"] == "persist"
            assert (await client.health_check())["status"] == "ok"
            assert (await client.renew_lease())["renewed"] is True

            spawned = await client.spawn_pty(name="sh1", cli="bash", args=["--norc"])
            assert spawned["success"] is True and spawned["name"] == "sh1" and spawned["pid"]
            await client.spawn_pty(name="cat1", cli="cat")
            for name in ("sh1", "cat1"):
                await until(
                    events,
                    lambda e, n=name: e["kind"] == "worker_ready" and e["name"] == n,
                    f"worker_ready for {name}",
                )
            listed = {a["name"]: a for a in await client.list_agents()}
            assert set(listed) == {"sh1", "cat1"}
            assert listed["sh1"]["cli"] == "bash" and listed["cat1"]["cli"] == "cat"

            # a message, verified: delivery_verified only once it was seen taken
            sent = await client.send_message(to="cat1", text="hello from the SDK", from_="me")
            delivery = sent["event_id"]
            verified = await until(
                events,
                lambda e: e["kind"] == "delivery_verified" and e["delivery_id"] == delivery,
                "delivery_verified",
            )
            assert verified["verification"] in ("submitted", "echo")
            inbound = next(
                e for e in events if e["kind"] == "relay_inbound" and e["event_id"] == delivery
            )
            assert (inbound["from"], inbound["target"], inbound["body"]) == (
                "me",
                "cat1",
                "hello from the SDK",
            )

            # an agent's own message reaches the SDK as relay_inbound from it
            typed = await client.send_input("sh1", f"{RELAY_CLI} send cat1 'from the shell'\r")
            assert typed["bytes_written"] > 0
            said = await until(
                events,
                lambda e: e["kind"] == "relay_inbound" and e["from"] == "sh1",
                "relay_inbound from sh1",
            )
            assert (said["target"], said["body"]) == ("cat1", "from the shell")

            # input, resize, snapshot
            # "42x": a delivery id (hex) printed earlier may hold "42", never an "x"
            await client.send_input("sh1", "echo $((6*7))x\r")
            await until(
                events,
                lambda e: e["kind"] == "worker_stream" and "42x" in e["chunk"],
                "the shell's answer in worker_stream",
            )
            resized = await client.resize_pty("sh1", 30, 100)
            assert resized == {"name": "sh1", "rows": 30, "cols": 100, "applied": True}
            plain = await client._request("GET", "/api/spawned/sh1/snapshot?format=plain")
            assert (plain["rows"], plain["cols"]) == (30, 100)
            assert "42x" in plain["screen"].split("\n")
            ansi = await client._request("GET", "/api/spawned/sh1/snapshot?format=ansi")
            assert "42x" in base64.b64decode(ansi["screen"]).decode()

            # release: agent_released, and it is gone from the list
            released = await client.release("sh1")
            assert released == {"success": True, "name": "sh1"}
            await until(
                events,
                lambda e: e["kind"] == "agent_released" and e["name"] == "sh1",
                "agent_released",
            )
            assert [a["name"] for a in await client.list_agents()] == ["cat1"]
            with pytest.raises(AgentRelayProtocolError) as unknown:
                await client.send_input("nobody", "x")
            assert unknown.value.code == "agent_not_found"

            # events replayed from a sinceSeq: exactly those numbered above it, in order
            middle = verified["seq"]
            replayed = await _replay(http_broker, since=middle, count=5)
            assert [e["seq"] for e in replayed] == sorted(e["seq"] for e in replayed)
            assert all(e["seq"] > middle for e in replayed if "seq" in e)
            live = [e for e in events if e.get("seq", 0) > middle][:5]
            assert [(e["kind"], e["seq"]) for e in replayed] == [
                (e["kind"], e["seq"]) for e in live
            ]

            status = await client.get_status()
            assert status["agent_count"] == 1
            await client._request("POST", "/api/shutdown")
        finally:
            client._process = None  # not ours: shutdown() closes the session only
            await client.shutdown()

    asyncio.run(flow())
    wait_for(lambda: not pid_alive(broker_pid), timeout=20)


async def _replay(http_broker: Any, *, since: int, count: int) -> list[dict[str, Any]]:
    headers = {"X-API-Key": http_broker.token}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.ws_connect(f"{http_broker.ws}/ws?sinceSeq={since}") as ws:
            frames = []
            async with asyncio.timeout(10):
                while len(frames) < count:
                    frames.append(json.loads((await ws.receive()).data))
            return frames


def test_agent_relay_wrapper_starts_trio_relay_through_the_shim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shim = shutil.which("trio-relay-agent-relay", path=os.path.dirname(sys.executable))
    assert shim is not None, "the trio-relay-agent-relay command is not installed"
    monkeypatch.setenv("AGENT_RELAY_BIN", shim)
    monkeypatch.chdir(tmp_path)

    async def flow() -> int:
        relay = AgentRelay(cwd=str(tmp_path))
        received: list[Any] = []
        relay.on_message_received = received.append
        try:
            agent = await relay.spawn("Shell", "bash", task="echo started-$((40+2))")
            await relay.wait_for_agent_ready("Shell", 20_000)
            await relay.spawn("Cat", "cat")
            await relay.wait_for_agent_ready("Cat", 20_000)
            assert {a.name for a in await relay.list_agents()} == {"Shell", "Cat"}
            await relay.broadcast("hello everyone")
            async with asyncio.timeout(20):
                while {m.to for m in received if m.text == "hello everyone"} != {"Shell", "Cat"}:
                    await asyncio.sleep(0.05)
            await agent.release()
            assert await agent.wait_for_exit(10_000) in ("released", "exited")
            pid = relay._client.broker_pid  # type: ignore[union-attr]
            assert pid is not None
        finally:
            await relay.shutdown()
        return pid

    pid = asyncio.run(flow())
    assert not pid_alive(pid)
    state = tmp_path / ".agent-relay" / "trio-relay"
    assert (state / "relay.db").exists(), "the shim keeps trio-relay's state in the project"
