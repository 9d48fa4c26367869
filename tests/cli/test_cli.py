"""The `trio-relay` command line, in-process (click's CliRunner) and as real processes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import random
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import CLEAN_ENV, REFERENCE_WORKER, RELAY, Relay, pid_alive, relay, wait_for

from trio_relay.cli.attach import RESTORE
from trio_relay.cli.main import main
from trio_relay.state import StateDir


@pytest.fixture
def broker(daemon: Relay) -> Relay:
    """A broker started with `up --detach` (see conftest.daemon)."""
    return daemon


def agent_pids(r: Relay) -> list[int]:
    result = r.invoke("ps", "--json")
    return [a["pid"] for a in json.loads(result.output) if a["pid"]]


def unique_sleep() -> str:
    """A `sleep` argument no other process has, to find the program by its command line."""
    return f"{4000 + random.random() * 1000:.6f}"


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue  # it ended while we looked
    return [p for p in found if pid_alive(p)]


def test_spawn_list_and_release_through_the_cli(broker: Relay) -> None:
    result = broker.invoke("spawn", "w", "--native", "--", *REFERENCE_WORKER)
    assert result.exit_code == 0 and "w running, pid" in result.output
    broker.invoke("mode", "w", "hold")
    broker.invoke("send", "w", "kept for later")
    table = broker.invoke("ps").output.splitlines()
    assert table[0].split() == [
        *("NAME", "STATE", "ACTIVITY", "PROFILE", "PID", "UPTIME", "RESTARTS", "PENDING"),
        *("LAST", "EXIT"),
    ]
    name, state, activity, since, profile, _pid, _uptime, restarts, pending, *_ = table[1].split()
    assert (name, state, profile, restarts, pending) == ("w", "running", "-", "0", "1")
    # A native worker reads no screen: its ready is idle, moments ago.
    assert activity == "idle" and since.endswith("s")
    (listed,) = json.loads(broker.invoke("ps", "--json").output)
    assert listed["pending_deliveries"] == 1 and listed["last_activity"] > 0
    assert listed["activity"] == "idle" and listed["profile"] is None
    status = json.loads(broker.invoke("status", "--json").output)
    assert status["agents"] == {"running": 1} and status["pid"] == broker.pid
    assert broker.invoke("release", "w").output.startswith("w released")
    assert json.loads(broker.invoke("ps", "--json").output)[0]["state"] == "released"


def test_a_pty_agent_through_the_cli(broker: Relay) -> None:
    assert broker.invoke("spawn", "sh", "--cols", "100", "--", "bash", "--norc").exit_code == 0
    assert broker.invoke("input", "sh", "echo $((6*7))", "--enter").exit_code == 0
    wait_for(lambda: "42" in broker.invoke("snapshot", "sh").output)
    assert json.loads(broker.invoke("snapshot", "sh", "--json").output)["cols"] == 100
    events = [json.loads(line) for line in broker.invoke("events", "--json").output.splitlines()]
    assert events[0]["kind"] == "agent_spawned" and events[0]["agent"] == "sh"


def test_the_broker_runs_agents_without_mapping_openssl(broker: Relay) -> None:
    """OpenSSL costs each process that maps it 5.5 MB of RSS (see lean_imports). The
    broker hashes WebSocket keys and agents' tokens without it."""
    assert broker.invoke("spawn", "sh", "--", "bash", "--norc").exit_code == 0
    wait_for(lambda: "bash" in broker.invoke("snapshot", "sh").output)
    # The agent speaks to the broker with the token it was given in its environment.
    command = f"{sys.executable} -m trio_relay ps --json | grep -c '\"sh\"'"
    assert broker.invoke("input", "sh", command, "--enter").exit_code == 0
    wait_for(lambda: "\n1\n" in broker.invoke("snapshot", "sh").output)
    maps = Path(f"/proc/{broker.pid}/maps").read_text()
    assert "libcrypto" not in maps and "libssl" not in maps


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["snapshot", "ghost"], 1, "Error: no running agent named 'ghost'"),
        (["snapshot", "w"], 1, "Agent error: unknown_kind"),
        (["resize", "w", "0", "0"], 2, "out of range"),
        (["resize", "w"], 2, "Missing argument"),
        (["spawn", "x", "--env", "novalue", "--", "true"], 2, "expected K=V"),
    ],
)
def test_exit_codes(broker: Relay, args: list[str], code: int, message: str) -> None:
    broker.invoke("spawn", "w", "--native", "--", *REFERENCE_WORKER)
    result = CliRunner().invoke(main, [args[0], "--state-dir", broker.state, *args[1:]])
    assert result.exit_code == code
    assert message in result.output


