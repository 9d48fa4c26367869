"""The PTY worker with real programs in real pseudo-terminals, mostly through the broker.

Every test that runs a program checks at the end that nothing is left of the program's
session (the ``relay`` fixture), besides the suite-wide check on worker processes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import SUPPORT, kill_and_reap, pid_alive, wait_until

from trio_relay import Broker, WorkerError, open_broker
from trio_relay.linux.procfs import session_members
from trio_relay.wire import (
    AgentExited,
    AgentIdle,
    AgentOutput,
    AgentReady,
    Deliver,
    DeliveryFailed,
    DeliveryInjectedEvent,
    DeliveryUnverifiedEvent,
    DeliveryVerified,
    DeliveryVerifiedEvent,
    Event,
    Exited,
    Output,
    Ready,
    Response,
    Snapshot,
    WorkerHello,
    WriteInput,
    decode_worker_frame,
    encode,
)

PTY_WORKER = [sys.executable, "-m", "trio_relay.worker.pty"]
BASH = ["bash", "--norc", "--noprofile"]


def pty_argv(*command: str, **options: object) -> list[str]:
    flags = [item for k, v in options.items() for item in (f"--{k.replace('_', '-')}", str(v))]
    return [*PTY_WORKER, *flags, "--", *command]


@dataclass
class Relay:
    broker: Broker
    sessions: list[int] = field(default_factory=list)

    async def spawn(self, name: str, *command: str, ready: bool = True, **options: object) -> int:
        """Start ``command`` under the PTY worker; wait for ``agent_ready`` unless told not
        to. Returns the program's pid (its session id)."""
        since = self.broker.events.last_seq
        await self.broker.spawn(name, pty_argv(*command, **options))
        hello = self.broker.supervisor.get(name).hello
        assert hello is not None and hello.worker == "pty" and hello.program_pid
        self.sessions.append(hello.program_pid)
        if ready:
            await self.wait_event(AgentReady, name, since)
        return hello.program_pid

    async def run_to_exit(self, name: str, *command: str) -> tuple[Any, list[AgentOutput]]:
        """Run ``command`` (not waiting for it to be ready) until it exits; return its
        ``agent_exited`` and the output it reported."""
        since = self.broker.events.last_seq
        await self.spawn(name, *command, ready=False)
        exited = await self.wait_event(AgentExited, name, since)
        return exited, self.output(name, since)

    async def wait_event(
        self, kind: type[Event], name: str, since: int = 0, timeout: float = 10, **fields: Any
    ) -> Any:
        def wanted(event: Event) -> bool:
            return (
                isinstance(event, kind)
                and getattr(event, "agent", None) == name
                and all(getattr(event, k) == v for k, v in fields.items())
            )

        with trio.fail_after(timeout):
            return await self.broker.events.wait_for(wanted, since=since)

    async def screen(self, name: str, predicate: Callable[[str], bool], **payload: Any) -> Any:
        """Poll snapshots until ``predicate(text)`` holds (10 s deadline); return the last."""
        with trio.fail_after(10):
            while True:
                snap = await self.broker.request_worker(name, "snapshot", payload)
                if predicate(snap["text"]):
                    return snap
                await trio.sleep(0.01)

    def output(self, name: str, since: int = 0) -> list[AgentOutput]:
        return [
            e
            for e in self.broker.events.since(since)
            if isinstance(e, AgentOutput) and e.agent == name
        ]

    async def deliver(self, name: str, delivery_id: str, body: str, sender: str = "alice") -> None:
        frame = Deliver(delivery_id=delivery_id, sender=sender, body=body)
        await self.broker.supervisor.running(name).writer.send(encode(frame))


@pytest.fixture(params=[False, True], ids=["wrapper", "shared-pty"])
async def relay(request: pytest.FixtureRequest) -> AsyncIterator[Relay]:
    """A broker; each test runs twice: with a wrapper process per agent, and with every
    agent's PTY worker in the shared host (``shared_pty``)."""
    sessions: list[int] = []
    async with open_broker(shared_pty=request.param) as broker:
        yield Relay(broker, sessions)
    for sid in sessions:  # the broker released every agent: nothing of the programs is left
        await wait_until(lambda: not session_members(sid), timeout=5)


def joined(events: list[AgentOutput]) -> str:
    return "".join(e.data for e in events)


# ---------------------------------------------------------------- the terminal


