"""The WebSocket control channel, served in-process, driven by real clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
import trio.lowlevel
import trio.testing
from helpers import REFERENCE_WORKER, wait_until
from trio_websocket import ConnectionClosed, ConnectionRejected
from ws_raw import TOKEN, raw, serving

from trio_relay import Broker
from trio_relay.broker.delivery import DeliveryPolicy
from trio_relay.client import open_client
from trio_relay.control.connection import EVENTS_COALESCE, MAX_REQUESTS_PER_CONNECTION
from trio_relay.control.server import ControlServer
from trio_relay.errors import BrokerUnreachable, RemoteError
from trio_relay.wire import AgentOutput


@dataclass
class Served:
    broker: Broker
    server: ControlServer
    url: str


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    origins = ("http://allowed.example",)
    async with serving(allowed_origins=origins, event_capacity=64) as (broker, server, url):
        broker.agent_environment = lambda name: {
            "TRIO_RELAY_URL": url,
            "TRIO_RELAY_TOKEN": server.agent_token(name),
        }
        yield Served(broker, server, url)


async def ask(ws, request: dict | str) -> dict:  # type: ignore[no-untyped-def]
    await ws.send_message(request if isinstance(request, str) else json.dumps(request))
    with trio.fail_after(10):
        return json.loads(await ws.get_message())


async def test_requests_and_answers_over_the_client(served: Served) -> None:
    async with open_client(served.url, TOKEN) as client:
        info = await client.spawn("w", REFERENCE_WORKER, native=True)
        assert info.state == "running" and info.pid
        assert [a.name for a in await client.agents()] == ["w"]
        status = await client.status()
        assert status.agents == {"running": 1} and status.url == served.url
        assert (await client.release("w")).state == "released"


@pytest.mark.parametrize(
    ("token", "origin", "status"),
    [(None, None, 401), ("wrong", None, 401), (TOKEN, "http://evil.example", 403)],
    ids=["no token", "wrong token", "foreign origin"],
)
async def test_handshakes_are_refused(
    served: Served, token: str | None, origin: str | None, status: int
) -> None:
    with pytest.raises(ConnectionRejected) as info:
        async with raw(served.url, token, origin):
            pass
    assert info.value.status_code == status
    async with raw(served.url, TOKEN, "http://allowed.example") as ws:  # an allowed origin
        assert (await ask(ws, {"id": 1, "op": "status"}))["ok"]


async def test_the_client_reports_a_refused_token(served: Served) -> None:
    with pytest.raises(BrokerUnreachable, match="401"):
        async with open_client(served.url, "wrong"):
            pass


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("not json", "malformed"),
        ("[1, 2]", "JSON object"),
        ('{"op": "status"}', "`id`"),
        ('{"id": 7}', "`op`"),
        ('{"id": 7, "op": "teleport"}', "teleport"),
        ('{"id": 7, "op": "resize", "name": "w", "rows": "many", "cols": 80}', "$.rows"),
        ('{"id": 7, "op": "release"}', "name"),
        ('{"id": 7, "op": "status", "bogus": 1}', "bogus"),
        ("[" * 10000 + "]" * 10000, "depth"),
        (json.dumps({"id": 7, "op": "input", "name": "ghost", "data": "x" * 500_000}), "ghost"),
    ],
    ids=[
        "not json",
        "array",
        "no id",
        "no op",
        "unknown op",
        "wrong type",
        "missing field",
        "unknown field",
        "deep nesting",
        "huge string",
    ],
)
async def test_bad_requests_get_an_error_and_the_connection_lives_on(
    served: Served, message: str, expected: str
) -> None:
    async with raw(served.url) as ws:
        answer = await ask(ws, message)
        assert answer["ok"] is False
        assert answer["error"]["code"] in ("bad_request", "not_found")
        assert expected in answer["error"]["message"]
        assert (await ask(ws, {"id": 8, "op": "status"}))["ok"]


async def test_binary_messages_are_refused_politely(served: Served) -> None:
    async with raw(served.url) as ws:
        await ws.send_message(b"\x00\x01binary")
        answer = json.loads(await ws.get_message())
        assert answer["error"]["code"] == "bad_request" and "binary" in answer["error"]["message"]


async def test_an_oversized_message_closes_only_that_connection(served: Served) -> None:
    async with raw(served.url) as other:
        async with raw(served.url) as ws:
            with pytest.raises(ConnectionClosed) as info, trio.fail_after(10):
                await ws.send_message("x" * (2 * 1024 * 1024))  # the close may come mid-send
                await ws.get_message()
            assert info.value.reason.code == 1009  # Message Too Big, with the limit as reason
        assert (await ask(other, {"id": 1, "op": "status"}))["ok"]


async def test_error_codes_are_stable(served: Served) -> None:
    async with open_client(served.url, TOKEN) as client:
        await client.spawn("w", REFERENCE_WORKER, native=True)
        cases = [
            (client.release("ghost"), "not_found"),
            (client.spawn("w", REFERENCE_WORKER, native=True), "conflict"),
            (client.snapshot("w"), "worker_error"),  # the native worker has no screen
            (client.spawn("bad", ["no-such-binary-xyz"], native=True), "worker_error"),
            (client.resize("w", 0, 0), "bad_request"),
        ]
        for call, code in cases:
            with pytest.raises(RemoteError) as info:
                await call
            assert info.value.code == code, info.value


async def test_a_client_that_disconnects_mid_request_cancels_it(served: Served) -> None:
    await served.broker.spawn("mute", [*REFERENCE_WORKER, "--never-answer", "snapshot"])
    async with raw(served.url) as ws:
        await ws.send_message(
            json.dumps({"id": 1, "op": "snapshot", "name": "mute", "timeout": 60})
        )
        await wait_until(lambda: served.broker.statistics().pending == 1)
    await wait_until(lambda: served.broker.statistics().pending == 0)
    assert served.broker.statistics().cancelled == 1
    async with open_client(served.url, TOKEN) as client:  # the broker carries on
        assert (await client.status()).agents == {"running": 1}


async def test_a_connection_with_every_slot_taken_stops_reading(served: Served) -> None:
    """Requests past the connection's slots wait unread until one ends; none is dropped."""
    slots = MAX_REQUESTS_PER_CONNECTION
    await served.broker.spawn("mute", [*REFERENCE_WORKER, "--never-answer", "snapshot"])
    async with raw(served.url) as ws:
        for i in range(slots):  # each answered only at its deadline: 1 s, then 2 s
            timeout = 1 if i == 0 else 2
            request = {"id": i, "op": "snapshot", "name": "mute", "timeout": timeout}
            await ws.send_message(json.dumps(request))
        await wait_until(lambda: served.broker.statistics().pending == slots)
        await ws.send_message(json.dumps({"id": "status", "op": "status"}))
        with trio.fail_after(10):
            first = json.loads(await ws.get_message())
            second = json.loads(await ws.get_message())
        assert first["id"] == 0 and first["error"]["code"] == "timeout"
        assert second["id"] == "status" and second["ok"]  # read once a slot was free
    await wait_until(lambda: served.broker.statistics().pending == 0)


