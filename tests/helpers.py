"""Helpers shared by the tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import trio

REFERENCE_WORKER = [sys.executable, "-m", "trio_relay.reference_worker"]


def children_of(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended while we looked
        fields = stat[stat.rindex(")") + 2 :].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == pid and state != "Z":
            found.append(int(entry.name))
    return found


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.005) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(interval)


async def kill_and_reap(proc: trio.Process) -> None:
    """SIGKILL ``proc`` if it is still running, reap it and close its pipes (shielded, so
    a cancelled test still leaves no child behind)."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                await stream.aclose()
