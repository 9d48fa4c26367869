"""`trio-relay mcp` driven by the MCP SDK's own client over stdio, against a real broker
(`up --detach`) with bash agents: the tools and their schemas, each tool's result, the scope
rules, bad arguments, the owner's token refused, a broker that is down, and a delivery
followed to `submitted`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import CLEAN_ENV, Relay
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from trio_relay.agent_tools.tools import TOOLS
from trio_relay.client import open_client
from trio_relay.control.auth import agent_token

pytestmark = pytest.mark.timeout(60)

SERVER = [sys.executable, "-m", "trio_relay", "mcp"]


def owner_token(r: Relay) -> str:
    return (Path(r.state) / "token").read_text().strip()


def url_of(r: Relay) -> str:
    return f"ws+unix://{Path(r.state).absolute()}/control.sock"


def agent_env(r: Relay, name: str) -> dict[str, str]:
    """What an agent's CLI passes its MCP server: the agent's URL and scoped token."""
    return {
        "TRIO_RELAY_URL": url_of(r),
        "TRIO_RELAY_TOKEN": agent_token(owner_token(r), name),
        "TRIO_RELAY_AGENT": name,
    }


@asynccontextmanager
async def mcp_session(env: dict[str, str]) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=SERVER[0], args=SERVER[1:], env=env)
    async with stdio_client(params, errlog=sys.stderr) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> tuple[bool, Any]:
    """(is_error, the result's JSON or the error's text)."""
    result = await session.call_tool(tool, arguments)
    text = result.content[0].text  # type: ignore[union-attr]
    return bool(result.is_error), text if result.is_error else json.loads(text)


async def spawn_bash(r: Relay, name: str, tmp_path: Path) -> None:
    async with open_client(state_dir=r.state) as client:
        await client.spawn(name, ["bash", "--norc"], cwd=str(tmp_path))
        await until_screen(r, name, "")


async def until_screen(r: Relay, name: str, text: str) -> None:
    async with open_client(state_dir=r.state) as client:
        with trio.fail_after(15):
            while text not in (await client.snapshot(name)).text:
                await trio.sleep(0.05)
            while [a.activity for a in await client.agents() if a.name == name] != ["idle"]:
                await trio.sleep(0.05)


async def test_the_tools_and_a_message_followed_to_submitted(daemon: Relay, tmp_path: Path) -> None:
    await spawn_bash(daemon, "alice", tmp_path)
    await spawn_bash(daemon, "bob", tmp_path)
    async with mcp_session(agent_env(daemon, "alice")) as alice:
        listed = (await alice.list_tools()).tools
        assert [t.name for t in listed] == list(TOOLS)
        for tool in listed:
            assert tool.description and len(tool.description) > 60, tool
            assert tool.input_schema["type"] == "object"
            assert tool.input_schema["additionalProperties"] is False
        send_schema = next(t for t in listed if t.name == "relay_send").input_schema
        assert send_schema["required"] == ["to", "message"]
        assert set(send_schema["properties"]) == {"to", "message", "thread"}

        error, peers = await call(alice, "relay_peers")
        assert not error
        assert peers["you"] == "alice"
        assert [(p["name"], p["activity"]) for p in peers["peers"]] == [("bob", "idle")]

        error, sent = await call(alice, "relay_send", to="bob", message="echo from-alice")
        assert not error and sent["state"] == "queued" and sent["to"] == "bob", sent
        error, ended = await call(alice, "relay_wait", id=sent["id"], timeout=20)
        assert not error, ended
        assert (ended["state"], ended["verification"], ended["from"]) == (
            "verified",
            "submitted",
            "alice",
        )
        error, looked = await call(alice, "relay_delivery", id=sent["id"])
        assert not error and looked["state"] == "verified"
        # bash ran the line typed ("Relay message from alice [...]: ..."): it was taken.
        await until_screen(daemon, "bob", "Relay: command not found")

    async with mcp_session(agent_env(daemon, "bob")) as bob:
        error, inbox = await call(bob, "relay_inbox")
        assert not error
        assert [(m["id"], m["from"], m["message"]) for m in inbox["messages"]] == [
            (sent["id"], "alice", "echo from-alice")
        ]
        assert inbox["next"] == sent["id"]
        error, newer = await call(bob, "relay_inbox", since=inbox["next"])
        assert not error and newer == {"messages": [], "next": sent["id"]}
        # bob may read what it received too.
        error, looked = await call(bob, "relay_delivery", id=sent["id"])
        assert not error and looked["to"] == "bob"


async def test_scope_rules_bad_arguments_and_the_owners_token(
    daemon: Relay, tmp_path: Path
) -> None:
    await spawn_bash(daemon, "alice", tmp_path)
    await spawn_bash(daemon, "bob", tmp_path)
    await spawn_bash(daemon, "carol", tmp_path)
    async with open_client(state_dir=daemon.state) as owner:
        between = await owner.send("bob", "echo for-bob")
    async with mcp_session(agent_env(daemon, "alice")) as alice:
        # Someone else's delivery: refused, naming the rule.
        for tool in ("relay_delivery", "relay_wait"):
            error, text = await call(alice, tool, id=between.delivery_id)
            assert error
            assert "may read only the deliveries it sent or received" in text, text
            assert "scope rule" in text
            assert "'bob'" not in text and "'user'" not in text  # nothing of others' traffic
        # It sends only as itself: the message says alice, whatever it is.
        error, sent = await call(alice, "relay_send", to="carol", message="echo hi")
        assert not error
        error, looked = await call(alice, "relay_delivery", id=sent["id"])
        assert looked["from"] == "alice"

        error, text = await call(alice, "relay_send", to="nobody", message="hi")
        assert error and "relay_peers lists the agents you can message" in text, text
        error, text = await call(alice, "relay_send", to="alice", message="hi")
        assert error and "yourself" in text
        error, text = await call(alice, "relay_send", message="no recipient")
        assert error and "bad arguments for relay_send" in text and "to" in text, text
        error, text = await call(alice, "relay_send", to=3, message="hi")
        assert error and "Expected `str`, got `int`" in text, text
        error, text = await call(alice, "relay_send", to="bob", message="hi", cc="carol")
        assert error and "cc" in text, text
        error, text = await call(alice, "relay_wait", id=sent["id"], timeout=1e9)
        assert error and "timeout" in text, text
        error, text = await call(alice, "relay_delivery", id="nonsense")
        assert error and "no delivery" in text, text
        error, text = await call(alice, "relay_mystery")
        assert error and "relay_send" in text, text
        # The server lived through all of that.
        error, peers = await call(alice, "relay_peers")
        assert not error and {p["name"] for p in peers["peers"]} == {"bob", "carol"}

    # Given the owner's token (not from inside an agent), it refuses to act.
    owner = {"TRIO_RELAY_URL": url_of(daemon), "TRIO_RELAY_TOKEN": owner_token(daemon)}
    async with mcp_session(owner) as session:
        error, text = await call(session, "relay_peers")
        assert error and "acts only as an agent" in text, text


async def test_a_broker_that_is_down(tmp_path: Path) -> None:
    env = {
        "TRIO_RELAY_URL": f"ws+unix://{tmp_path}/control.sock",
        "TRIO_RELAY_TOKEN": "agent.alice.0123",
        "TRIO_RELAY_AGENT": "alice",
    }
    async with mcp_session(env) as session:  # it starts all the same
        assert len((await session.list_tools()).tools) == len(TOOLS)
        error, text = await call(session, "relay_send", to="bob", message="hi")
        assert error
        assert "not reachable" in text and "Nothing was sent" in text, text
        assert "trio-relay up" in text


def test_without_a_url_and_token_it_says_how_it_is_run() -> None:
    ran = subprocess.run(SERVER, capture_output=True, text=True, env=CLEAN_ENV, timeout=30)
    assert ran.returncode == 2
    assert "TRIO_RELAY_URL and TRIO_RELAY_TOKEN" in ran.stderr
    assert "spawn --mcp" in ran.stderr


def test_only_the_mcp_process_imports_the_sdk() -> None:
    """The broker, the workers and every other command never pay the SDK's import."""
    probe = (
        "import sys, trio_relay.cli.main, trio_relay.daemon, trio_relay.worker.pty.core,"
        " trio_relay.worker.reference, trio_relay.control.operations;"
        " print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types',"
        " 'pydantic', 'anyio', 'starlette')))"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"


def test_spawn_mcp_needs_a_profile_that_knows_how(daemon: Relay, tmp_path: Path) -> None:
    for args, says in [
        (["--", "bash"], "profile 'shell' does not say how to give its program an MCP server"),
        (["--native", "--", "true"], "a native worker takes no profile and no --mcp"),
    ]:
        refused = daemon.invoke("spawn", "x", "--mcp", "--cwd", str(tmp_path), *args)
        assert refused.exit_code == 2, refused.output
        assert says in refused.output
    assert not (Path(daemon.state) / "mcp").exists()  # nothing was written


def test_a_gemini_settings_file_it_cannot_read_is_a_usage_error(
    daemon: Relay, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / ".gemini").mkdir(parents=True)
    (home / ".gemini" / "settings.json").write_text("{ // a comment\n}")
    refused = daemon.invoke(
        "spawn", "g", "--mcp", "--env", f"HOME={home}", "--cwd", str(tmp_path), "--", "gemini"
    )
    assert refused.exit_code == 2, refused.output
    assert "cannot read" in refused.output and "settings.json" in refused.output
    assert list((Path(daemon.state) / "mcp").iterdir()) == []  # its partial overlay is gone
