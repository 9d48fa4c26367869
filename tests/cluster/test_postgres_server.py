"""tests/support/postgres.py itself: a real PostgreSQL server answers, survives an immediate
restart and a SIGKILL with its committed data, listens on TCP when asked, and
CuttableProxy forwards psql and cuts and restores connections."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from postgres import CuttableProxy, PostgresServer, find_bin_dir, postgres_missing_reason
from postgres_fixtures import cluster_dsn, postgres_server  # noqa: F401

pytestmark = pytest.mark.timeout(60)


def psql_at(*target: str, sql: str = "select 1") -> subprocess.CompletedProcess[str]:
    """The psql binary, connecting to ``target`` (a dsn, or -h/-p options), run on ``sql``."""
    server_bin = find_bin_dir()
    assert server_bin is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        [str(server_bin / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", *target],
        input=sql,
        capture_output=True,
        text=True,
        timeout=20,
        env={**env, "PGCONNECT_TIMEOUT": "5"},
    )


def via(proxy: CuttableProxy, sql: str = "select 1") -> subprocess.CompletedProcess[str]:
    host, port = proxy.address
    return psql_at("-h", host, "-p", str(port), "-U", "postgres", "-d", "postgres", sql=sql)


def wait_for(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"condition not met within {timeout} s"
        time.sleep(0.02)


def open_session(address: tuple[str, int], application_name: str) -> socket.socket:
    """A raw protocol-3 session (trust auth) through ``address``, ready for queries."""
    sock = socket.create_connection(address, timeout=10)
    params = b"".join(
        k + b"\0" + v + b"\0"
        for k, v in (
            (b"user", b"postgres"),
            (b"database", b"postgres"),
            (b"application_name", application_name.encode()),
        )
    )
    body = struct.pack("!i", 196608) + params + b"\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    received = b""
    while not received.endswith(b"Z\0\0\0\x05I"):  # ReadyForQuery, idle
        chunk = sock.recv(4096)
        assert chunk, f"the server closed the session during startup: {received!r}"
        received += chunk
    return sock


def sessions_named(server: PostgresServer, application_name: str) -> int:
    count = server.psql(
        f"select count(*) from pg_stat_activity where application_name = '{application_name}'"
    )
    return int(count)


def connection_ended(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_it_can_run_here() -> None:
    """The reason a server could not start, if any, is shown (the fixtures skip on it)."""
    reason = postgres_missing_reason()
    if reason is not None:
        pytest.skip(reason)


def test_select_one(postgres_server: PostgresServer) -> None:  # noqa: F811
    assert postgres_server.psql("select 1") == "1"
    done = psql_at(postgres_server.dsn)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert postgres_server.psql("show fsync") == "on"
    assert postgres_server.psql("show max_connections") == "200"
    assert postgres_server.psql("show listen_addresses") == ""
    assert postgres_server.socket_path.is_socket()


def test_cluster_dsn_is_a_fresh_database(
    postgres_server: PostgresServer,  # noqa: F811
    cluster_dsn: str,  # noqa: F811
) -> None:
    done = psql_at(
        cluster_dsn,
        sql="select current_database(); select count(*) from pg_class "
        "where relkind = 'r' and relnamespace = 'public'::regnamespace",
    )
    assert done.returncode == 0, done.stderr
    name, tables = done.stdout.split()
    assert name.startswith("test_") and tables == "0"
    assert name in cluster_dsn


def test_immediate_restart_keeps_committed_rows(
    postgres_server: PostgresServer,  # noqa: F811
    cluster_dsn: str,  # noqa: F811
) -> None:
    db = urlsplit(cluster_dsn).path.lstrip("/")
    postgres_server.psql("create table t (n int); insert into t values (1), (2)", db=db)
    postgres_server.restart(mode="immediate")
    assert postgres_server.psql("select 1") == "1"
    assert postgres_server.psql("select sum(n) from t", db=db) == "3"
    assert "database system was interrupted" in postgres_server.log_tail(200) or (
        "not properly shut down" in postgres_server.log_tail(200)
    )


def test_proxy_forwards_psql_and_cuts(postgres_server: PostgresServer) -> None:  # noqa: F811
    with CuttableProxy(postgres_server.socket_path) as proxy:
        assert proxy.address[0] == "127.0.0.1"
        done = via(proxy)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "1"

        live = open_session(proxy.address, "cut_me")
        wait_for(lambda: proxy.live_connections == 1)
        assert sessions_named(postgres_server, "cut_me") == 1
        proxy.cut()
        assert proxy.live_connections == 0
        assert connection_ended(live)
        live.close()
        wait_for(lambda: sessions_named(postgres_server, "cut_me") == 0)

        refused = via(proxy)
        assert refused.returncode != 0
        assert "server closed the connection" in refused.stderr or "reset" in refused.stderr

        proxy.restore()
        done = via(proxy, "select 2")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "2"


def test_proxy_carries_large_messages_both_ways(
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    with CuttableProxy(postgres_server.socket_path) as proxy:
        down = via(proxy, "select repeat('x', 8000000)")
        assert down.returncode == 0, down.stderr
        assert down.stdout.strip() == "x" * 8_000_000
        up = via(proxy, "select md5('" + "y" * 8_000_000 + "')")
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == hashlib.md5(b"y" * 8_000_000).hexdigest()


def test_proxy_cut_can_leave_the_server_side_open(
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    with CuttableProxy(postgres_server.socket_path) as proxy:
        live = open_session(proxy.address, "partitioned")
        proxy.cut(keep_server_side=True)
        assert connection_ended(live)
        live.close()
        time.sleep(0.2)
        assert sessions_named(postgres_server, "partitioned") == 1  # it noticed nothing
        proxy.restore()
        wait_for(lambda: sessions_named(postgres_server, "partitioned") == 0)


def test_proxy_resets_when_the_target_is_missing(tmp_path: Path) -> None:
    with CuttableProxy(tmp_path / "no-such-socket") as proxy:
        try:
            client = socket.create_connection(proxy.address, timeout=5)
        except ConnectionResetError:
            pass  # reset so soon that connect() itself saw it
        else:
            with client:
                assert connection_ended(client)
        wait_for(lambda: proxy.accepted == 1 and proxy.live_connections == 0, timeout=5)


def test_own_server_over_tcp_survives_kill_and_is_removed() -> None:
    reason = postgres_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    with socket.socket() as probe:  # a free port (another process could take it: unlikely)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = PostgresServer(tcp_address=("127.0.0.1", port))
    try:
        started = time.monotonic()
        server.start()
        print(f"initdb + start: {time.monotonic() - started:.2f} s")
        done = psql_at("-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres")
        assert done.returncode == 0, done.stderr
        server.psql("create table t (n int); insert into t values (7)")

        with CuttableProxy(("127.0.0.1", port)) as proxy:
            assert via(proxy, "select n from t").stdout.strip() == "7"
            proxy.cut()
            assert via(proxy).returncode != 0
            proxy.restore()
            assert via(proxy).returncode == 0

        pid = server.pid
        assert pid is not None
        server.kill()
        assert not server.running
        assert psql_at(server.dsn).returncode != 0
        started = time.monotonic()
        server.start()
        print(f"start after SIGKILL: {time.monotonic() - started:.2f} s")
        assert server.psql("select n from t") == "7"
        server.stop()
        assert not server.running
    finally:
        server.close()
    assert not server.root.exists()
