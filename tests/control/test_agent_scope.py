"""An agent acts only as itself: whatever token a process of an agent presents, and however
it reaches the broker, it gets that agent's scope, and sees only that agent's events."""

from __future__ import annotations

import functools
import json
import shlex
import subprocess
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
import ws_raw
from helpers import CLEAN_ENV, REFERENCE_WORKER, RELAY, Relay, wait_for

from trio_relay.client import open_client
from trio_relay.wire import Gap, StoreErrorEvent

TOKEN = "scope-test-token-" + "y" * 32


def run_in_agent(daemon: Relay, agent: str, tmp_path: Path, command: str) -> tuple[int, str]:
    """Type ``command`` into agent ``agent``'s shell; return its exit code and output."""
    marker = tmp_path / f"rc-{abs(hash(command))}"
    out = tmp_path / f"out-{abs(hash(command))}"
    line = f"{command} > {out} 2>&1; echo $? > {marker}.tmp; mv {marker}.tmp {marker}"
    assert daemon.invoke("input", agent, line, "--raw", "--enter").exit_code == 0
    wait_for(marker.exists, timeout=30)
    return int(marker.read_text()), out.read_text()


@pytest.fixture
def inside(daemon: Relay) -> Relay:
    """A daemon with a bash agent `alice`, its prompt up."""
    assert daemon.invoke("spawn", "alice", "--", "bash", "--norc", "--noprofile").exit_code == 0
    wait_for(lambda: "bash-" in daemon.invoke("snapshot", "alice").output)
    return daemon


def relay_command() -> str:
    return " ".join(shlex.quote(part) for part in RELAY)


def test_inside_an_agent_the_cli_never_falls_back_to_the_owner_token(
    inside: Relay, tmp_path: Path
) -> None:
    rc, out = run_in_agent(
        inside, "alice", tmp_path, f"env -u TRIO_RELAY_TOKEN {relay_command()} spawn evil -- true"
    )
    assert rc == 2, out
    assert "inside agent 'alice'" in out and "own token" in out
    assert "evil" not in inside.invoke("ps").output


@pytest.mark.parametrize("how", ["unix-socket", "tcp", "left-its-session"])
def test_a_process_of_an_agent_is_that_agent_whatever_token_it_presents(
    inside: Relay, tmp_path: Path, how: str
) -> None:
    state = Path(inside.state)
    connection = json.loads((state / "connection.json").read_text())
    owner = f"$(cat {state / 'token'})"
    scrub = "env -u TRIO_RELAY_TOKEN -u TRIO_RELAY_AGENT -u TRIO_RELAY_URL -u TRIO_RELAY_RUN"
    if how == "unix-socket":  # what the state directory says: its socket, the owner's token
        command = f"{scrub} {relay_command()} spawn --state-dir {state} evil -- true"
    elif how == "tcp":
        command = f"{scrub} {relay_command()} spawn --url {connection['url']} --token {owner} evil -- true"
    else:  # a new session, an empty environment: only its ancestry gives it away
        command = (
            f"setsid -w env -i PATH=/usr/bin:/bin {relay_command()} spawn --url {connection['url']}"
            f" --token {owner} evil -- true"
        )
    rc, out = run_in_agent(inside, "alice", tmp_path, command)
    assert rc == 1, out
    assert "forbidden" in out.lower() or "may not use 'spawn'" in out, out
    assert "evil" not in inside.invoke("ps").output
    # It still has its own scope: it may send as itself.
    rc, out = run_in_agent(
        inside, "alice", tmp_path, f"{scrub} {relay_command()} status --state-dir {state} --json"
    )
    assert rc == 0 and json.loads(out)["you"] == "alice", out


