"""PostgreSQL under Trio: psycopg 3's synchronous API in worker threads.

psycopg's async API runs on asyncio only, so each statement runs in a worker thread
(``trio.to_thread``) on one of a few connections, at most one thread per connection (a
capacity limiter as large as the pool). Writes are not abandoned on cancellation: the
caller waits for the commit, so what it is told matches what is stored. Reads are: a
cancelled read returns at once, and its connection goes back to the pool when its thread
ends. A connection that fails is closed, and the next statement opens a new one.

Waiting for notifications (:class:`Listener`) needs no thread: the connection's socket is
watched with ``trio.lowlevel.wait_readable`` and read with libpq's non-blocking calls.

Errors: every psycopg error becomes :class:`~trio_relay.errors.ClusterUnavailable` (a
lost or refused connection, a server shutting down, a statement that failed); our own
exceptions raised inside a statement function pass as they are.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import psycopg
import trio

from trio_relay.errors import ClusterUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Connection settings for every connection of a broker's: a short connect timeout, and TCP
#: keepalives and a user timeout so a cut network is noticed in seconds, not hours.
CONNECT_OPTIONS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 8000,
    "application_name": "trio-relay",
    # A server that is up but stalled (a lock, a synchronous standby away) fails a
    # statement instead of holding an uncancellable write for ever.
    "options": "-c statement_timeout=15000 -c lock_timeout=5000",
}


def connect(dsn: str) -> psycopg.Connection[Any]:
    """A new autocommit connection (statements open their own transactions). Raises
    ClusterUnavailable."""
    try:
        return psycopg.connect(dsn, autocommit=True, **CONNECT_OPTIONS)
    except psycopg.Error as exc:
        raise ClusterUnavailable(f"cannot connect to the cluster's PostgreSQL: {exc}") from exc


def _lost(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class Database:
    """A pool of ``size`` connections to ``dsn``, opened as needed."""

    def __init__(self, dsn: str, size: int = 4) -> None:
        self.dsn = dsn
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._limiter = trio.CapacityLimiter(size)
        self._closed = False
        #: Statements run, and connections lost, since start (for status and tests).
        self.statements = 0
        self.lost = 0

    async def write(self, fn: Callable[[psycopg.Connection[Any]], T], what: str) -> T:
        """Run ``fn(connection)`` (one transaction) and return its result. Raises
        ClusterUnavailable (the outcome of a commit whose connection broke is unknown: make
        ``fn`` idempotent). Cancellation: waits for the statement to finish."""
        return await trio.to_thread.run_sync(self._run, fn, what, limiter=self._limiter)

    async def read(self, fn: Callable[[psycopg.Connection[Any]], T], what: str) -> T:
        """As :meth:`write`, but cancellable at once (the statement finishes in its thread)."""
        return await trio.to_thread.run_sync(
            self._run, fn, what, limiter=self._limiter, abandon_on_cancel=True
        )

    def _run(self, fn: Callable[[psycopg.Connection[Any]], T], what: str) -> T:
        """In a worker thread: a connection from the pool, ``fn`` on it, the connection
        back (or closed, if it broke)."""
        with self._lock:
            if self._closed:
                raise ClusterUnavailable(f"cannot {what}: the broker is leaving the cluster")
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            conn = connect(self.dsn)
        try:
            self.statements += 1
            result = fn(conn)
        except psycopg.Error as exc:
            if _lost(exc) or conn.broken:
                self.lost += 1
                conn.close()
                self.drop_connections()  # the others were likely cut off too
            else:  # the statement failed (a conflict, a server shutting down): retry later
                self._give_back(conn)
            raise ClusterUnavailable(f"cannot {what}: {exc}") from exc
        except BaseException:
            self._give_back(conn)
            raise
        self._give_back(conn)
        return result

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if self._closed or conn.broken:
                conn.close()
            else:
                self._idle.append(conn)

    def drop_connections(self) -> None:
        """Close the idle connections (after a failure elsewhere: they may be dead too)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def aclose(self) -> None:
        """Close every connection once its statement ends. Idempotent."""
        with self._lock:
            self._closed = True
        async with self._limiter:  # nobody else runs meanwhile, for a moment
            pass
        await trio.to_thread.run_sync(self.drop_connections)


class Listener:
    """One connection that LISTENs on ``channels`` and calls ``on_notify(channel, payload)``
    for each notification, on the Trio thread, in order."""

    def __init__(
        self,
        dsn: str,
        channels: Iterable[str],
        on_notify: Callable[[str, str], None],
        *,
        ping_every: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.channels = tuple(channels)
        self.on_notify = on_notify
        self.ping_every = ping_every
        self._conn: psycopg.Connection[Any] | None = None
        self._caught: list[tuple[str, str]] = []  # notifications met while a statement ran

    async def listen(self, on_connected: Callable[[], None]) -> None:
        """Connect, LISTEN, call ``on_connected()``, then deliver notifications until the
        connection fails (ClusterUnavailable) or the task is cancelled. A notification sent
        while no connection listened is lost: after a reconnect, look again at what it
        would say."""
        conn = await trio.to_thread.run_sync(connect, self.dsn, abandon_on_cancel=True)
        self._conn = conn
        conn.add_notify_handler(lambda n: self._caught.append((n.channel, n.payload)))
        try:
            try:
                for channel in self.channels:
                    await trio.to_thread.run_sync(conn.execute, f'LISTEN "{channel}"')
            except psycopg.Error as exc:
                raise ClusterUnavailable(f"cannot LISTEN: {exc}") from exc
            on_connected()
            pgconn = conn.pgconn
            while True:
                try:
                    with trio.move_on_after(self.ping_every) as idle:
                        await trio.lowlevel.wait_readable(pgconn.socket)
                except trio.ClosedResourceError:
                    raise ClusterUnavailable(
                        "the cluster's LISTEN connection was dropped"
                    ) from None
                try:
                    if idle.cancelled_caught:  # nothing for a while: is it still there?
                        await trio.to_thread.run_sync(conn.execute, "SELECT 1")
                    else:
                        pgconn.consume_input()
                    caught, self._caught = self._caught, []
                    for channel, payload in caught:
                        self.on_notify(channel, payload)
                    while (notify := pgconn.notifies()) is not None:
                        self.on_notify(notify.relname.decode(), notify.extra.decode())
                except psycopg.Error as exc:
                    msg = f"the cluster's LISTEN connection failed: {exc}"
                    raise ClusterUnavailable(msg) from exc
        finally:
            self._conn = None
            if not conn.closed:
                trio.lowlevel.notify_closing(conn.pgconn.socket)
                conn.close()

    def interrupt(self) -> None:
        """Make :meth:`listen` fail now (its connection is suspected dead)."""
        if self._conn is not None:
            trio.lowlevel.notify_closing(self._conn.pgconn.socket)
            self._conn.close()
