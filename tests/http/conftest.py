"""A broker serving HTTP (`up --detach --http 127.0.0.1:0`), stopped after the test."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import Relay, pid_alive, relay, wait_for

from trio_relay.state import StateDir


@dataclass
class HttpBroker:
    relay: Relay
    url: str  # http://127.0.0.1:PORT
    token: str

    @property
    def ws(self) -> str:
        return self.url.replace("http://", "ws://")


@pytest.fixture
def http_broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HttpBroker]:
    """Options for `up` come from ``@pytest.mark.up_options(...)``."""
    state = tmp_path / "state"
    marker = request.node.get_closest_marker("up_options")
    options = list(marker.args) if marker else []
    started = relay("up", "--detach", "--state-dir", str(state), "--http", "127.0.0.1:0", *options)
    assert started.returncode == 0, started.stderr
    connection = StateDir(state).read_connection()
    assert connection is not None and connection.http is not None
    token = (state / "token").read_text().strip()
    yield HttpBroker(Relay(str(state)), connection.http, token)
    if pid_alive(connection.pid):
        relay("down", "--state-dir", str(state))
    if pid_alive(connection.pid):
        os.kill(connection.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(connection.pid))
