"""Fuzzing bad input with Hypothesis: WebSocket messages to the control server, and bytes
on a worker's stdout. Each example runs in its own ``trio.run`` with a fresh broker, a
healthy reference worker and (for the stdout fuzz) a stub worker that writes whatever it is
told to (tests/support/fuzz_worker.py). After each example the broker must have answered or
reported every input, and the healthy agent must still answer.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from helpers import REFERENCE_WORKER, SUPPORT
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed
from ws_raw import raw, serving

from trio_relay import WorkerExited, open_broker
from trio_relay.errors import ProtocolError
from trio_relay.wire import (
    AgentExited,
    Exited,
    WorkerHello,
    WorkerProtocolError,
    decode_worker_frame,
)
from trio_relay.wire.lines import DEFAULT_MAX_LINE, LineSplitter, OversizedLine

HEALTHY = "healthy-agent-7f3"  # a name random input will not hit
FUZZ_WORKER = [sys.executable, str(SUPPORT / "fuzz_worker.py")]
STABLE_CODES = {
    "bad_request",
    "not_found",
    "conflict",
    "timeout",
    "store_error",
    "worker_error",
    "worker_exited",
    "forbidden",
}
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- control messages

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Every operation but spawn (it would run generated commands) and those that act on the
# healthy agent by name (it is not in the generated names).
OPS = [
    "status",
    "agents",
    "release",
    "send",
    "deliveries",
    "delivery",
    "dead_letters",
    "redeliver",
    "input",
    "resize",
    "snapshot",
    "mode",
    "pending",
    "flush",
    "logs",
    "shutdown",
    "subscribe",
    "unsubscribe",
]
FIELDS = [
    "name",
    "to",
    "body",
    "data",
    "rows",
    "cols",
    "timeout",
    "limit",
    "states",
    "since",
    "kinds",
    "agent",
    "delivery_id",
    "subscription",
    "wait",
    "set",
    "lines",
    "ansi",
    "sender",
]
requestish = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.integers(), st.text(max_size=10), json_values),
        "op": st.one_of(st.sampled_from(OPS), st.text(max_size=10), json_values),
        **{f: json_values for f in FIELDS},
    },
)


def nested(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


messages = st.one_of(
    json_values.map(json.dumps),
    requestish.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.tuples(st.integers(10, 100_000), st.sampled_from(["list", "dict"])).map(
        lambda t: nested(*t)
    ),
    st.integers(100_000, 1_000_000).map(
        lambda n: json.dumps({"id": 1, "op": "status", "x": "y" * n})
    ),
    st.integers(100_000, 1_000_000).map(
        lambda n: json.dumps({"id": "big", "op": "send", "to": "nobody", "body": "z" * n})
    ),
)


def expected_id(message: str | bytes) -> Any:
    """The id an answer must carry: the request's own if it is a valid one, else null."""

    def refuse(constant: str) -> None:
        raise ValueError(constant)  # NaN and Infinity are not JSON

    try:
        obj = json.loads(message, parse_constant=refuse)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, (int, str)) and not isinstance(rid, bool):
            return rid
    return None


@asynccontextmanager
async def healthy_and_served() -> AsyncIterator[str]:
    """A broker with a healthy agent and its control server, for the block; yields the url.
    After the block the healthy agent must still answer."""
    async with serving() as (broker, _, url):
        await broker.spawn(HEALTHY, REFERENCE_WORKER)
        yield url
        assert await broker.request_worker(HEALTHY, "ping", {"data": 1}, timeout=10) == {"data": 1}


# A passing run takes seconds; the headroom is for shrinking a failure to its minimal
# example (each attempt starts a broker and workers), which the 60 s default would cut off.
@pytest.mark.timeout(180)
@FUZZ
@given(st.lists(messages, min_size=1, max_size=5))
def test_control_channel_answers_every_message_and_agents_keep_working(batch: list[Any]) -> None:
    note(f"messages: {[m[:200] for m in batch]}")

    async def main() -> None:
        async with healthy_and_served() as url, raw(url) as ws:
            for message in batch:
                await ws.send_message(message)
                with trio.fail_after(10):
                    while True:  # events of a subscription may come first
                        answer = json.loads(await ws.get_message())
                        if "event" not in answer and "events" not in answer:
                            break
                note(f"answer: {str(answer)[:300]}")
                assert set(answer) >= {"id", "ok"}, answer
                want = expected_id(message) if isinstance(message, str) else None
                assert answer["id"] == want, f"answer {answer} for id {want!r}"
                if not answer["ok"]:
                    assert answer["error"]["code"] in STABLE_CODES, answer
            # the same connection still works, and so does the agent
            await ws.send_message(json.dumps({"id": "last", "op": "status"}))
            with trio.fail_after(10):
                while (last := json.loads(await ws.get_message())).get("id") != "last":
                    pass
            assert last["ok"] and last["result"]["agents"].get("running") == 1

    trio.run(main)