def test_the_owner_outside_any_agent_keeps_the_owner_scope(inside: Relay) -> None:
    result = subprocess.run(
        [*RELAY, "status", "--state-dir", inside.state, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env=CLEAN_ENV,
    )
    assert result.returncode == 0 and json.loads(result.stdout)["you"] is None


#: An in-process broker and its control server, with this module's token.
serving = functools.partial(ws_raw.serving, TOKEN)


async def test_agent_scoped_subscribers_see_only_their_own_events() -> None:
    async with serving(event_capacity=64) as (broker, server, url):
        await broker.spawn("alice", REFERENCE_WORKER)
        await broker.spawn("bob", REFERENCE_WORKER)
        broker.events.emit(
            StoreErrorEvent(operation="queue a delivery for 'bob'", error="disk full")
        )
        async with (
            open_client(url, server.agent_token("alice")) as alice,
            open_client(url, TOKEN) as owner,
        ):
            async with alice.subscribe(0) as mine, owner.subscribe(0) as everything:
                assert mine.replay_end < broker.events.last_seq == everything.replay_end
                seen = await replay(mine)
                assert seen and all(getattr(e, "agent", None) == "alice" for e in seen)
                assert StoreErrorEvent in {type(e) for e in await replay(everything)}


async def replay(subscription) -> list:  # type: ignore[no-untyped-def]
    """The events a subscription replays, up to the newest its filters pass."""
    events = []
    while not events or events[-1].seq < subscription.replay_end:
        events.append(await subscription.__anext__())
    return events


async def test_a_gap_always_arrives_whatever_the_filters() -> None:
    async with serving(event_capacity=16) as (broker, server, url):
        await broker.spawn("alice", REFERENCE_WORKER)
        for _ in range(40):  # far more than the ring holds
            broker.events.emit(StoreErrorEvent(operation="x", error="y"))
        async with open_client(url, TOKEN) as owner:
            async with owner.subscribe(0, kinds=["agent_spawned"]) as events:
                first = await events.__anext__()
                assert isinstance(first, Gap) and first.first == 1


def test_events_without_follow_end_for_an_agent_token(inside: Relay) -> None:
    inside.invoke("spawn", "bob", "--native", "--", *REFERENCE_WORKER)  # the newest are bob's
    connection = json.loads((Path(inside.state) / "connection.json").read_text())
    alice_token = _agent_token(inside, "alice")
    result = subprocess.run(
        [*RELAY, "events", "--url", connection["url"], "--token", alice_token, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env=CLEAN_ENV,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events and {e["agent"] for e in events} == {"alice"}


def _agent_token(daemon: Relay, agent: str) -> str:
    """An agent's scoped token, as the broker derives it from its own."""
    import hashlib
    import hmac

    owner = (Path(daemon.state) / "token").read_text().strip()
    signature = hmac.new(owner.encode(), agent.encode(), hashlib.sha256).hexdigest()[:32]
    return f"agent.{agent}.{signature}"


async def test_subscriptions_and_connections_are_bounded() -> None:
    from trio_relay.control.connection import MAX_SUBSCRIPTIONS_PER_CONNECTION
    from trio_relay.control.server import MAX_CONNECTIONS_PER_AGENT
    from trio_relay.errors import BrokerUnreachable, RemoteError

    async with serving() as (broker, server, url):
        token = server.agent_token("alice")
        async with open_client(url, token) as alice:
            async with trio.open_nursery() as subs:
                opened = trio.Semaphore(0)
                stop = trio.Event()

                async def hold() -> None:
                    async with alice.subscribe(0):
                        opened.release()
                        await stop.wait()

                for _ in range(MAX_SUBSCRIPTIONS_PER_CONNECTION):
                    subs.start_soon(hold)
                for _ in range(MAX_SUBSCRIPTIONS_PER_CONNECTION):
                    await opened.acquire()
                with pytest.raises(RemoteError) as refused:
                    async with alice.subscribe(0):
                        pass
                assert refused.value.code == "too_many"
                assert (await alice.status()).you == "alice"  # requests still served
                stop.set()
        async with AsyncExitStack() as connections:
            for _ in range(MAX_CONNECTIONS_PER_AGENT):
                await connections.enter_async_context(open_client(url, token))
            with pytest.raises(BrokerUnreachable, match="429"):
                async with open_client(url, token):
                    pass
        async with open_client(url, token) as again:  # a slot is free once one closes
            assert (await again.status()).you == "alice"