async def test_a_typed_command_and_its_output_show_in_a_snapshot(relay: Relay) -> None:
    await relay.spawn("sh", *BASH)
    await relay.broker.write_input("sh", "echo $((6*7))-done $TERM; tty\r")

    def done(text: str) -> bool:  # the output, then the next prompt
        return "42-done xterm-256color\n/dev/pts/" in text and text.count("bash-") == 2

    snap = await relay.screen("sh", done)  # `tty` named a PTY: a controlling terminal
    assert (snap["rows"], snap["cols"]) == (24, 80)
    row, col = snap["cursor"]
    prompt = snap["text"].split("\n")[row]
    assert prompt.startswith("bash-") and col >= len(prompt)  # at the new prompt
    assert snap["offset"] == sum(len(e.data.encode()) for e in relay.output("sh"))
    assert "no job control" not in joined(relay.output("sh"))


async def test_resize_reaches_the_program_and_the_screen(relay: Relay) -> None:
    await relay.spawn("sh", *BASH)
    await relay.broker.resize("sh", 30, 100)
    await relay.broker.write_input("sh", "echo size=$(tput lines)x$(tput cols)\r")
    snap = await relay.screen("sh", lambda text: "size=30x100" in text)
    assert (snap["rows"], snap["cols"]) == (30, 100)


async def test_resize_sends_sigwinch(relay: Relay) -> None:
    program = (  # SIGWINCH blocked until sigwait: one arriving early is not lost
        "import os, signal\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH})\n"
        "print('waiting', flush=True)\n"
        "signal.sigwait({signal.SIGWINCH})\n"
        "print('winch', *os.get_terminal_size())\n"
    )
    await relay.spawn("py", sys.executable, "-c", program, prompt="waiting")
    since = relay.broker.events.last_seq
    await relay.broker.resize("py", 20, 60)
    exited = await relay.wait_event(AgentExited, "py", since)
    assert exited.code == 0
    assert "winch 60 20" in joined(relay.output("py"))


async def test_terminal_queries_are_answered(relay: Relay) -> None:
    # Raw mode, then each query waits for its answer: without one it would hang.
    program = (
        "import os, time, tty\n"
        "tty.setraw(0)\n"
        "def ask(parts, end):\n"
        "    for part in parts:\n"
        "        os.write(1, part); time.sleep(0.02)\n"
        "    got = b''\n"
        "    while not got.endswith(end):\n"
        "        got += os.read(0, 1)\n"
        "    return got.decode().replace('\\x1b', 'ESC')\n"
        "os.write(1, b'abc')\n"
        "answers = [ask([b'\\x1b[', b'6n'], b'R'), ask([b'\\x1b[c'], b'c'),\n"
        "           ask([b'\\x1b[>c'], b'c'), ask([b'\\x1b]11;?\\x07'], b'\\x07')]\n"
        "os.write(1, ('\\r\\nanswers ' + ' '.join(answers) + '\\r\\n').encode())\n"
    )
    exited, output = await relay.run_to_exit("tui", sys.executable, "-c", program)
    assert exited.code == 0
    answers = joined(output).split("answers ")[1].split()
    assert answers == ["ESC[1;4R", "ESC[?62;22c", "ESC[>1;10;0c", "ESC]11;rgb:0000/0000/0000\x07"]


# ---------------------------------------------------------------- lifecycle


async def test_a_prompt_pattern_makes_a_busy_program_ready(relay: Relay) -> None:
    # It never falls quiet, so only the prompt can make it ready before --settle/--ready-timeout.
    spinner = "echo ready-now; while :; do printf .; sleep 0.02; done"
    with trio.fail_after(5):
        await relay.spawn("busy", "sh", "-c", spinner, prompt="^ready-now$", settle=30)


async def test_idle_after_silence_and_again_after_new_output(relay: Relay) -> None:
    since = relay.broker.events.last_seq
    await relay.spawn("cat", "cat", idle=0.3)
    first = await relay.wait_event(AgentIdle, "cat", since)
    await relay.broker.write_input("cat", "wake up\r")
    second = await relay.wait_event(AgentIdle, "cat", first.seq)
    woke = [e for e in relay.output("cat", first.seq) if e.seq < second.seq]
    assert "wake up" in joined(woke)  # the second idle came after the new output


# ---------------------------------------------------------------- the end of the program


async def test_final_output_and_exit_code_are_reported(relay: Relay) -> None:
    # More output than the PTY buffers, then an immediate exit: nothing may be lost.
    program = (
        "import sys\n"
        "sys.stdout.write(''.join(f'line {i}\\n' for i in range(5000)))\n"
        "sys.stdout.write('last words')\n"
        "sys.exit(3)\n"
    )
    exited, events = await relay.run_to_exit("py", sys.executable, "-c", program)
    assert (exited.code, exited.signal, exited.intended) == (3, None, False)
    expected = "".join(f"line {i}\r\n" for i in range(5000)) + "last words"
    assert joined(events) == expected
    offset = 0
    for event in events:  # offsets are contiguous byte offsets from 0
        assert event.offset == offset
        assert len(event.data.encode()) <= 4096 + 3
        offset += len(event.data.encode())


