"""Bad input on the command line gets its documented error and exit code, never a traceback;
every argument is checked before anything is committed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

from helpers import CLEAN_ENV, RELAY, Relay, relay, wait_for


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELAY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**CLEAN_ENV, **(env or {})},
    )


def assert_clean(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_an_invalid_escape_in_input_is_a_usage_error(daemon: Relay) -> None:
    assert_clean(
        run("input", "a", "C:\\Users\\x", "--state-dir", daemon.state),
        2,
        "needs 8 hex digits",
        "--raw",
    )


def test_a_url_that_is_not_a_brokers_is_a_usage_error(tmp_path: Path) -> None:
    for url in ("ws://127.0.0.1:abc", "ws://127.0.0.1:99999", "http://x", "ws://host"):
        result = run("status", "--state-dir", str(tmp_path / "none"), env={"TRIO_RELAY_URL": url})
        assert_clean(result, 2, "not a broker URL", url)


def test_up_on_a_corrupt_store_says_so_and_where(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "relay.db").write_bytes(b"this is not a database " * 100)
    result = run("up", "--state-dir", str(state))
    assert_clean(result, 1, "corrupt", str(state / "relay.db"), "move it aside")


def test_a_state_dir_below_a_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "notadir").write_text("a file")
    bad = str(tmp_path / "notadir" / "x")
    assert_clean(run("up", "--state-dir", bad), 2, "not a directory")
    assert_clean(run("status", "--state-dir", bad), 2, "not a directory")


def test_a_negative_timeout_is_refused_before_the_message_is_committed(daemon: Relay) -> None:
    daemon.invoke("spawn", "cat", "--", "cat")
    result = run("send", "cat", "hello", "--wait", "--timeout", "-1", "--state-dir", daemon.state)
    assert_clean(result, 2, "-1")
    assert json.loads(daemon.invoke("deliveries", "--json").output) == []


async def test_the_broker_checks_the_timeout_before_it_commits() -> None:
    import trio
    from helpers import REFERENCE_WORKER

    from trio_relay import open_broker
    from trio_relay.client import open_client
    from trio_relay.control.server import ControlServer
    from trio_relay.errors import RemoteError

    async with open_broker() as broker:
        server = ControlServer(broker, "t" * 40)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve, "127.0.0.1", 0)
            await broker.spawn("w", REFERENCE_WORKER)
            async with open_client(url, "t" * 40) as client:
                try:
                    await client.send("w", "hi", wait=True, timeout=-1)
                except RemoteError as exc:
                    assert exc.code == "bad_request" and "timeout" in exc.message
                else:
                    raise AssertionError("a negative timeout was accepted")
                assert await client.deliveries() == []
            nursery.cancel_scope.cancel()


def test_a_connection_file_left_by_a_dead_broker_is_not_trusted(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    # A dead broker's file, whose pid now belongs to a live process (here: this one).
    (state / "connection.json").write_text(
        json.dumps({"url": "ws://127.0.0.1:9", "pid": os.getpid(), "socket": None})
    )
    (state / "broker.lock").write_text(str(os.getpid()))
    assert_clean(run("status", "--state-dir", str(state)), 3, "no broker is running")
    started = relay("up", "--detach", "--state-dir", str(state))
    try:
        assert started.returncode == 0, started.stderr
        assert (
            json.loads(run("status", "--state-dir", str(state), "--json").stdout)["pid"]
            != os.getpid()
        )
    finally:
        relay("down", "--state-dir", str(state))


def test_a_detached_brokers_logs_rotate_and_stay_out_of_up_out(tmp_path: Path) -> None:
    state = tmp_path / "state"
    started = relay("up", "--detach", "--state-dir", str(state), "--log-max-mb", "0.002")
    assert started.returncode == 0, started.stderr
    r = Relay(str(state))
    try:
        for _ in range(30):  # each refused connection logs a warning of ~110 bytes
            assert r.invoke("status", "--token", "wrong").exit_code == 3
        wait_for(lambda: (state / "broker.log.1").exists())
        assert (state / "broker.log").stat().st_size <= 2000 + 500
        assert not (state / "broker.log.4").exists()
        assert "INFO" not in (state / "up.out").read_text()
    finally:
        relay("down", "--state-dir", str(state))


def test_prune_deletes_what_ended_and_keeps_what_is_open(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert relay("up", "--detach", "--state-dir", str(state)).returncode == 0
    r = Relay(str(state))
    try:
        r.invoke("spawn", "cat", "--", "cat")
        assert r.invoke("send", "cat", "one", "--wait").exit_code == 0
        r.invoke("spawn", "gone", "--", "cat")
        r.invoke("release", "gone")
        r.invoke("mode", "cat", "hold")
        assert r.invoke("send", "cat", "held").exit_code == 0
        pruned = r.invoke("prune", "--older-than", "0s", "--json")
        assert json.loads(pruned.output) == {"deliveries": 1, "agents": 1}
        states = [d["state"] for d in json.loads(r.invoke("deliveries", "--json").output)]
        assert states == ["queued"]
    finally:
        relay("down", "--state-dir", str(state))
    with closing(sqlite3.connect(state / "relay.db")) as conn:
        assert [row[0] for row in conn.execute("SELECT name FROM agents")] == ["cat"]