async def test_concurrent_requests_and_a_subscription_on_one_connection(served: Served) -> None:
    async with open_client(served.url, TOKEN) as client:
        async with client.subscribe(since=0) as events:
            async with trio.open_nursery() as nursery:
                for name in "abc":
                    nursery.start_soon(
                        lambda n: client.spawn(n, REFERENCE_WORKER, native=True), name
                    )
            seen: set[str] = set()
            with trio.fail_after(10):
                async for event in events:
                    if type(event).__name__ == "AgentSpawned":
                        seen.add(event.agent)
                    if seen == {"a", "b", "c"}:
                        break


async def test_a_slow_subscriber_gets_a_gap_and_slows_nobody(served: Served) -> None:
    async with raw(served.url) as slow, open_client(served.url, TOKEN) as fast:
        await slow.send_message(json.dumps({"id": "s", "op": "subscribe", "since": 0}))
        # The slow client reads nothing more; its socket fills, then the ring passes it by.
        for i in range(6000):
            served.broker.events.emit(AgentOutput(agent="x", offset=i * 1024, data="y" * 1024))
            if i % 500 == 0:
                await trio.lowlevel.checkpoint()
        with trio.fail_after(5):  # meanwhile, others are served
            assert (await fast.status()).last_seq == 6000
        gap = None
        with trio.fail_after(30):
            while gap is None:
                message = json.loads(await slow.get_message())
                gaps = [e for e in message.get("events", []) if e["kind"] == "gap"]
                gap = gaps[0] if gaps else None
        assert gap["first"] <= gap["last"] and gap["last"] < 6000