async def test_the_final_screen_is_reported_with_exited() -> None:
    frames = await run_directly(["sh", "-c", "printf 'first\\nlast words'; exit 3"])
    exited = [f for f in frames if isinstance(f, Exited)]
    assert len(exited) == 1 and frames[-1] is exited[0]
    assert (exited[0].code, exited[0].signal) == (3, None)
    assert exited[0].snapshot is not None
    assert exited[0].snapshot["text"].split("\n")[:2] == ["first", "last words"]


async def test_a_program_killed_by_a_signal_reports_the_signal(relay: Relay) -> None:
    exited, output = await relay.run_to_exit("sh", "sh", "-c", "echo dying; kill -KILL $$")
    assert (exited.code, exited.signal, exited.intended) == (None, signal.SIGKILL, False)
    assert "dying" in joined(output)


# ---------------------------------------------------------------- deliveries


async def test_injection_into_cat_is_verified_by_echo(relay: Relay) -> None:
    await relay.spawn("cat", "cat", cols=40)
    since = relay.broker.events.last_seq
    await relay.deliver("cat", "d1", "hello cat")
    injected = await relay.wait_event(DeliveryInjectedEvent, "cat", since, delivery_id="d1")
    verified = await relay.wait_event(DeliveryVerifiedEvent, "cat", since, delivery_id="d1")
    assert injected.seq < verified.seq
    assert (verified.verification, verified.reason) == ("echo", None)
    await relay.screen("cat", lambda text: "Relay message from alice [d1]: hello cat" in text)
    # A long, multi-line message wraps on a 40-column screen and is still recognised.
    body = "long " * 30 + "\nsecond line"
    await relay.deliver("cat", "d2", body, sender="bob")
    verified = await relay.wait_event(DeliveryVerifiedEvent, "cat", since, delivery_id="d2")
    assert verified.verification == "echo"


async def test_injection_into_a_program_that_discards_input_falls_back(
    relay: Relay, tmp_path: Path
) -> None:
    # Ready once the marker shows: after `stty -echo` ran (a settle period could come first).
    received = tmp_path / "received"
    sink = f"stty -echo; echo sink-ready; exec cat > {received}"
    await relay.spawn("sink", "sh", "-c", sink, verify_timeout=0.5, prompt="sink-ready")
    since = relay.broker.events.last_seq
    await relay.deliver("sink", "d1", "anyone there?")
    await relay.wait_event(DeliveryInjectedEvent, "sink", since, delivery_id="d1")
    verified = await relay.wait_event(DeliveryUnverifiedEvent, "sink", since, delivery_id="d1")
    assert verified.verification == "timeout_fallback"
    assert verified.reason and "did not appear" in verified.reason
    # Never typed again: the next delivery is the only other thing the program receives.
    await relay.deliver("sink", "d2", "still there?")
    await relay.wait_event(DeliveryUnverifiedEvent, "sink", since, delivery_id="d2")
    assert not any(isinstance(e, DeliveryVerifiedEvent) for e in relay.broker.events.since(since))
    injected = [e for e in relay.broker.events.since(since) if isinstance(e, DeliveryInjectedEvent)]
    assert [e.delivery_id for e in injected] == ["d1", "d2"]
    # What the program actually received: each message once.
    expected = "Relay message from alice [d1]: anyone there?\nRelay message from alice [d2]: still there?\n"
    await wait_until(lambda: received.read_text() == expected, timeout=5)


async def test_the_same_delivery_id_is_typed_once(relay: Relay) -> None:
    await relay.spawn("cat", "cat")
    since = relay.broker.events.last_seq
    await relay.deliver("cat", "d1", "once")
    await relay.wait_event(DeliveryVerifiedEvent, "cat", since, delivery_id="d1")
    after_first = relay.broker.events.last_seq
    await relay.deliver("cat", "d1", "once")  # settled already: acknowledged again
    again = await relay.wait_event(DeliveryVerifiedEvent, "cat", after_first, delivery_id="d1")
    assert again.verification == "echo"
    await relay.deliver("cat", "d2", "twice in a row")  # a duplicate while still queued
    await relay.deliver("cat", "d2", "twice in a row")
    await relay.deliver("cat", "d3", "the last")
    await relay.wait_event(DeliveryVerifiedEvent, "cat", since, delivery_id="d3")
    snap = await relay.screen("cat", lambda text: text.count("[d3]") == 2)
    # Each typed message shows twice: the terminal's echo, then cat's copy of the line.
    assert snap["text"].count("[d1]") == 2
    assert snap["text"].count("[d2]") == 2


