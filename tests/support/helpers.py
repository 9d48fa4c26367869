"""Helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from click.testing import CliRunner

from trio_relay.cli.main import main
from trio_relay.state import StateDir

SUPPORT = Path(__file__).resolve().parent  # helper programs the tests run
REFERENCE_WORKER = [sys.executable, "-m", "trio_relay.worker.reference"]


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


async def keep_failure(
    outcomes: list[BaseException],
    error: type[BaseException],
    call: Callable[[], Awaitable[object]],
) -> None:
    """Await ``call()`` and keep the ``error`` it raises in ``outcomes``, for a test to
    assert on how each waiter ended (anything else it raises propagates; a return keeps
    nothing)."""
    try:
        await call()
    except error as exc:
        outcomes.append(exc)


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


RELAY = [sys.executable, "-m", "trio_relay"]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_RELAY_")}


def relay(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `trio-relay ARGS` as a real process."""
    return subprocess.run(
        [*RELAY, *args], capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV
    )


def wait_for(predicate, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` (a sync test runs no Trio loop) until true, or fail."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


@dataclass
class Relay:
    state: str

    @property
    def pid(self) -> int:
        connection = StateDir(Path(self.state)).read_connection()
        assert connection is not None
        return connection.pid

    def invoke(self, *args: str):  # type: ignore[no-untyped-def]
        """Run a command in-process through click's CliRunner."""
        command, *rest = args
        return CliRunner().invoke(
            main,
            [command, "--state-dir", self.state, *rest],
            env=dict.fromkeys(["TRIO_RELAY_URL", "TRIO_RELAY_TOKEN"]),
            catch_exceptions=False,
        )
