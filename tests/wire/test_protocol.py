"""Every worker frame and broker event round-trips; bad frames give errors naming the field."""

from __future__ import annotations

import typing

import pytest

from trio_relay.errors import ProtocolError
from trio_relay.wire import protocol as p

WORKER_FRAMES = [
    p.WorkerHello(protocol=1, worker="pty", pid=42),
    p.Response(request_id="1a", payload={"text": "hi", "n": [1, 2]}),
    p.Response(request_id="1b", error=p.ErrorInfo("bad", "it broke")),
    p.Ready(),
    p.Output(offset=1024, data="héllo\x1b[0m"),
    p.Idle(),
    p.Exited(code=3),
    p.Exited(signal=9),
    p.DeliveryInjected(delivery_id="d1"),
    p.DeliveryVerified(delivery_id="d1", verification="echo"),
    p.DeliveryVerified(delivery_id="d2", verification="timeout_fallback", reason="not seen in 5 s"),
    p.DeliveryFailed(delivery_id="d3", reason="write failed"),
]

BROKER_FRAMES = [
    p.BrokerHello(),
    p.Shutdown(),
    p.WriteInput(data="ls\r\x03"),
    p.WriteInput(data="x", request_id="7"),
    p.Resize(rows=40, cols=120),
    p.Deliver(delivery_id="d1", sender="alice", body="hello\nworld", thread="t1"),
    p.Ping(request_id="1", data=[1, "two"]),
    p.Snapshot(request_id="2", ansi=True),
    p.Mode(request_id="3", set="hold"),
    p.Mode(request_id="4"),
    p.Pending(request_id="5"),
    p.Flush(request_id="6"),
]

EVENTS = [
    p.AgentSpawned(agent="a", pid=1, argv=["x"], attempt=2, seq=1, time=1.5),
    p.AgentReady(agent="a"),
    p.AgentIdle(agent="a"),
    p.AgentOutput(agent="a", offset=3, data="out"),
    p.AgentExited(agent="a", code=None, signal=9, intended=False, reason="killed by SIGKILL"),
    p.SpawnFailedEvent(agent="a", error="No such file", errno=2),
    p.AgentRestarting(agent="a", attempt=1, delay=0.5),
    p.AgentGaveUp(agent="a", attempts=10, reason="exited with code 1"),
    p.WorkerProtocolError(agent="a", error="not JSON", excerpt="garbage"),
    p.DeliveryInjectedEvent(agent="a", delivery_id="d"),
    p.DeliveryVerifiedEvent(agent="a", delivery_id="d", verification="echo"),
    p.DeliveryUnverifiedEvent(
        agent="a", delivery_id="d", verification="timeout_fallback", reason="not seen in 5 s"
    ),
    p.DeliveryFailedEvent(agent="a", delivery_id="d", reason="r"),
    p.DeliveryQueuedEvent(agent="a", delivery_id="d", sender="b", thread="t"),
    p.DeliveryDroppedEvent(agent="a", delivery_id="d", reason="cap", evicted_by="e"),
    p.DeliveryRequeuedEvent(agent="a", delivery_id="d", reason="killed by SIGKILL"),
    p.DeliveryRetryingEvent(agent="a", delivery_id="d", attempt=2, error="no ack"),
    p.DeadLetterEvent(agent="a", delivery_id="d", attempts=5, error="no ack"),
    p.StoreErrorEvent(operation="queue a delivery", error="database is locked"),
    p.Gap(first=3, last=9),
]


def kinds(union: object) -> set[type]:
    return set(typing.get_args(union))


def test_every_kind_has_a_sample() -> None:
    # A kind added to a union without a round-trip sample here fails this test.
    assert {type(f) for f in WORKER_FRAMES} == kinds(p.WorkerFrame)
    assert {type(f) for f in BROKER_FRAMES} == kinds(p.BrokerFrame)
    assert {type(e) for e in EVENTS} == kinds(p.BrokerEvent)


@pytest.mark.parametrize("frame", WORKER_FRAMES, ids=lambda f: type(f).__name__)
def test_worker_frames_round_trip(frame: object) -> None:
    line = p.encode(frame)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert p.decode_worker_frame(line) == frame


@pytest.mark.parametrize("frame", BROKER_FRAMES, ids=lambda f: type(f).__name__)
def test_broker_frames_round_trip(frame: object) -> None:
    assert p.decode_broker_frame(p.encode(frame)) == frame


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_round_trip(event: object) -> None:
    assert p.decode_event(p.encode(event)) == event


def test_deliver_uses_from_on_the_wire() -> None:
    line = p.encode(p.Deliver(delivery_id="d", sender="bob", body="b"))
    assert b'"from":"bob"' in line


def test_generic_request_encoding_matches_the_typed_frame() -> None:
    line = p.encode_request("snapshot", "9", {"ansi": True})
    assert p.decode_broker_frame(line) == p.Snapshot(request_id="9", ansi=True)


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
        p.decode_worker_frame(line)
    for name in names:
        assert name in str(info.value)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert p.decode_worker_frame(b'{"kind":"idle","since":12}') == p.Idle()


@pytest.mark.parametrize("kind", ["hello", "shutdown", "resize", "deliver", "response", ""])
def test_encode_request_refuses_kinds_that_are_not_requests(kind: str) -> None:
    with pytest.raises(ValueError):
        p.encode_request(kind, "1", None)


def test_encode_request_refuses_payload_that_overrides_the_envelope() -> None:
    with pytest.raises(ValueError):
        p.encode_request("ping", "1", {"request_id": "evil"})