async def test_hold_then_pending_then_flush(relay: Relay) -> None:
    broker = relay.broker
    await relay.spawn("cat", "cat")
    assert await broker.request_worker("cat", "mode", {}) == {"mode": "auto_inject"}
    assert await broker.request_worker("cat", "mode", {"set": "hold"}) == {"mode": "hold"}
    since = broker.events.last_seq
    await relay.deliver("cat", "h1", "held back")
    pending = await broker.request_worker("cat", "pending", {})
    assert pending["mode"] == "hold"
    assert pending["deliveries"] == [
        {"delivery_id": "h1", "from": "alice", "body": "held back", "thread": None, "state": "held"}
    ]
    assert not any(isinstance(e, DeliveryInjectedEvent) for e in broker.events.since(since))
    assert await broker.request_worker("cat", "flush", {}) == {"count": 1}
    verified = await relay.wait_event(DeliveryVerifiedEvent, "cat", since, delivery_id="h1")
    assert verified.verification == "echo"
    assert (await broker.request_worker("cat", "pending", {}))["deliveries"] == []
    # Held again; returning to auto_inject releases it without a flush.
    await relay.deliver("cat", "h2", "released by the mode")
    assert await broker.request_worker("cat", "mode", {"set": "auto_inject"}) == {
        "mode": "auto_inject"
    }
    await relay.wait_event(DeliveryVerifiedEvent, "cat", since, delivery_id="h2")


# ---------------------------------------------------------------- input and bad input


async def test_acknowledged_input_and_bad_requests(relay: Relay) -> None:
    broker = relay.broker
    await relay.spawn("cat", "cat")
    assert await broker.request_worker("cat", "write_input", {"data": "hé\r"}) == {"bytes": 4}
    await relay.screen("cat", lambda text: text.count("hé") == 2)
    with pytest.raises(WorkerError) as info:
        await broker.request_worker("cat", "no_such_kind", {"x": 1})
    assert info.value.code == "unknown_kind"
    with pytest.raises(WorkerError) as info:
        await broker.request_worker("cat", "snapshot", {"ansi": "yes"})
    assert info.value.code == "bad_request"
    await broker.supervisor.running("cat").writer.send(b'garbage\n{"kind": 5}\n[]\n')
    assert await broker.request_worker("cat", "ping", {"data": "alive"}) == {"data": "alive"}
    # Counted: the two answered bad requests, then the three lines written directly. The
    # log is stderr, which may reach the broker after the answer on stdout.
    await wait_until(lambda: any("bad frame (5 so far)" in line for line in broker.logs("cat")))


async def test_snapshot_with_ansi_attributes(relay: Relay) -> None:
    await relay.spawn("sh", "sh", "-c", "printf 'plain \\033[1;31mbold red\\033[0m'; exec cat")
    snap = await relay.screen("sh", lambda text: "bold red" in text, ansi=True)
    assert snap["text"].split("\n")[0] == "plain \x1b[0;1;31mbold red\x1b[0m"
    plain = await relay.broker.request_worker("sh", "snapshot", {})
    assert plain["text"].split("\n")[0] == "plain bold red"


async def test_dim_text_shows_in_the_ansi_snapshot(relay: Relay) -> None:
    # The snapshot attach draws its first frame from.
    await relay.spawn("sh", "sh", "-c", "printf 'a \\033[2mfaint\\033[22m b'; exec cat")
    snap = await relay.screen("sh", lambda text: "faint" in text, ansi=True)
    assert snap["text"].split("\n")[0] == "a \x1b[0;2mfaint\x1b[0m b"


async def test_a_shrinking_resize_shows_the_programs_redraw_at_the_cursor(relay: Relay) -> None:
    # Output at the bottom, then the terminal loses rows: what is near the cursor stays.
    program = (
        "import os, signal, sys\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH})\n"
        "print('top', *(f'row {n}' for n in range(1, 23)), sep='\\n')\n"
        "sys.stdout.write('> '); sys.stdout.flush()\n"
        "signal.sigwait({signal.SIGWINCH})\n"
        "sys.stdout.write('\\r\\x1b[Kresized'); sys.stdout.flush()\n"  # redraw its row
        "os.read(0, 1)\n"
    )
    await relay.spawn("py", sys.executable, "-c", program, prompt="> ")
    await relay.broker.resize("py", 5, 80)
    snap = await relay.screen("py", lambda text: "resized" in text)
    assert snap["text"].split("\n") == ["row 19", "row 20", "row 21", "row 22", "resized"]
    assert snap["cursor"] == [4, 7]
    await relay.broker.write_input("py", "q")


