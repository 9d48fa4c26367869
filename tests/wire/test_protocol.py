"""Every worker frame and broker event round-trips; bad frames give errors naming the field."""

from __future__ import annotations

import typing

import pytest

from trio_relay import wire
from trio_relay.errors import ProtocolError

WORKER_FRAMES = [
    wire.WorkerHello(protocol=1, worker="pty", pid=42),
    wire.Response(request_id="1a", payload={"text": "hi", "n": [1, 2]}),
    wire.Response(request_id="1b", error=wire.ErrorInfo("bad", "it broke")),
    wire.Ready(),
    wire.Output(offset=1024, data="héllo\x1b[0m"),
    wire.Idle(),
    wire.ActivityChanged(activity="attention", text="Do you trust this folder?", waiting="x"),
    wire.Exited(code=3),
    wire.Exited(signal=9),
    wire.DeliveryInjected(delivery_id="d1"),
    wire.DeliveryVerified(delivery_id="d1", verification="echo"),
    wire.DeliveryVerified(
        delivery_id="d2", verification="timeout_fallback", reason="not seen in 5 s"
    ),
    wire.DeliveryFailed(delivery_id="d3", reason="write failed"),
]

BROKER_FRAMES = [
    wire.BrokerHello(),
    wire.Shutdown(),
    wire.WriteInput(data="ls\r\x03"),
    wire.WriteInput(data="x", request_id="7"),
    wire.Resize(rows=40, cols=120),
    wire.Deliver(delivery_id="d1", sender="alice", body="hello\nworld", thread="t1"),
    wire.Ping(request_id="1", data=[1, "two"]),
    wire.Snapshot(request_id="2", ansi=True),
    wire.Mode(request_id="3", set="hold"),
    wire.Mode(request_id="4"),
    wire.Pending(request_id="5"),
    wire.Flush(request_id="6"),
]

EVENTS = [
    wire.AgentSpawned(agent="a", pid=1, argv=["x"], attempt=2, seq=1, time=1.5),
    wire.AgentReady(agent="a"),
    wire.AgentIdle(agent="a"),
    wire.AgentActivity(agent="a", from_="starting", to="idle", text="❯"),
    wire.AgentOutput(agent="a", offset=3, data="out"),
    wire.AgentResized(agent="a", rows=30, cols=100),
    wire.AgentExited(agent="a", code=None, signal=9, intended=False, reason="killed by SIGKILL"),
    wire.SpawnFailedEvent(agent="a", error="No such file", errno=2),
    wire.AgentRestarting(agent="a", attempt=1, delay=0.5),
    wire.AgentGaveUp(agent="a", attempts=10, reason="exited with code 1"),
    wire.WorkerProtocolError(agent="a", error="not JSON", excerpt="garbage"),
    wire.DeliveryInjectedEvent(agent="a", delivery_id="d"),
    wire.DeliveryVerifiedEvent(agent="a", delivery_id="d", verification="echo"),
    wire.DeliveryUnverifiedEvent(
        agent="a", delivery_id="d", verification="timeout_fallback", reason="not seen in 5 s"
    ),
    wire.DeliveryFailedEvent(agent="a", delivery_id="d", reason="r"),
    wire.DeliveryQueuedEvent(agent="a", delivery_id="d", sender="b", thread="t"),
    wire.DeliveryDroppedEvent(agent="a", delivery_id="d", reason="cap", evicted_by="e"),
    wire.DeliveryRequeuedEvent(agent="a", delivery_id="d", reason="killed by SIGKILL"),
    wire.DeliveryRetryingEvent(agent="a", delivery_id="d", attempt=2, error="no ack"),
    wire.DeadLetterEvent(agent="a", delivery_id="d", attempts=5, error="no ack"),
    wire.StoreErrorEvent(operation="queue a delivery", error="database is locked"),
    wire.ClusterEvent(broker="gpu-host", agent="a", event={"kind": "agent_ready", "seq": 3}),
    wire.Gap(first=3, last=9),
]


def kinds(union: object) -> set[type]:
    return set(typing.get_args(union))


def test_every_kind_has_a_sample() -> None:
    # A kind added to a union without a round-trip sample here fails this test.
    assert {type(f) for f in WORKER_FRAMES} == kinds(wire.WorkerFrame)
    assert {type(f) for f in BROKER_FRAMES} == kinds(wire.BrokerFrame)
    assert {type(e) for e in EVENTS} == kinds(wire.BrokerEvent)


@pytest.mark.parametrize("frame", WORKER_FRAMES, ids=lambda f: type(f).__name__)
def test_worker_frames_round_trip(frame: object) -> None:
    line = wire.encode(frame)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert wire.decode_worker_frame(line) == frame


@pytest.mark.parametrize("frame", BROKER_FRAMES, ids=lambda f: type(f).__name__)
def test_broker_frames_round_trip(frame: object) -> None:
    assert wire.decode_broker_frame(wire.encode(frame)) == frame


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_round_trip(event: object) -> None:
    assert wire.decode_event(wire.encode(event)) == event


def test_deliver_uses_from_on_the_wire() -> None:
    line = wire.encode(wire.Deliver(delivery_id="d", sender="bob", body="b"))
    assert b'"from":"bob"' in line


def test_generic_request_encoding_matches_the_typed_frame() -> None:
    line = wire.encode_request("snapshot", "9", {"ansi": True})
    assert wire.decode_broker_frame(line) == wire.Snapshot(request_id="9", ansi=True)


@pytest.mark.parametrize(
    ("line", "names"),
    [
        (b'{"kind":"teleport"}', ["teleport", "$.kind"]),
        (b'{"kind":"output","offset":"ten","data":"x"}', ["int", "$.offset"]),
        (b'{"kind":"response"}', ["request_id"]),
        (
            b'{"kind":"delivery_verified","delivery_id":"d","verification":"vibes"}',
            ["$.verification"],
        ),
        (b'{"offset":1}', ["kind"]),
        (b"not json at all", ["not JSON"]),
        (b"[1,2]", ["object"]),
    ],
)
def test_bad_frames_name_the_problem(line: bytes, names: list[str]) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.decode_worker_frame(line)
    for name in names:
        assert name in str(info.value)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert wire.decode_worker_frame(b'{"kind":"idle","since":12}') == wire.Idle()


@pytest.mark.parametrize("kind", ["hello", "shutdown", "resize", "deliver", "response", ""])
def test_encode_request_refuses_kinds_that_are_not_requests(kind: str) -> None:
    with pytest.raises(ValueError):
        wire.encode_request(kind, "1", None)


def test_the_kinds_that_are_not_requests_are_the_envelope_less_broker_frames_and_response() -> None:
    assert wire.NOT_REQUEST_KINDS == {"hello", "shutdown", "resize", "deliver", "response"}


def test_encode_request_refuses_payload_that_overrides_the_envelope() -> None:
    with pytest.raises(ValueError):
        wire.encode_request("ping", "1", {"request_id": "evil"})
