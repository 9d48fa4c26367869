"""Brokers as hosts: two or three real brokers (`up --detach --cluster`), each in its own
state directory, on one real PostgreSQL server, used through the CLI and the Python
client as a user would."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio
from cluster_brokers import Brokers, brokers, cli  # noqa: F401
from helpers import Relay, relay, wait_for
from postgres_fixtures import cluster_dsn, postgres_server  # noqa: F401

from trio_relay import open_client
from trio_relay.wire import DeliveryRecord

pytestmark = pytest.mark.timeout(120)

REFERENCE = [sys.executable, "-m", "trio_relay.worker.reference"]


def test_a_message_sent_on_one_broker_reaches_an_agent_of_another(brokers: Brokers) -> None:  # noqa: F811
    a, b = brokers.start("A"), brokers.start("B")
    cli(b, "spawn", "bob", "--", "bash", "--norc")

    listed = {agent["name"]: agent for agent in cli(a, "ps", "--cluster", json_out=True)}
    assert listed["bob"]["broker"] == "B"
    assert listed["bob"]["state"] == "running"

    sent = cli(a, "send", "bob", "echo cross-$((40+2))", "--wait", "--timeout", "20", json_out=True)
    assert sent["state"] == "verified", sent
    assert sent["delivery_id"].startswith("cluster-")
    wait_for(lambda: "echo cross-$((40+2))" in cli(b, "snapshot", "bob"))  # typed there

    # The same delivery, as every broker sees it.
    seen_on_b = cli(b, "deliveries", "bob", json_out=True)
    assert [d["delivery_id"] for d in seen_on_b] == [sent["delivery_id"]]
    assert seen_on_b[0]["state"] == "verified"
    waited = trio.run(wait_on, b, sent["delivery_id"])
    assert waited.state == "verified"


async def wait_on(broker: Relay, delivery_id: str) -> DeliveryRecord:
    async with open_client(state_dir=broker.state) as client:
        return await client.wait(delivery_id, timeout=10)


def test_names_are_unique_across_the_cluster(brokers: Brokers) -> None:  # noqa: F811
    a, b = brokers.start("A"), brokers.start("B")
    cli(b, "spawn", "bob", "--", "bash", "--norc")
    again = relay("--state-dir", a.state, "spawn", "bob", "--", "bash", "--norc")
    assert again.returncode != 0
    assert "bob" in again.stderr and "'B'" in again.stderr, again.stderr
    # A second live broker may not take a name that is held.
    taken = relay(
        "up", "--detach", "--state-dir", str(brokers.root / "other"), "--cluster", brokers.dsn,
        "--broker-name", "B",
    )  # fmt: skip
    assert taken.returncode != 0
    assert "held by another live broker" in taken.stderr, taken.stderr


def test_an_unknown_agent_is_not_found_and_nothing_is_accepted(brokers: Brokers) -> None:  # noqa: F811
    a = brokers.start("A")
    refused = relay("--state-dir", a.state, "send", "nobody", "hello")
    assert refused.returncode != 0
    assert "nobody" in refused.stderr
    assert cli(a, "deliveries", json_out=True) == []


def test_a_dead_brokers_agents_show_as_unreachable_and_come_back_with_it(
    brokers: Brokers,  # noqa: F811
) -> None:
    a, b = brokers.start("A"), brokers.start("B")
    cli(b, "spawn", "bob", "--", "bash", "--norc")
    brokers.kill("B")

    def bob_state() -> str:
        return {x["name"]: x for x in cli(a, "ps", "--cluster", json_out=True)}["bob"]["state"]

    wait_for(lambda: bob_state() == "unreachable", timeout=10)
    refused = relay("--state-dir", a.state, "send", "bob", "echo lost")
    assert refused.returncode != 0
    assert "unreachable" in refused.stderr, refused.stderr

    brokers.start("B")  # the same state directory: the same broker, its agent respawned
    wait_for(lambda: bob_state() == "running", timeout=15)
    sent = cli(a, "send", "bob", "echo back-$((1+1))", "--wait", "--timeout", "20", json_out=True)
    assert sent["state"] == "verified", sent


def test_cluster_events_name_their_broker(brokers: Brokers) -> None:  # noqa: F811
    a, b = brokers.start("A"), brokers.start("B")
    cli(b, "spawn", "bob", "--", *REFERENCE)
    sent = cli(a, "send", "bob", "hello", "--wait", "--timeout", "20", json_out=True)
    assert sent["state"] in ("verified", "unverified"), sent

    def lines() -> list[dict]:
        out = relay("--json", "--state-dir", a.state, "events", "--cluster").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def verified_event() -> bool:
        found = [
            e for e in lines()
            if e["kind"] == "cluster_event" and e["event"].get("cluster_id") == sent["delivery_id"]
        ]  # fmt: skip
        return any(e["broker"] == "B" and e["agent"] == "bob" for e in found)

    wait_for(verified_event, timeout=10)
    plain = relay("--state-dir", a.state, "events", "--cluster")
    assert "[B] delivery_" in plain.stdout


def test_a_broker_outside_a_cluster_says_how_to_join_one(tmp_path: Path) -> None:
    state = str(tmp_path / "solo")
    up = relay("up", "--detach", "--state-dir", state)
    assert up.returncode == 0, up.stderr
    try:
        listed = relay("--state-dir", state, "ps", "--cluster")
        assert listed.returncode != 0
        assert "--cluster postgresql://" in listed.stderr
    finally:
        relay("down", "--state-dir", state)


def test_an_unreachable_postgresql_is_a_clear_error(tmp_path: Path) -> None:
    state = str(tmp_path / "nowhere")
    up = relay(
        "up", "--detach", "--state-dir", state, "--cluster",
        f"postgresql://postgres@/postgres?host={tmp_path}&connect_timeout=2",
    )  # fmt: skip
    assert up.returncode != 0
    assert "cannot join the cluster" in up.stdout + up.stderr


def test_snapshot_and_input_reach_an_agent_through_its_broker(brokers: Brokers) -> None:  # noqa: F811
    a, b = brokers.start("A"), brokers.start("B")
    cli(b, "spawn", "bob", "--", "bash", "--norc")
    cli(a, "input", "bob", "echo typed-$((6*7))\r")
    wait_for(lambda: "typed-42" in cli(a, "snapshot", "bob"))  # run on B, read through A
    assert "typed-42" in cli(b, "snapshot", "bob")
    missing = relay("--state-dir", a.state, "snapshot", "nobody")
    assert missing.returncode != 0 and "nobody" in missing.stderr
    brokers.kill("B")
    refused = relay("--state-dir", a.state, "snapshot", "bob")
    assert refused.returncode != 0
    assert "B" in refused.stderr, refused.stderr