async def test_events_coming_fast_share_a_message_and_one_after_a_quiet_spell_goes_at_once(
    served: Served, autojump_clock: trio.testing.MockClock
) -> None:
    async def received() -> list[str]:
        with trio.fail_after(10):
            message = json.loads(await ws.get_message())
        return [event["data"] for event in message["events"]]

    def emit(data: str) -> None:
        served.broker.events.emit(AgentOutput(agent="x", offset=0, data=data))

    async with raw(served.url) as ws:
        assert (await ask(ws, {"id": "s", "op": "subscribe"}))["ok"]
        start = trio.current_time()
        emit("first")
        assert await received() == ["first"]
        assert trio.current_time() - start < EVENTS_COALESCE  # at once, after a quiet spell
        await trio.sleep(EVENTS_COALESCE * 0.25)
        emit("second")  # within the window: held until it ends
        await trio.sleep(EVENTS_COALESCE * 0.5)
        emit("third")
        assert await received() == ["second", "third"]  # one message, at the window's end
        assert trio.current_time() - start >= EVENTS_COALESCE
        await trio.sleep(EVENTS_COALESCE * 2)
        quiet = trio.current_time()
        emit("fourth")
        assert await received() == ["fourth"]
        assert trio.current_time() - quiet < EVENTS_COALESCE


async def test_an_agent_token_may_only_act_as_itself(served: Served) -> None:
    argv = [
        "sh",
        "-c",
        f'echo "token=$TRIO_RELAY_TOKEN url=$TRIO_RELAY_URL" >&2; exec {" ".join(REFERENCE_WORKER)}',
    ]
    await served.broker.spawn("alice", argv)
    await served.broker.spawn("bob", REFERENCE_WORKER)
    agent_token = served.server.agent_token("alice")
    await wait_until(lambda: f"token={agent_token} url={served.url}" in served.broker.logs("alice"))
    async with open_client(served.url, agent_token) as alice:
        assert [a.name for a in await alice.agents()] == ["alice"]
        assert (await alice.status()).you == "alice"
        assert await alice.logs("alice")
        for call in (
            alice.release("bob"),
            alice.release("alice"),
            alice.logs("bob"),
            alice.spawn("x", ["true"], native=True),
            alice.input("bob", "rm -rf /"),
            alice.shutdown(),
        ):
            with pytest.raises(RemoteError) as info:
                await call
            assert info.value.code == "forbidden"
    forged = f"agent.bob.{agent_token.rsplit('.', 1)[1]}"
    with pytest.raises(BrokerUnreachable, match="401"):
        async with open_client(served.url, forged):
            pass
    assert served.broker.agent("bob").state == "running"


async def test_unsubscribe_stops_the_stream(served: Served) -> None:
    async with raw(served.url) as ws:
        assert (await ask(ws, {"id": "s", "op": "subscribe"}))["ok"]
        assert (await ask(ws, {"id": 2, "op": "unsubscribe", "subscription": "s"}))["ok"]
        served.broker.events.emit(AgentOutput(agent="x", offset=0, data="after"))
        answer = await ask(ws, {"id": 3, "op": "status"})
        assert answer["id"] == 3  # no event arrived in between


async def test_send_waits_for_verification_and_is_listed(served: Served) -> None:
    async with open_client(served.url, TOKEN) as client:
        await client.spawn("w", REFERENCE_WORKER, native=True)
        queued = await client.send("w", "hello there", sender="boss")
        assert queued.state == "queued" and queued.evicted == []
        done = await client.send("w", "and again", wait=True, timeout=20)
        assert (done.state, done.verification, done.sender) == ("verified", "echo", "user")
        listed = {d.delivery_id: d for d in await client.deliveries("w")}
        assert set(listed) == {queued.delivery_id, done.delivery_id}
        assert listed[queued.delivery_id].sender == "boss"
        assert (await client.delivery(done.delivery_id)).body == "and again"
        with pytest.raises(RemoteError) as info:
            await client.send("ghost", "anyone?")
        assert info.value.code == "not_found"