def test_no_broker_is_exit_code_3_with_a_hint(tmp_path: Path) -> None:
    result = relay("status", "--state-dir", str(tmp_path))
    assert result.returncode == 3
    assert "trio-relay up" in result.stderr


def test_up_twice_on_one_state_directory_is_refused(broker: Relay) -> None:
    again = relay("up", "--detach", "--state-dir", broker.state)
    assert again.returncode == 1 and f"pid {broker.pid}" in again.stderr
    foreground = relay("up", "--state-dir", broker.state)
    assert foreground.returncode == 1 and f"pid {broker.pid}" in foreground.stderr
    assert "Traceback" not in again.stderr + foreground.stderr


def test_down_leaves_no_process_behind(broker: Relay) -> None:
    marker = unique_sleep()
    broker.invoke("spawn", "w", "--native", "--", *REFERENCE_WORKER)
    broker.invoke("spawn", "sh", "--", "sleep", marker)
    pids = [broker.pid, *agent_pids(broker)]
    assert len(pids) == 3 and processes_with(marker)
    result = relay("down", "--state-dir", broker.state)
    assert result.returncode == 0 and "stopped" in result.stdout
    assert not any(pid_alive(p) for p in pids)
    wait_for(lambda: not processes_with(marker))
    assert relay("status", "--state-dir", broker.state).returncode == 3


def test_a_broker_killed_with_sigkill_leaves_no_worker_and_no_program_alive(broker: Relay) -> None:
    marker = unique_sleep()
    broker.invoke("spawn", "w", "--native", "--", *REFERENCE_WORKER)
    broker.invoke("spawn", "sh", "--", "sleep", marker)
    workers = agent_pids(broker)
    assert len(workers) == 2 and processes_with(marker)
    os.kill(broker.pid, signal.SIGKILL)
    wait_for(lambda: not any(pid_alive(p) for p in workers))
    wait_for(lambda: not processes_with(marker))
    # The lock died with it: a new broker starts on the same directory and respawns the
    # agents that were running.
    assert relay("up", "--detach", "--state-dir", broker.state).returncode == 0
    agents = {a["name"]: a for a in json.loads(broker.invoke("ps", "--json").output)}
    assert {n: a["state"] for n, a in agents.items()} == {"w": "running", "sh": "running"}
    assert not set(agent_pids(broker)) & set(workers)


def test_the_next_broker_sweeps_what_a_sigkilled_one_left_behind(broker: Relay) -> None:
    marker = unique_sleep()
    broker.invoke("spawn", "sh", "--", "bash", "--norc")
    wait_for(lambda: "bash" in broker.invoke("snapshot", "sh").output)
    # A job in its own process group that ignores SIGHUP (so bash cannot take it along
    # when the terminal hangs up): only the sweep can end it. bash ignores SIGHUP too:
    # else the worker, seeing its stdin end before its own death signal lands, could stop
    # bash and kill the job with the rest of the session first (its cleanup, not the
    # sweep, would end it; seen once in a fresh clone's test run).
    job = f"trap '' HUP; (trap '' HUP; exec sleep {marker}) &"
    broker.invoke("input", "sh", job, "--enter")
    wait_for(lambda: len(processes_with(marker)) == 1)
    workers = agent_pids(broker)
    os.kill(broker.pid, signal.SIGKILL)  # the worker and bash die with it; the job does not
    wait_for(lambda: not any(pid_alive(p) for p in workers))
    assert processes_with(marker), "the background job should have outlived its shell"
    assert relay("up", "--detach", "--state-dir", broker.state).returncode == 0
    wait_for(lambda: not processes_with(marker), timeout=5)


