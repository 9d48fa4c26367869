"""The HTTP port's two WebSockets: the native control protocol at /control (the Python
client works through it; keys and origins are checked as on the listener), and
agent-relay's /ws, which says replay_gap when asked for more than the broker holds."""

from __future__ import annotations

import base64
import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from trio_websocket import open_websocket_url

from trio_relay.client import open_client
from trio_relay.errors import BrokerUnreachable

pytestmark = pytest.mark.timeout(60)


async def test_the_control_protocol_at_slash_control(http_broker: Any) -> None:
    url = f"{http_broker.ws}/control"
    async with open_client(url=url, token=http_broker.token) as client:
        status = await client.status()
        assert status.pid == http_broker.relay.pid
        await client.spawn("c1", ["cat"])
        receipt = await client.send("c1", "through /control", wait=True, timeout=20)
        assert receipt.state == "verified"
    with pytest.raises(BrokerUnreachable, match="401"):
        async with open_client(url=url, token="wrong"):
            pass


def handshake(http_broker: Any, path: str, **headers: str) -> tuple[int, Any]:
    """A WebSocket upgrade request by hand: the status and the JSON body of a refusal."""
    address = urlsplit(http_broker.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
        "Sec-WebSocket-Version": "13",
    }
    connection.request("GET", path, headers={**upgrade, **headers})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, json.loads(body) if body.startswith(b"{") else body


async def test_a_foreign_origin_is_refused_on_both_websockets(http_broker: Any) -> None:
    key = {"X-API-Key": http_broker.token}
    for path in ("/control", "/ws"):
        status, _ = handshake(http_broker, path, Origin="http://attacker.example", **key)
        assert status == 403, path
        status, _ = handshake(http_broker, path)
        assert status == 401, path


@pytest.mark.up_options("--event-buffer", "16")
async def test_ws_says_replay_gap_when_the_history_is_gone(http_broker: Any) -> None:
    async with open_client(url=f"{http_broker.ws}/control", token=http_broker.token) as client:
        await client.spawn("c1", ["cat"])
        for n in range(12):  # each queued, injected, verified: far more than 16 events
            await client.send("c1", f"message {n}", wait=True, timeout=20)
        last_seq = (await client.status()).last_seq
    headers = [("X-API-Key", http_broker.token)]
    async with open_websocket_url(f"{http_broker.ws}/ws?sinceSeq=0", extra_headers=headers) as ws:
        with trio.fail_after(10):
            first = json.loads(await ws.get_message())
            second = json.loads(await ws.get_message())
    assert first["kind"] == "replay_gap"
    assert first["requestedSinceSeq"] == 0
    # An event may come between the status and the connection (cat turning idle, say).
    assert first["oldestAvailable"] >= last_seq - 16 + 1 > 1
    assert first["droppedCount"] == first["oldestAvailable"] - 1
    assert second["seq"] == first["oldestAvailable"], "then the oldest event held"
    status, body = handshake(http_broker, "/ws?sinceSeq=oops", **{"X-API-Key": http_broker.token})
    assert status == 400 and body["error"]["code"] == "invalid_request"


async def test_ws_from_a_seq_the_broker_never_reached_replays_what_it_holds(
    http_broker: Any,
) -> None:
    # a client that counted with an earlier run of the broker is not left waiting
    async with open_client(url=f"{http_broker.ws}/control", token=http_broker.token) as client:
        await client.spawn("c1", ["cat"])
    headers = [("X-API-Key", http_broker.token)]
    url = f"{http_broker.ws}/ws?sinceSeq=999999"
    async with open_websocket_url(url, extra_headers=headers) as ws:
        with trio.fail_after(10):
            first = json.loads(await ws.get_message())
            second = json.loads(await ws.get_message())
    assert first["kind"] == "replay_gap" and first["requestedSinceSeq"] == 999999
    assert (second["kind"], second["seq"]) == ("agent_spawned", 1)
