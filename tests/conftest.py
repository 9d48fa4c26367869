"""Shared fixtures. Every test also checks that it left no child process behind."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers import Relay, children_of, group_alive, pid_alive, relay, wait_for

import trio_relay.broker.supervisor
from trio_relay import Broker, open_broker
from trio_relay.state import StateDir


@pytest.fixture(autouse=True)
def no_leftover_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Record the process group of every worker spawned; after the test none may be alive,
    and this process may have no child left (running or unreaped)."""
    groups: list[int] = []
    real_spawn = trio_relay.broker.supervisor.spawn_process

    def recording_spawn(*args, **kwargs):  # type: ignore[no-untyped-def]
        proc = real_spawn(*args, **kwargs)
        groups.append(proc.pgid)
        return proc

    monkeypatch.setattr(trio_relay.broker.supervisor, "spawn_process", recording_spawn)
    yield groups
    alive = [g for g in groups if group_alive(g)]
    assert not alive, f"worker process groups still alive after the test: {alive}"
    leftovers = children_of(os.getpid())
    assert not leftovers, f"child processes left behind: {leftovers}"
    try:
        reaped = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        reaped = (0, 0)
    assert reaped == (0, 0), f"an exited child was left unreaped: {reaped}"


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with open_broker() as b:
        yield b


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Relay]:
    """A broker started with `up --detach` (so it is not our child); stopped after."""
    state = str(tmp_path / "state")
    started = relay("up", "--detach", "--state-dir", state)
    assert started.returncode == 0, started.stderr
    assert "broker running: pid" in started.stdout
    r = Relay(state)
    pids = {r.pid}
    yield r
    connection = StateDir(Path(state)).read_connection()  # a test may have started another
    if connection is not None:
        pids.add(connection.pid)
    if any(pid_alive(p) for p in pids):
        relay("down", "--state-dir", state)
    for pid in pids:
        if pid_alive(pid):  # `down` failed: do not leave it behind either way
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(pid_alive(p) for p in pids))
