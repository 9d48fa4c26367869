"""The state directory: one broker per directory, a private token, stale locks taken over."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from trio_relay.errors import BrokerAlreadyRunning
from trio_relay.state import StateDir


def test_a_second_broker_on_the_same_directory_is_refused_with_the_holders_pid(
    tmp_path: Path,
) -> None:
    first = StateDir.open(tmp_path / "s")
    first.acquire_lock()
    second = StateDir.open(tmp_path / "s")
    with pytest.raises(BrokerAlreadyRunning) as info:
        second.acquire_lock()
    assert info.value.pid == os.getpid() and str(os.getpid()) in str(info.value)
    first.release_lock()
    second.acquire_lock()  # free again
    second.release_lock()


def test_a_stale_lock_from_a_dead_broker_is_taken_over(tmp_path: Path) -> None:
    code = (
        "import os, sys; from trio_relay.state import StateDir; "
        f"StateDir.open({str(tmp_path)!r}).acquire_lock(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert (tmp_path / "broker.lock").read_text().isdigit()  # the dead broker's pid is there
    state = StateDir.open(tmp_path)
    state.acquire_lock()
    assert (tmp_path / "broker.lock").read_text() == str(os.getpid())
    state.release_lock()


def test_the_token_is_private_and_stable(tmp_path: Path) -> None:
    state = StateDir.open(tmp_path / "s")
    token = state.token()
    assert len(token) >= 32 and state.token() == token
    assert stat.S_IMODE(state.token_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700


def test_connection_file_round_trip(tmp_path: Path) -> None:
    state = StateDir.open(tmp_path)
    assert state.read_connection() is None
    state.write_connection("ws://127.0.0.1:1234")
    conn = state.read_connection()
    assert conn is not None and conn.url == "ws://127.0.0.1:1234" and conn.pid == os.getpid()


def test_an_empty_token_file_is_replaced_not_used(tmp_path: Path) -> None:
    state = StateDir.open(tmp_path)
    state.token_path.write_text("")  # a first start that died before writing it
    token = state.token()
    assert len(token) >= 32 and state.token_path.read_text().strip() == token
    assert stat.S_IMODE(state.token_path.stat().st_mode) == 0o600
