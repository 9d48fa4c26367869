"""agent-relay's delivery routes on trio-relay, through a real HTTP port: hold
(manual_flush), pending and flush; a dead letter listed and redelivered."""

from __future__ import annotations

import http.client
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from helpers import REFERENCE_WORKER

from trio_relay import DeliveryPolicy, open_broker
from trio_relay.control.server import ControlServer
from trio_relay.http.site import Site

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def site() -> AsyncIterator[tuple[Site, str]]:
    token = secrets.token_urlsafe(16)
    policy = DeliveryPolicy(ack_timeout=0.2, max_ack_timeout=0.2, max_attempts=2)
    async with open_broker(delivery=policy) as broker, trio.open_nursery() as nursery:
        site = Site(ControlServer(broker, token), token, host="127.0.0.1")
        await nursery.start(site.serve, "127.0.0.1", 0)
        yield site, token
        nursery.cancel_scope.cancel()


async def call(site: tuple[Site, str], method: str, path: str, body: Any = None) -> Any:
    served, token = site

    def request() -> tuple[int, Any]:
        address = urlsplit(served.url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
        data = None if body is None else json.dumps(body)
        connection.request(method, path, body=data, headers={"X-API-Key": token})
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        return response.status, answer

    status, answer = await trio.to_thread.run_sync(request)
    assert status == 200, answer
    return answer


async def until(site: tuple[Site, str], path: str, test: Any, what: str) -> Any:
    with trio.fail_after(20):
        while not test(found := await call(site, "GET", path)):
            await trio.sleep(0.05)
    return found


async def test_hold_pending_and_flush(site: tuple[Site, str]) -> None:
    await call(site, "POST", "/api/spawn", {"name": "c1", "cli": "cat"})
    await until(site, "/api/spawned", lambda r: r["agents"][0]["activity"] == "idle", "idle")
    held = await call(site, "PUT", "/api/spawned/c1/delivery-mode", {"mode": "manual_flush"})
    assert held["mode"] == "manual_flush" and held["matched"] is True
    assert (await call(site, "GET", "/api/spawned/c1/delivery-mode"))["mode"] == "manual_flush"
    missed = await call(
        site,
        "PUT",
        "/api/spawned/c1/delivery-mode",
        {"mode": "auto_inject", "expected_mode": "auto_inject"},
    )
    assert missed == {"mode": "manual_flush", "flushed": 0, "matched": False}
    sent = [
        (await call(site, "POST", "/api/send", {"to": "c1", "text": f"held {n}"}))["delivery_id"]
        for n in range(2)
    ]
    pending = (await call(site, "GET", "/api/spawned/c1/pending"))["pending"]
    assert [(p["delivery_id"], p["body"], p["target"]) for p in pending] == [
        (sent[0], "held 0", "c1"),
        (sent[1], "held 1", "c1"),
    ]
    assert (await call(site, "POST", "/api/spawned/c1/flush"))["flushed"] == 2
    await until(site, "/api/spawned/c1/pending", lambda r: not r["pending"], "delivered")


async def test_a_dead_letter_is_listed_and_redelivered(site: tuple[Site, str]) -> None:
    # a worker that drops the first two deliveries unacknowledged: two attempts, then dead
    worker = [*REFERENCE_WORKER, "--ignore-deliveries", "2"]
    operations = site[0].server.operations
    await operations.broker.spawn("w1", worker)
    sent = await call(site, "POST", "/api/send", {"to": "w1", "text": "try me"})
    found = await until(site, "/api/dead-letters", lambda r: r["count"] == 1, "a dead letter")
    dead = found["dead_letters"][0]
    assert (dead["delivery_id"], dead["worker_name"], dead["attempts"]) == (
        sent["delivery_id"],
        "w1",
        2,
    )
    assert dead["reason"]
    again = await call(site, "POST", "/api/dead-letters/redeliver", {"id": dead["delivery_id"]})
    assert again["redelivered"] == [
        {"delivery_id": dead["delivery_id"], "worker_name": "w1", "event_id": dead["delivery_id"]}
    ]
    await until(site, "/api/dead-letters", lambda r: r["count"] == 0, "delivered this time")
    record = await operations.broker.delivery(dead["delivery_id"])
    assert record.state == "verified"