@pytest.mark.skipif(shutil.which("vim") is None, reason="vim is not installed")
async def test_vim_redraws_after_a_shrinking_resize(relay: Relay, tmp_path: Path) -> None:
    text = tmp_path / "numbers.txt"
    text.write_text("".join(f"line {n:02}\n" for n in range(1, 41)))
    vim = ["vim", "-u", "NONE", "-i", "NONE", "-n", "-N", str(text)]
    await relay.spawn("vim", *vim, prompt="line 23")
    await relay.broker.write_input("vim", "20G")  # the cursor to line 20: row 19 of 23

    def showing(first: int, last: int, rows: int) -> Callable[[str], bool]:
        def check(screen: str) -> bool:
            lines = screen.split("\n")
            body = [f"line {n:02}" for n in range(first, last + 1)]
            return len(lines) == rows and lines[: len(body)] == body

        return check

    with trio.fail_after(10):  # vim has moved the cursor: then the terminal shrinks
        while True:
            snap = await relay.broker.request_worker("vim", "snapshot", {})
            if snap["cursor"] == [19, 0] and showing(1, 23, 24)(snap["text"]):
                break
            await trio.sleep(0.01)
    await relay.broker.resize("vim", 8, 40)
    # vim keeps the cursor's line at the same fraction of the smaller window's 7 text rows
    # (row 5): lines 15 to 21, then the command line; nothing of the 24-row screen is left.
    snap = await relay.screen("vim", showing(15, 21, 8))
    lines = snap["text"].split("\n")
    assert not lines[7].startswith("line"), lines
    assert snap["cursor"] == [5, 0] and (snap["rows"], snap["cols"]) == (8, 40)
    await relay.broker.write_input("vim", "\x1b:q!\r")
    await relay.wait_event(AgentExited, "vim")


# ---------------------------------------------------------------- the broker goes away


async def test_closed_pipe_kills_the_programs_session() -> None:
    async with open_worker([*BASH]) as (proc, hello):
        sid = hello.program_pid
        assert sid is not None and proc.stdin is not None
        # A background job: job control puts it in a process group of its own.
        await proc.stdin.send_all(encode(WriteInput(data="sleep 300 &\r")))
        await wait_until(lambda: len(session_members(sid)) == 2)
        await proc.stdin.aclose()
        with trio.fail_after(10):
            await proc.wait()
        assert not session_members(sid)
        assert not pid_alive(sid)


async def test_a_killed_worker_takes_its_program_along() -> None:
    async with open_worker(["cat"]) as (proc, hello):
        assert hello.program_pid is not None and pid_alive(hello.program_pid)
        proc.kill()
        with trio.fail_after(10):
            await proc.wait()
        await wait_until(lambda: not pid_alive(hello.program_pid))  # PR_SET_PDEATHSIG


# ---------------------------------------------------------------- its priority


def autogroup_nice(pid: int) -> int | None:
    """The nice value of ``pid``'s session's autogroup; None on a kernel without them."""
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            return int(f.read().split()[-1])
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("nice", [None, 0, 5])
async def test_the_worker_runs_below_its_program(nice: int | None) -> None:
    """So that many busy agents cannot starve the broker: the worker's nice value, and its
    session's autogroup's (CPU time is shared by session first where autogroups are on),
    go up by --nice (default 10); its program keeps the broker's priority."""
    step = 10 if nice is None else nice
    options = {} if nice is None else {"nice": nice}
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    async with open_broker() as broker:
        relay = Relay(broker)
        program = await relay.spawn("n", "cat", ready=False, **options)
        worker = broker.agent("n").pid
        assert worker is not None
        assert os.getpriority(os.PRIO_PROCESS, worker) == min(19, ours + step)
        assert os.getpriority(os.PRIO_PROCESS, program) == ours
        if autogroup_nice(worker) is not None:  # both lead sessions: new groups, at 0
            # (retried while the kernel's once-per-100-ms limit refuses it, as non-root)
            await wait_until(lambda: autogroup_nice(worker) == step)
            assert autogroup_nice(program) == 0


# ---------------------------------------------------------------- what the worker costs


