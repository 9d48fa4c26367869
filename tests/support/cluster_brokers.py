"""Brokers of one cluster as hosts: real brokers (`up --detach --cluster`), each in its own
state directory, started by name and stopped (or killed) after the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import CLEAN_ENV, RELAY, Relay, pid_alive, relay, wait_for

from trio_relay.state import StateDir


class Brokers:
    """Start brokers of one cluster by name; every one is stopped (or killed) after."""

    def __init__(self, dsn: str, root: Path) -> None:
        self.dsn, self.root = dsn, root
        self.started: dict[str, Relay] = {}
        self.pids: set[int] = set()

    def start(
        self, name: str, *options: str, dsn: str | None = None, prefix: Sequence[str] = ()
    ) -> Relay:
        """Start broker ``name`` (its command after ``prefix``, e.g. ``ip netns exec NS``)."""
        state = str(self.root / name)
        argv = [
            *prefix,
            *RELAY,
            "up",
            "--detach",
            "--state-dir",
            state,
            "--cluster",
            dsn or self.dsn,
            "--broker-name",
            name,
            "--cluster-lease",
            "1.5",
            *options,
        ]
        up = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=CLEAN_ENV)
        assert up.returncode == 0, up.stderr
        broker = Relay(state)
        self.started[name] = broker
        self.pids.add(broker.pid)
        return broker

    def kill(self, name: str) -> None:
        """SIGKILL broker ``name`` and wait until it is gone (its agents die with it)."""
        pid = self.started[name].pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid))

    def stop_all(self) -> None:
        for broker in self.started.values():
            connection = StateDir(Path(broker.state)).read_connection()
            if connection is not None:
                self.pids.add(connection.pid)
                if pid_alive(connection.pid):
                    relay("down", "--state-dir", broker.state)
        for pid in self.pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(pid_alive(p) for p in self.pids))


@pytest.fixture
def brokers(cluster_dsn: str, tmp_path: Path) -> Iterator[Brokers]:
    made = Brokers(cluster_dsn, tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def cli(broker: Relay, *args: str, json_out: bool = False) -> Any:
    """Run `trio-relay ARGS` against ``broker`` as a real process; its stdout (parsed if
    --json). Fails the test on a non-zero exit."""
    extra = ["--json"] if json_out else []
    done = relay(*extra, "--state-dir", broker.state, *args)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return json.loads(done.stdout) if json_out else done.stdout