def test_send_hold_pending_and_flush_through_the_cli(broker: Relay) -> None:
    broker.invoke("spawn", "cat", "--", "cat")
    sent = broker.invoke("send", "cat", "hello from the cli", "--wait")
    assert sent.exit_code == 0 and "verified (echo)" in sent.output
    assert broker.invoke("mode", "cat", "hold").output.strip() == "hold"
    queued = broker.invoke("send", "cat", "held for later")
    assert queued.exit_code == 0 and "queued" in queued.output
    assert "held for later" in broker.invoke("pending", "cat").output
    assert broker.invoke("flush", "cat").output.strip() == "1 released for delivery"
    wait_for(lambda: "held for later" in broker.invoke("snapshot", "cat").output)
    wait_for(
        lambda: (
            [d["state"] for d in json.loads(broker.invoke("deliveries", "cat", "--json").output)]
            == ["verified", "verified"]
        )
    )
    assert broker.invoke("deliveries", "cat").output.count("verified (echo)") == 2
    assert broker.invoke("dead-letters").output.strip() == "no dead letters"
    missing = broker.invoke("send", "nobody", "hi")
    assert missing.exit_code == 1 and "Error:" in missing.output


@contextmanager
def foreground_up(
    *args: str, command: list[str] = RELAY, env: dict[str, str] = CLEAN_ENV, cwd: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    """`up ARGS` in the foreground, its stderr piped; killed at the end unless stopped."""
    proc = subprocess.Popen(
        [*command, "up", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen[str], signum: int) -> str:
    """Signal ``proc`` and return its stderr once it exits."""
    proc.send_signal(signum)
    return proc.communicate(timeout=30)[1]


def test_foreground_up_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    state = str(tmp_path / "s")
    with foreground_up("--state-dir", state) as proc:
        wait_for(lambda: StateDir(Path(state)).read_connection() is not None)
        r = Relay(state)
        r.invoke("spawn", "w", "--native", "--", *REFERENCE_WORKER)
        worker = agent_pids(r)[0]
        stderr = stop(proc, signal.SIGTERM)
    assert proc.returncode == 0
    assert "SIGTERM received" in stderr and "broker stopped" in stderr
    assert not pid_alive(worker)
    assert not (Path(state) / "connection.json").exists()


def test_up_becomes_the_broker_with_its_key_in_neither_its_command_line_nor_its_environment(
    tmp_path: Path,
) -> None:
    """`up` checks its options, then execs the broker's own program in the same process
    (trio_relay.broker_process), which takes the options from an inherited memory file."""
    state = str(tmp_path / "s")
    key = f"key-{unique_sleep()}"
    options = ("--state-dir", state, "--http", "127.0.0.1:0", "--api-key-env", "K")
    with foreground_up(*options, env={**CLEAN_ENV, "K": key}) as proc:
        wait_for(lambda: StateDir(Path(state)).read_connection() is not None)
        connection = StateDir(Path(state)).read_connection()
        assert connection is not None and connection.http is not None
        assert connection.pid == proc.pid  # the process `up` was started as
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"trio_relay.broker_process" in cmdline
        assert b"-OO" in cmdline  # no docstrings in its memory
        assert key.encode() not in b" ".join(cmdline)
        assert key.encode() not in Path(f"/proc/{proc.pid}/environ").read_bytes()
        request = urllib.request.Request(connection.http + "/api/spawned")
        request.add_header("X-API-Key", key)  # the key reached the broker
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        stderr = stop(proc, signal.SIGINT)
    assert proc.returncode == 0 and "broker stopped" in stderr


def test_the_brokers_program_does_not_import_from_the_working_directory(
    tmp_path: Path,
) -> None:
    """`python -m` would put the working directory first on sys.path; a project's own
    trio.py must not be imported as Trio by the broker `trio-relay up` starts there."""
    (tmp_path / "trio.py").write_text("raise SystemExit('the working directory was imported')\n")
    state = str(tmp_path / "s")
    console_script = str(Path(sys.executable).parent / "trio-relay")  # as a user runs it
    with foreground_up("--state-dir", state, command=[console_script], cwd=tmp_path) as proc:
        wait_for(lambda: proc.poll() is not None or StateDir(Path(state)).read_connection())
        assert proc.poll() is None  # the broker runs
        stderr = stop(proc, signal.SIGINT)
    assert proc.returncode == 0 and "working directory was imported" not in stderr


def test_a_pty_agent_starts_in_a_project_whose_modules_shadow_the_stdlib(
    broker: Relay, tmp_path: Path
) -> None:
    """The PTY worker starts in the agent's working directory; with ``python -m`` alone a
    project's own ``fcntl.py`` or ``copy.py`` there would be imported instead (-P)."""
    for name in ("fcntl.py", "copy.py", "trio_relay.py"):
        (tmp_path / name).write_text("raise SystemExit('the project was imported')\n")
    assert (
        broker.invoke("spawn", "sh", "--cwd", str(tmp_path), "--", "bash", "--norc").exit_code == 0
    )
    assert broker.invoke("input", "sh", "echo $((6*7)) in $PWD", "--enter").exit_code == 0
    wait_for(lambda: f"42 in {tmp_path}" in broker.invoke("snapshot", "sh").output)


def test_the_brokers_program_run_by_hand_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_relay.broker_process", "--state-dir", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "started by `trio-relay up`" in result.stderr and "Traceback" not in result.stderr


def test_help_explains_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    for command in [
        "up",
        "down",
        "status",
        "spawn",
        "ps",
        "release",
        "send",
        "input",
        "resize",
        "attach",
        "snapshot",
        "events",
        "pending",
        "flush",
        "mode",
        "deliveries",
        "dead-letters",
        "redeliver",
        "logs",
    ]:
        assert f"  {command} " in result.output
    assert "Exit codes" in result.output


def read_until(fd: int, wanted: bytes, seen: bytearray, timeout: float = 15) -> None:
    """Read a pseudo-terminal's output into ``seen`` until ``wanted`` appears in it."""
    end = time.monotonic() + timeout
    while wanted not in seen:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(
                f"{wanted!r} not seen within {timeout} s; got {bytes(seen[-500:])!r}"
            )
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen.extend(os.read(fd, 65536))
            except OSError:  # EIO: the attach process closed its terminal
                raise AssertionError(f"{wanted!r} never came; got {bytes(seen[-500:])!r}") from None


@contextmanager
def attached(broker: Relay, name: str, size: tuple[int, int] | None = None) -> Iterator[int]:
    """`trio-relay attach NAME --drive` in a real terminal (of ``size`` rows and columns, if
    given); yields our end of it. Whatever happens, the attach process is gone afterwards."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        if size is not None:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
        os.execve(
            sys.executable,
            [*RELAY, "attach", name, "--drive", "--state-dir", broker.state],
            CLEAN_ENV,
        )
    try:
        yield fd
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass  # it had already exited and was reaped above


def test_attach_mirrors_and_drives_an_agent_through_a_real_terminal(broker: Relay) -> None:
    broker.invoke("spawn", "sh", "--", "bash", "--norc")
    wait_for(lambda: "bash" in broker.invoke("snapshot", "sh").output)
    seen = bytearray()
    with attached(broker, "sh") as fd:
        read_until(fd, b"bash", seen)  # the painted screen
        os.write(fd, b"echo attached-$((40+2))\r")  # typed into our terminal...
        read_until(fd, b"attached-42", seen)  # ...ran in the agent, mirrored back
        assert "attached-42" in broker.invoke("snapshot", "sh").output
        os.write(fd, b"\x1d")  # Ctrl-] detaches
        read_until(fd, b"detached from sh; it keeps running", seen)
        # The terminal is left as it was found, whatever the agent set, and the detach
        # line starts a clean line.
        assert RESTORE + b"[detached from sh" in seen, bytes(seen[-300:])
    assert json.loads(broker.invoke("ps", "--json").output)[0]["state"] == "running"


def test_attach_says_when_the_local_terminal_is_smaller_than_the_agents(broker: Relay) -> None:
    broker.invoke("spawn", "wide", "--rows", "30", "--cols", "120", "--", "cat")
    seen = bytearray()
    with attached(broker, "wide", size=(10, 40)) as fd:  # smaller than the agent's 30x120
        read_until(fd, b"\x1b[2J", seen)  # painted
        os.write(fd, b"\x1d")
        read_until(fd, b"detached from wide", seen)
    text = seen.decode(errors="replace")
    assert "the agent's terminal is 30x120, larger than yours (10x40)" in text
    assert "trio-relay resize wide 10 40" in text


def test_snapshot_ansi_keeps_its_escapes_when_piped(broker: Relay) -> None:
    script = "printf '\\033[1;31mRED\\033[0m plain\\n'; exec cat"
    broker.invoke("spawn", "colour", "--", "sh", "-c", script)
    wait_for(lambda: "RED plain" in broker.invoke("snapshot", "colour").output)
    piped = subprocess.run(
        [*RELAY, "snapshot", "colour", "--ansi", "--state-dir", broker.state],
        capture_output=True,
        env=CLEAN_ENV,
        timeout=30,
    )
    assert piped.returncode == 0, piped.stderr
    assert b"\x1b[" in piped.stdout and b"RED" in piped.stdout, piped.stdout
    plain = subprocess.run(
        [*RELAY, "snapshot", "colour", "--state-dir", broker.state],
        capture_output=True,
        env=CLEAN_ENV,
        timeout=30,
    )
    assert b"\x1b" not in plain.stdout and b"RED plain" in plain.stdout


def test_attach_to_an_unknown_agent_fails_clearly(broker: Relay) -> None:
    result = broker.invoke("attach", "ghost")
    assert result.exit_code == 1 and "no running agent named 'ghost'" in result.output


def test_a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = relay("up", "--state-dir", str(tmp_path / "s"), "--port", str(port))
    assert result.returncode == 1
    assert f"Error: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_events_for_one_agent_end_without_follow(broker: Relay) -> None:
    broker.invoke("spawn", "a", "--native", "--", *REFERENCE_WORKER)
    broker.invoke("spawn", "b", "--native", "--", *REFERENCE_WORKER)  # the newest events are b's
    result = broker.invoke("events", "--agent", "a", "--json")
    kinds = [(e["agent"], e["kind"]) for e in map(json.loads, result.output.splitlines())]
    assert ("a", "agent_spawned") in kinds and all(agent == "a" for agent, _ in kinds)


def test_input_keeps_non_ascii_text_and_honours_escapes(broker: Relay) -> None:
    broker.invoke("spawn", "sh", "--", "bash", "--norc")
    wait_for(lambda: "bash" in broker.invoke("snapshot", "sh").output)
    assert broker.invoke("input", "sh", "echo héllo-日本\\x41", "--enter").exit_code == 0
    wait_for(lambda: "héllo-日本A" in broker.invoke("snapshot", "sh").output)


def test_shared_pty_agents_share_one_host_that_dies_with_the_broker(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    started = relay("up", "--detach", "--shared-pty", "--state-dir", state)
    assert started.returncode == 0, started.stderr
    r = Relay(state)
    broker_pid = r.pid
    try:
        marker = unique_sleep()
        for name in ("a", "b"):
            assert r.invoke("spawn", name, "--", "sleep", marker).exit_code == 0
        assert r.invoke("spawn", "w", "--native", "--", *REFERENCE_WORKER).exit_code == 0
        status = r.invoke("status").output
        host = json.loads(r.invoke("status", "--json").output)["shared_pty"]["pid"]
        assert f"shared PTY host: pid {host}" in status
        pids = {a["name"]: a["pid"] for a in json.loads(r.invoke("ps", "--json").output)}
        assert pids["a"] == pids["b"] == host != pids["w"]
        assert len(processes_with(marker)) == 2
        os.kill(broker_pid, signal.SIGKILL)  # the host dies with it, and the programs with it
        wait_for(lambda: not pid_alive(host) and not pid_alive(pids["w"]))
        wait_for(lambda: not processes_with(marker))
    finally:
        if pid_alive(broker_pid):
            relay("down", "--state-dir", state)