async def test_the_worker_does_not_import_trio() -> None:
    # Trio alone is ~15 MB of RSS and ~150 ms per agent: the worker is written without it.
    probe = "import sys, trio_relay.worker.pty.worker; print(sorted({m.split('.')[0] for m in sys.modules}))"
    result = await trio.run_process([sys.executable, "-c", probe], capture_stdout=True)
    assert "'trio'" not in result.stdout.decode()


# ---------------------------------------------------------------- running the worker directly

HELLO = b'{"kind": "hello", "protocol": 1}\n'


@asynccontextmanager
async def open_worker(command: list[str]) -> AsyncIterator[tuple[trio.Process, WorkerHello]]:
    """The PTY worker as a plain child, without a broker; yields it once it said hello."""
    proc = await trio.lowlevel.open_process(
        pty_argv(*command),
        stdin=-1,
        stdout=-1,
        stderr=-1,  # subprocess.PIPE
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send_all(HELLO)
        buffer = b""
        with trio.fail_after(10):
            while b"\n" not in buffer:
                chunk = await proc.stdout.receive_some()
                assert chunk, "the worker ended before its hello"
                buffer += chunk
        hello = decode_worker_frame(buffer.split(b"\n", 1)[0])
        assert isinstance(hello, WorkerHello)
        yield proc, hello
    finally:
        await kill_and_reap(proc)


async def run_directly(command: list[str]) -> list[Any]:
    """Run the worker on ``command`` until it exits by itself; return its frames."""
    proc = await trio.lowlevel.open_process(pty_argv(*command), stdin=-1, stdout=-1, stderr=-1)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send_all(HELLO)
        data = b""
        with trio.fail_after(10):
            while chunk := await proc.stdout.receive_some():
                data += chunk
            await proc.wait()
    finally:
        await kill_and_reap(proc)
    return [decode_worker_frame(line) for line in data.splitlines() if line]


# ---------------------------------------------------------------- the worker driven directly


class Direct:
    """The PTY worker as a plain child: send frames, collect the frames it writes."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.frames: list[Any] = []
        self.times: list[float] = []
        self._buffer = b""
        self._changed = trio.Event()

    async def send(self, frame: Any) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(frame if isinstance(frame, bytes) else encode(frame))

    async def read_forever(self) -> None:
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.receive_some():
            *lines, self._buffer = (self._buffer + chunk).split(b"\n")
            for line in lines:
                self.frames.append(decode_worker_frame(line))
                self.times.append(trio.current_time())
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 10) -> Any:
        with trio.fail_after(timeout):
            while True:
                for frame in self.frames:
                    if predicate(frame):
                        return frame
                await self._changed.wait()

    def output(self) -> str:
        return "".join(f.data for f in self.frames if isinstance(f, Output))


@asynccontextmanager
async def direct_worker(command: list[str], **options: object) -> AsyncIterator[Direct]:
    """Run the worker on ``command`` (options as for pty_argv), reading its frames in the
    background; on the way out, kill it and check nothing of the program is left."""
    proc = await trio.lowlevel.open_process(
        pty_argv(*command, **options), stdin=-1, stdout=-1, stderr=-1
    )
    worker = Direct(proc)
    sid = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.read_forever)
            await worker.send(HELLO)
            hello = await worker.wait_for(lambda f: isinstance(f, WorkerHello))
            sid = hello.program_pid
            yield worker
            nursery.cancel_scope.cancel()
    finally:
        await kill_and_reap(proc)
        if sid is not None:
            with trio.CancelScope(shield=True):
                await wait_until(lambda: not session_members(sid), timeout=5)


def is_kind(kind: type, **fields: Any) -> Callable[[Any], bool]:
    return lambda f: isinstance(f, kind) and all(getattr(f, k) == v for k, v in fields.items())


# ---------------------------------------------------------------- a broker that does not read


@pytest.mark.parametrize("how", ["stdin_closed", "sigterm"])
async def test_a_broker_that_stops_reading_cannot_stall_the_worker(how: str) -> None:
    # `yes` floods; nobody reads the worker's stdout, so the pipe fills. The worker still
    # notices the end of stdin / SIGTERM and ends itself and the program promptly.
    proc = await trio.lowlevel.open_process(
        pty_argv("yes", kill_grace=0.5), stdin=-1, stdout=-1, stderr=-1
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send_all(HELLO)
        hello = decode_worker_frame((await proc.stdout.receive_some(4096)).split(b"\n")[0])
        sid = hello.program_pid
        await pipe_filled(proc.stdout.fileno())  # the broker has stopped reading
        assert proc.returncode is None and session_members(sid)
        if how == "stdin_closed":
            await proc.stdin.aclose()
        else:
            proc.send_signal(signal.SIGTERM)
        with trio.fail_after(4):
            await proc.wait()
        assert not session_members(sid)
    finally:
        await kill_and_reap(proc)


async def pipe_filled(fd: int, timeout: float = 10) -> None:
    """Wait until the pipe behind ``fd`` holds nearly its capacity (a writer would block)."""
    capacity = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    with trio.fail_after(timeout):
        while True:
            waiting = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
            if waiting >= capacity - 16384:
                return
            await trio.sleep(0.01)


async def test_heavy_output_does_not_stall_requests_or_output_frames() -> None:
    # The screen model parses ~100-200 KB/s; a flood must not hold snapshots (or the output
    # frames) back for a whole batch of reads.
    flood = ["sh", "-c", "sleep 0.4; exec seq 1 100000000"]
    async with direct_worker(flood) as worker:
        # Never ready before --ready-timeout: it never goes quiet once it drew something.
        await worker.wait_for(lambda f: isinstance(f, Output) and f.offset > 50000)
        latencies = []
        for i in range(15):
            start = trio.current_time()
            await worker.send(encode(Snapshot(request_id=f"s{i}")))
            await worker.wait_for(is_kind(Response, request_id=f"s{i}"))
            latencies.append(trio.current_time() - start)
            await trio.sleep(0.03)
        latencies.sort()
        # Bounds far above what is measured (~20 ms, tools/bench_pty.py) and far below the
        # 0.4-1 s stalls of a loop that parses a whole batch of output before anything else.
        assert latencies[len(latencies) // 2] < 0.25, latencies
        outputs = [t for f, t in zip(worker.frames, worker.times) if isinstance(f, Output)]
        gaps = sorted(b - a for a, b in zip(outputs[-60:], outputs[-59:]))
        assert gaps[int(len(gaps) * 0.95)] < 0.3, gaps


class _BehindCore:
    """A screen model that never catches up: counts the slices it is fed."""

    backlogged = True

    def __init__(self) -> None:
        self.slices = 0

    def parse_slice(self, now: float) -> None:
        self.slices += 1


def test_a_parse_pass_ends_after_one_slice_once_a_frame_waits_on_stdin() -> None:
    # While a flood waits for the screen model, a snapshot request must not wait for the
    # rest of the pass's budget: the pass ends at the first slice once stdin has a frame.
    from trio_relay.worker.pty.worker import Loop

    stdin, broker = os.pipe()
    core = _BehindCore()
    loop = Loop(core, proc=None, stdin=stdin, stdout=-1)  # type: ignore[arg-type]
    try:
        loop.stdin_watched = True  # as start() leaves it
        loop.parse_budget = 0.02
        loop._parse()
        alone = core.slices
        assert alone > 1  # nothing waits: it parses for the whole budget
        os.write(broker, encode(Snapshot(request_id="s")))
        core.slices = 0
        loop._parse()
        assert core.slices == 1
        loop.stdin_watched = False  # no longer read (end of file): it does not count
        core.slices = 0
        loop._parse()
        assert core.slices > 1
    finally:
        loop.selector.close()
        os.close(stdin)
        os.close(broker)


# ---------------------------------------------------------------- injection details


async def test_echo_is_verified_inside_a_bordered_wrapping_input_box() -> None:
    # An Ink-style TUI (claude, gemini) draws `│` borders around the input and wraps it.
    box = [sys.executable, str(SUPPORT / "box_tui.py"), "40"]
    async with direct_worker(box, verify_timeout=2) as worker:
        await worker.wait_for(is_kind(Ready))
        body = "a rather long message that wraps inside the box " * 3
        await worker.send(encode(Deliver(delivery_id="long", sender="bob", body=body)))
        verified = await worker.wait_for(is_kind(DeliveryVerified, delivery_id="long"))
        assert (verified.verification, verified.reason) == ("echo", None)


async def test_a_newline_in_the_body_is_not_enter_without_bracketed_paste(tmp_path: Path) -> None:
    marker = tmp_path / "created"
    inputrc = tmp_path / "inputrc"
    inputrc.write_text("set enable-bracketed-paste off\n")
    command = ["env", f"INPUTRC={inputrc}", *BASH]
    async with direct_worker(command, cols=120) as worker:
        await worker.wait_for(is_kind(Ready))
        body = f"hi\ntouch {marker}"
        await worker.send(encode(Deliver(delivery_id="nl", sender="eve", body=body)))
        verified = await worker.wait_for(is_kind(DeliveryVerified, delivery_id="nl"))
        assert verified.verification == "echo"
        await worker.wait_for(lambda f: "command not found" in worker.output())
        # bash runs its input in order: once a later command has run, a `touch` would have too
        await worker.send(encode(WriteInput(data="echo s-$((1+1))\r")))
        await worker.wait_for(lambda f: "s-2" in worker.output())
        assert not marker.exists()
        assert f"[nl]: hi touch {marker}" in worker.output()  # one line


async def test_a_long_message_typed_slowly_is_not_cut_off_by_the_typing_deadline() -> None:
    # 32 chunks 50 ms apart take longer than --verify-timeout: the deadline is for a stall.
    options = dict(chunk=16, key_delay=0.05, verify_timeout=0.6)
    async with direct_worker(["cat"], **options) as worker:
        await worker.wait_for(is_kind(Ready))
        await worker.send(encode(Deliver(delivery_id="slow", sender="a", body="x" * 480)))
        verified = await worker.wait_for(is_kind(DeliveryVerified, delivery_id="slow"))
        assert verified.verification == "echo"


async def test_input_written_during_an_injection_waits_for_the_message(tmp_path: Path) -> None:
    received = tmp_path / "received"
    options = dict(chunk=8, key_delay=0.03)
    async with direct_worker(["sh", "-c", f"cat > {received}"], **options) as worker:
        await worker.wait_for(is_kind(Ready))
        await worker.send(encode(Deliver(delivery_id="d1", sender="a", body="do not interleave")))
        await worker.wait_for(lambda f: "Relay mes" in worker.output())  # typing has begun
        await worker.send(encode(WriteInput(data="USER INPUT\r", request_id="w1")))
        await worker.wait_for(is_kind(DeliveryVerified, delivery_id="d1"))
        await worker.wait_for(is_kind(Response, request_id="w1"))
        await wait_until(lambda: received.read_text().endswith("USER INPUT\n"))
        assert received.read_text() == (
            "Relay message from a [d1]: do not interleave\nUSER INPUT\n"
        )


async def test_a_typing_timeout_closes_the_paste_and_never_submits(tmp_path: Path) -> None:
    # The program takes bracketed pastes but stops reading; the message cannot be typed in
    # time. What it reads afterwards: the start of the message (whole characters), the
    # paste-end marker and Ctrl-U, never the Enter.
    received = tmp_path / "received"
    program = (
        "import os, sys, time, tty\n"
        "tty.setraw(0)\n"
        "os.write(1, b'\\x1b[?2004hwaiting\\r\\n')\n"
        "time.sleep(1.5)\n"  # not reading: the terminal's input queue fills up
        "os.set_blocking(0, False)\n"
        "got = b''\n"
        "end = time.monotonic() + 1.5\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        "        got += os.read(0, 65536)\n"
        "    except BlockingIOError:\n"
        "        time.sleep(0.01)\n"
        f"open({str(received)!r}, 'wb').write(got)\n"
    )
    options = dict(prompt="waiting", verify_timeout=0.4, chunk=1000, key_delay=0)
    async with direct_worker([sys.executable, "-c", program], **options) as worker:
        await worker.wait_for(is_kind(Ready))
        body = "é" * 200_000  # 400 KB: far more than a terminal's input queue takes
        await worker.send(encode(Deliver(delivery_id="big", sender="a", body=body)))
        failed = await worker.wait_for(is_kind(DeliveryFailed, delivery_id="big"))
        assert "could not type the message" in failed.reason
        await worker.wait_for(is_kind(Exited), timeout=10)
    got = received.read_bytes()
    assert got.startswith(b"\x1b[200~Relay message from a [big]: ")
    assert got.endswith(b"\x1b[201~\x15"), got[-40:]
    assert b"\r" not in got
    got.decode("utf-8")  # never half a character


async def test_output_offsets_count_the_bytes_reported_even_for_invalid_utf8() -> None:
    # Each invalid byte is reported as U+FFFD (3 bytes in UTF-8) and counted as 3, so the
    # offsets stay contiguous over the text as reported.
    frames = await run_directly(["sh", "-c", "printf 'a\\377b\\303'; printf '\\303\\251 end'"])
    outputs = [f for f in frames if isinstance(f, Output)]
    text = "".join(f.data for f in outputs)
    assert text == "a\ufffdb\ufffdé end"
    offset = 0
    for frame in outputs:
        assert frame.offset == offset
        offset += len(frame.data.encode())
    exited = frames[-1]
    assert isinstance(exited, Exited) and exited.snapshot["offset"] == offset == len(text.encode())


def test_running_the_worker_module_itself_says_which_to_run() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_relay.worker.pty.worker", "--", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "python -m trio_relay.worker.pty [options] -- CMD" in result.stderr
