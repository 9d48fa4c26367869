"""The PTY worker's sans-IO core, driven directly: frames and program output in, frames,
terminal input and signals out, on a clock the test moves. No process, no terminal."""

from __future__ import annotations

import errno
import signal

import pytest
from fake_terminal import Terminal, ready

from trio_relay.wire import (
    Deliver,
    DeliveryFailed,
    DeliveryInjected,
    DeliveryVerified,
    Exited,
    Idle,
    Output,
    Pending,
    Ready,
    Response,
    Shutdown,
    WorkerHello,
    WriteInput,
)


def test_hello_then_ready_after_the_settle_period_then_idle() -> None:
    terminal = Terminal()
    assert terminal.frames == [WorkerHello(protocol=1, worker="pty", pid=10, program_pid=11)]
    terminal.advance(0.2)
    terminal.output(b"$ ")  # output restarts the settle period
    terminal.advance(0.2)
    assert not terminal.of(Ready)
    terminal.advance(0.05)
    assert terminal.of(Ready) and terminal.time_of(Ready) == pytest.approx(100.45)
    terminal.advance(2.0)
    assert len(terminal.of(Idle)) == 1 and terminal.time_of(Idle) == pytest.approx(102.45)


def test_output_frames_coalesce_after_quiet_within_16_ms_or_4_kib() -> None:
    terminal = ready()
    terminal.output(b"a")
    terminal.advance(0.001)
    assert not terminal.of(Output)
    terminal.advance(0.001)  # 2 ms of quiet
    assert terminal.of(Output) == [Output(offset=2, data="a")]  # after the "$ " drawn
    start = terminal.now
    for _ in range(20):  # a flood: a frame after 16 ms, though never quiet for 2 ms
        terminal.output(b"b")
        terminal.advance(0.0015)
    flood = terminal.of(Output)[1]
    assert flood.offset == 3 and flood.data == "b" * 11  # read at 0, 1.5, ... 15 ms
    assert terminal.time_of(Output, offset=3) == pytest.approx(start + 0.016)
    terminal.advance(1)
    terminal.output(b"c" * 3000)
    terminal.output(b"d" * 3000)  # it would not fit: the batch goes out first
    terminal.output(b"d" * 1096)  # 4 KiB: at once
    assert [len(f.data) for f in terminal.of(Output)] == [1, 11, 9, 3000, 4096]


def test_typing_is_paced_by_the_key_and_enter_delays_and_verified_by_the_echo() -> None:
    terminal = ready(chunk=16)
    terminal.advance(1)
    terminal.send(Deliver(delivery_id="d1", sender="a", body="x" * 20))
    start = terminal.now
    terminal.advance(0.1)
    text = b"Relay message from a [d1]: " + b"x" * 20
    chunks = [text[i : i + 16] for i in range(0, len(text), 16)]
    assert [data for _, data in terminal.written] == [*chunks, b"\r"]
    times = [when - start for when, _ in terminal.written]
    assert times == pytest.approx([0, 0.005, 0.010, 0.010 + 0.03])
    assert terminal.time_of(DeliveryInjected) == pytest.approx(start + 0.04)
    assert terminal.of(DeliveryVerified) == [DeliveryVerified("d1", "echo")]


def test_unverified_after_the_verify_timeout_and_never_typed_twice() -> None:
    terminal = ready(echo=False)
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hi"))
    terminal.advance(5.02)  # typed, Enter after 0.03 s: verify_timeout counts from there
    assert not terminal.of(DeliveryVerified)
    terminal.advance(0.02)
    (verified,) = terminal.of(DeliveryVerified)
    assert verified.verification == "timeout_fallback" and "within 5 s" in verified.reason
    typed = len(terminal.written)
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hi"))  # redelivered
    terminal.advance(1)
    assert len(terminal.written) == typed and len(terminal.of(DeliveryVerified)) == 2


def test_a_delivery_that_failed_to_type_may_be_typed_again_but_a_typed_one_never() -> None:
    terminal = ready()
    terminal.refuse = OSError(errno.EIO, "no")
    terminal.send(Deliver(delivery_id="failed", sender="a", body="b"))
    assert terminal.of(DeliveryFailed, delivery_id="failed")
    terminal.refuse = None
    terminal.send(Deliver(delivery_id="typed", sender="a", body="b"))
    terminal.advance(1)
    assert terminal.of(DeliveryVerified, delivery_id="typed", verification="echo")
    terminal.frames.clear()
    terminal.send(Deliver(delivery_id="failed", sender="a", body="b"))  # redelivered
    terminal.send(Pending(request_id="p"))
    (answer,) = terminal.of(Response)
    assert [d["delivery_id"] for d in answer.payload["deliveries"]] == ["failed"]  # to be typed
    assert not terminal.of(DeliveryFailed)  # not the old failure announced again
    terminal.frames.clear()
    terminal.send(Deliver(delivery_id="typed", sender="a", body="b"))
    assert [type(f).__name__ for f in terminal.frames] == ["DeliveryInjected", "DeliveryVerified"]


def test_a_stalled_terminal_fails_the_delivery_and_clears_the_line_without_enter() -> None:
    terminal = ready(chunk=8)
    terminal.room = 3  # then it takes nothing more
    terminal.send(Deliver(delivery_id="d1", sender="a", body="stuck"))
    terminal.advance(4.9)
    assert not terminal.of(DeliveryFailed)
    terminal.advance(0.2)
    (failed,) = terminal.of(DeliveryFailed)
    assert "could not type the message" in failed.reason and "(0 of 33 bytes" in failed.reason
    terminal.room = None  # it reads again: the chunk it took part of is finished, then Ctrl-U
    terminal.advance(1)
    assert b"".join(data for _, data in terminal.written) == b"Relay me\x15"


def test_input_written_during_an_injection_waits_for_the_message() -> None:
    terminal = ready(chunk=8)
    terminal.send(Deliver(delivery_id="d1", sender="a", body="hello"))
    terminal.send(WriteInput(data="USER\r", request_id="w1"))
    terminal.advance(1)
    typed = b"".join(data for _, data in terminal.written)
    assert typed == b"Relay message from a [d1]: hello\rUSER\r"
    assert terminal.of(Response, request_id="w1")[0].payload == {"bytes": 5}


def test_a_stop_signals_the_session_and_the_end_is_reported() -> None:
    terminal = ready()
    terminal.output(b"bye")
    terminal.send(Shutdown())
    assert terminal.program == [signal.SIGHUP, signal.SIGCONT]
    terminal.advance(1.0)  # the kill grace
    assert terminal.program[2:] == [signal.SIGKILL]
    terminal.output(b"")  # the terminal closed
    assert terminal.core.exit_code is None
    terminal.core.program_exited(-signal.SIGKILL, terminal.now)
    terminal.step()
    (exited,) = terminal.of(Exited)
    assert (exited.code, exited.signal) == (None, signal.SIGKILL)
    assert exited.snapshot["text"].startswith("$ bye") and exited.snapshot["offset"] == 5
    assert terminal.core.exit_code == 128 + signal.SIGKILL