async def test_an_agent_token_sends_as_itself_whatever_it_claims(served: Served) -> None:
    await served.broker.spawn("alice", REFERENCE_WORKER)
    await served.broker.spawn("bob", REFERENCE_WORKER)
    async with open_client(served.url, served.server.agent_token("alice")) as alice:
        sent = await alice.send("bob", "hi bob", sender="mallory", wait=True, timeout=20)
        assert sent.sender == "alice" and sent.state == "verified"
        for call in (
            alice.mode("bob"),
            alice.pending("bob"),
            alice.mode("alice", "hold"),
            alice.redeliver(sent.delivery_id),
            alice.dead_letters(),
        ):
            with pytest.raises(RemoteError) as info:
                await call
            assert info.value.code == "forbidden"


async def test_peers_wait_and_an_inbox_within_an_agents_scope(served: Served) -> None:
    for name in ("alice", "bob", "carol"):
        await served.broker.spawn(name, REFERENCE_WORKER, profile="generic")
    async with (
        open_client(served.url, served.server.agent_token("alice")) as alice,
        open_client(served.url, served.server.agent_token("bob")) as bob,
        open_client(served.url, TOKEN) as owner,
    ):
        assert [p.name for p in await alice.peers()] == ["bob", "carol"]
        assert [p.name for p in await owner.peers()] == ["alice", "bob", "carol"]
        first = await alice.send("bob", "one")
        second = await alice.send("bob", "two")
        for_carol = await owner.send("carol", "not for alice")
        done = await alice.wait(second.delivery_id, timeout=20)
        assert (done.state, done.sender) == ("verified", "alice")
        assert (await bob.wait(first.delivery_id, timeout=20)).state == "verified"
        inbox = await bob.deliveries("bob", states=["verified"])
        assert [d.body for d in inbox] == ["one", "two"]
        after = await bob.deliveries("bob", after=first.delivery_id)
        assert [d.delivery_id for d in after] == [second.delivery_id]
        assert await bob.deliveries("bob", after=second.delivery_id) == []
        for call in (
            alice.delivery(for_carol.delivery_id),
            alice.wait(for_carol.delivery_id, timeout=1),
            alice.deliveries("carol"),
            alice.deliveries(),
        ):
            with pytest.raises(RemoteError) as info:
                await call
            assert info.value.code == "forbidden"
            assert "alice" in info.value.message
        with pytest.raises(RemoteError) as info:
            await owner.deliveries(after="not-an-id")
        assert info.value.code == "not_found"
        with pytest.raises(RemoteError) as info:
            await owner.wait(for_carol.delivery_id, timeout=-1)
        assert info.value.code == "bad_request"


async def test_hold_pending_flush_and_dead_letters_over_the_channel() -> None:
    policy = DeliveryPolicy(ack_timeout=0.2, max_attempts=1)
    async with serving(delivery=policy) as (_, _, url), open_client(url, TOKEN) as client:
        await client.spawn("w", [*REFERENCE_WORKER, "--ignore-deliveries", "1"], native=True)
        assert (await client.mode("w", "hold")).mode == "hold"
        held = await client.send("w", "held back")
        pending = await client.pending("w")
        assert [d.delivery_id for d in pending.deliveries] == [held.delivery_id]
        assert (await client.flush("w")).count == 1
        with trio.fail_after(20):  # ignored once, one attempt allowed: a dead letter
            while (await client.delivery(held.delivery_id)).state != "dead_letter":
                await trio.sleep(0.05)
        (dead,) = await client.dead_letters()
        assert dead.delivery_id == held.delivery_id and dead.last_error
        await client.mode("w", "auto_inject")
        await client.redeliver(held.delivery_id)
        with trio.fail_after(20):
            while (await client.delivery(held.delivery_id)).state != "verified":
                await trio.sleep(0.05)
        assert await client.dead_letters() == []


async def test_on_shutdown_subscribers_get_the_last_events_then_a_reasoned_close(
    served: Served,
) -> None:
    async with open_client(served.url, TOKEN) as client:
        await client.spawn("w", REFERENCE_WORKER, native=True)
        async with client.subscribe(kinds=["agent_exited"]) as events:
            await served.broker.shutdown()
            await served.server.close_all("the broker is shutting down")
            with trio.fail_after(10):
                exited = await events.__anext__()
                assert exited.agent == "w" and exited.intended
                with pytest.raises(BrokerUnreachable, match="shutting down"):
                    await events.__anext__()
