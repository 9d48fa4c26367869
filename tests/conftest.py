"""Shared fixtures. Every test also checks that it left no child process behind."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

import trio_relay.supervisor
from helpers import children_of, group_alive
from trio_relay import Broker, open_broker

@pytest.fixture(autouse=True)
def no_leftover_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Record the process group of every worker spawned; after the test none may be alive,
    and this process may have no child left (running or unreaped)."""
    groups: list[int] = []
    real_spawn = trio_relay.supervisor.spawn_process

    def recording_spawn(*args, **kwargs):  # type: ignore[no-untyped-def]
        proc = real_spawn(*args, **kwargs)
        groups.append(proc.pgid)
        return proc

    monkeypatch.setattr(trio_relay.supervisor, "spawn_process", recording_spawn)
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
