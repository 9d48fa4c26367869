"""pytest fixtures for a real PostgreSQL server (tests/support/postgres.py).

Not registered in any conftest: a test module imports both, as it imports other helpers
(tests/support is on pytest's pythonpath)::

    from postgres_fixtures import cluster_dsn, postgres_server  # noqa: F401

``postgres_server`` is one server for the whole session, skipped (with the reason) only
where none can be started. ``cluster_dsn`` is a fresh database per test, dropped after.
A test that stops or kills the shared server should start it again; ``cluster_dsn``
starts it if it finds it down.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
from postgres import PostgresServer, postgres_missing_reason

_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A started PostgreSQL server (Unix socket only), stopped and removed at the end."""
    reason = postgres_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def cluster_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The dsn of a new, empty database on ``postgres_server`` (a unique name per test),
    dropped after the test (its sessions ended) if the server is still up."""
    if not postgres_server.running:
        postgres_server.start()
    name = f"test_{os.getpid()}_{next(_database_numbers)}"
    dsn = postgres_server.create_database(name)
    yield dsn
    if postgres_server.running:
        postgres_server.drop_database(name)