def test_an_oversized_message_closes_only_its_connection_and_agents_keep_working() -> None:
    async def main() -> None:
        async with healthy_and_served() as url:
            async with raw(url) as ws:
                try:
                    with trio.fail_after(10):
                        await ws.send_message("[" * (1024 * 1024 + 1))
                        await ws.get_message()
                    raise AssertionError("an oversized message was taken")
                except ConnectionClosed as exc:
                    assert exc.reason.code == 1009
            async with raw(url) as ws:
                await ws.send_message(json.dumps({"id": 1, "op": "agents"}))
                with trio.fail_after(10):
                    answer = json.loads(await ws.get_message())
                assert [a["name"] for a in answer["result"]] == [HEALTHY]

    trio.run(main)


# ---------------------------------------------------------------- worker stdout

frames = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(
            [
                "response",
                "output",
                "ready",
                "idle",
                "exited",
                "hello",
                "delivery_injected",
                "delivery_verified",
                "delivery_failed",
                "bogus",
            ]
        )
    },
    optional={
        "request_id": st.one_of(st.text(max_size=6), json_values),
        "payload": json_values,
        "error": json_values,
        "data": json_values,
        "offset": json_values,
        "delivery_id": json_values,
        "verification": json_values,
        "reason": json_values,
        "protocol": json_values,
        "code": json_values,
    },
).map(lambda f: json.dumps(f).encode())
chunks = st.one_of(
    st.binary(max_size=300),
    frames,
    frames.map(lambda b: b[: len(b) // 2]),  # a partial frame
    st.just(b'{"kind":"response","request_id":'),
    st.just(b"\n"),
    st.text(max_size=50).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
outputs = st.one_of(
    st.lists(chunks, max_size=8).map(lambda parts: (b"\n".join(parts), 1)),
    st.tuples(st.binary(min_size=1, max_size=64), st.integers(1, 3 * DEFAULT_MAX_LINE // 64)).map(
        lambda t: (t[0].replace(b"\n", b"x"), t[1])  # a huge line (often over the limit)
    ),
)


def expected_errors(data: bytes) -> int:
    """How many protocol errors the broker must report for ``data`` + newline: oversized
    lines, undecodable lines, second hellos, and exited frames that carry neither a code
    nor a signal."""
    errors = 0
    for line in LineSplitter(DEFAULT_MAX_LINE).feed(data + b"\n"):
        if isinstance(line, OversizedLine):
            errors += 1
            continue
        try:
            frame = decode_worker_frame(line)
        except ProtocolError:
            errors += 1
            continue
        errors += type(frame) is WorkerHello
        errors += type(frame) is Exited and frame.code is None and frame.signal is None
    return errors


@pytest.mark.timeout(180)
@FUZZ
@given(outputs, st.one_of(st.none(), st.binary(max_size=100)))
def test_worker_stdout_garbage_is_reported_and_agents_keep_working(
    output: tuple[bytes, int], last_words: bytes | None
) -> None:
    data, repeat = output
    note(f"output {data[:300]!r} x {repeat}; then exits after writing {last_words!r}")

    async def main() -> None:
        async with open_broker() as broker:
            await broker.spawn(HEALTHY, REFERENCE_WORKER)
            await broker.spawn("fuzz", FUZZ_WORKER)
            since = broker.events.last_seq
            with trio.fail_after(20):
                answer = await broker.request_worker(
                    "fuzz", "emit", {"hex": data.hex(), "repeat": repeat}, timeout=20
                )
            assert answer == {"n": len(data) * repeat}  # the reader is in step again
            errors = [
                e
                for e in broker.events.since(since)
                if isinstance(e, WorkerProtocolError) and e.agent == "fuzz"
            ]
            assert len(errors) == expected_errors(data * repeat), [e.error for e in errors]
            assert broker.agent("fuzz").protocol_errors == len(errors)
            assert await broker.request_worker("fuzz", "ping", timeout=10) == {"pong": True}
            assert await broker.request_worker(HEALTHY, "ping", {"data": 3}, timeout=10) == {
                "data": 3
            }
            if last_words is not None:  # a partial frame, then death: reported, not a hang
                since = broker.events.last_seq
                try:
                    with trio.fail_after(20):
                        await broker.request_worker(
                            "fuzz",
                            "emit_and_exit",
                            {"hex": last_words.hex(), "code": 5},
                            timeout=20,
                        )
                    raise AssertionError("answered after exiting")
                except WorkerExited as exc:
                    # an `exited` frame among the last words would name another code
                    assert exc.code is not None or exc.signal is not None
                exits = [e for e in broker.events.since(since) if isinstance(e, AgentExited)]
                assert [(e.agent, e.intended) for e in exits] == [("fuzz", False)]
                assert await broker.request_worker(HEALTHY, "ping", {"data": 4}, timeout=10) == {
                    "data": 4
                }

    trio.run(main)
