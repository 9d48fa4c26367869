"""No orphans: what a wrapped program started dies with its worker."""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

import trio
from helpers import pid_alive, wait_until

from trio_relay import open_broker
from trio_relay.linux.sweep import kill_run, run_members
from trio_relay.wire import AgentExited, AgentReady

PTY = [sys.executable, "-m", "trio_relay.worker.pty", "--"]


def with_marker(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue  # it ended while we looked
    return [p for p in found if pid_alive(p)]


async def test_a_killed_worker_takes_its_programs_background_jobs_along() -> None:
    marker = f"{5000 + random.random() * 1000:.6f}"
    async with open_broker() as broker:
        info = await broker.spawn("sh", [*PTY, "bash", "--norc"])
        await broker.events.wait_for(lambda e: isinstance(e, AgentReady))
        # Background jobs get process groups of their own, out of reach of the wrapper's.
        await broker.write_input("sh", f"sleep {marker} & sleep {marker} | cat &\r")
        await wait_until(lambda: len(with_marker(marker)) == 2)
        os.kill(info.pid, signal.SIGKILL)
        exited = await broker.events.wait_for(lambda e: isinstance(e, AgentExited))
        assert exited.signal == signal.SIGKILL and not exited.intended
        await wait_until(lambda: not with_marker(marker), timeout=5)


async def test_the_run_tag_finds_exactly_the_tagged_processes() -> None:
    run = f"test-{random.getrandbits(32):x}"
    env = {**os.environ, "TRIO_RELAY_RUN": run}
    tagged = await trio.lowlevel.open_process(["sleep", "30"], env=env)
    untagged = await trio.lowlevel.open_process(["sleep", "30"])
    try:
        assert run_members(run) == [tagged.pid]
        assert kill_run(run) == 1
        assert await tagged.wait() == -signal.SIGKILL
        assert untagged.returncode is None
    finally:
        untagged.kill()
        await untagged.wait()
