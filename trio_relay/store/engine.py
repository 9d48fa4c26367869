"""The store's engine: one SQLite connection (the standard library's), its thread, and the
group-committing writer. The schema and the statements are in :mod:`trio_relay.store.sql`.

Threading: one connection, created with ``check_same_thread=False`` and used by one call at a
time: every call runs in a worker thread through ``trio.to_thread.run_sync`` with a
``CapacityLimiter(1)``, so SQLite never blocks the Trio thread. Writes go through one writer
task that commits everything queued meanwhile as one transaction (group commit, each write
in its own savepoint); a write's ``on_commit`` callback runs on the Trio thread right after
its commit, in commit order, so in-memory state follows the database in the same order.

Errors: any SQLite or OS error becomes :class:`StoreError` for the caller of that write,
after the ``on_error`` hook (the broker turns it into a ``store_error`` event). A failed
transaction is rolled back; nothing committed before it is touched.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio

from trio_relay.errors import StoreError
from trio_relay.store import sql

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Op(Generic[T]):
    __slots__ = ("fn", "what", "on_commit", "on_abort", "result", "error", "done")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], T],
        what: str,
        on_commit: Callable[[T], None] | None,
        on_abort: Callable[[BaseException], None] | None,
    ) -> None:
        self.fn, self.what = fn, what
        self.on_commit, self.on_abort = on_commit, on_abort
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = trio.Event()


class Store:
    """The connection, its thread and the group-committing writer. Open with
    :func:`open_store`."""

    def __init__(self, conn: sqlite3.Connection, tag: str, *, threaded: bool) -> None:
        self._conn = conn
        self.tag = tag
        self._threaded = threaded
        self._limiter = trio.CapacityLimiter(1)
        self._send, self._receive = trio.open_memory_channel[_Op[Any]](math.inf)
        self._stopped = trio.Event()
        self._closing = False
        #: Called as ``on_error(operation, message)`` for every failed operation.
        self.on_error: Callable[[str, str], None] | None = None
        #: Counters: transactions committed, writes committed, writes failed.
        self.commits = self.writes = self.failures = 0

    # -- running sync SQLite code off the Trio thread

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._threaded:
            await trio.lowlevel.checkpoint()
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def read(self, fn: Callable[[sqlite3.Connection], T], what: str = "read") -> T:
        """Run ``fn(conn)`` (a read) on the store's thread. Raises StoreError.

        Cancellation: a cancel point before the call; once in the thread it runs to its end.
        """
        try:
            return await self._call(fn, self._conn)
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(what, exc) from exc

    # -- writes

    def submit(
        self,
        fn: Callable[[sqlite3.Connection], T],
        what: str,
        *,
        on_commit: Callable[[T], None] | None = None,
        on_abort: Callable[[BaseException], None] | None = None,
    ) -> _Op[T]:
        """Queue ``fn(conn)`` for the next transaction without waiting (never blocks).

        ``on_commit(result)`` runs on the Trio thread after the commit, in commit order;
        ``on_abort(error)`` if it failed (a StoreError, or the write's own exception). Both
        must be quick and must not raise. Raises StoreError if the store is closed.
        """
        op = _Op(fn, what, on_commit, on_abort)
        try:
            self._send.send_nowait(op)
        except trio.ClosedResourceError:
            raise StoreError(what, "the store is closed") from None
        return op

    async def write(
        self,
        fn: Callable[[sqlite3.Connection], T],
        what: str,
        *,
        on_commit: Callable[[T], None] | None = None,
        on_abort: Callable[[BaseException], None] | None = None,
    ) -> T:
        """Commit ``fn(conn)`` and return its result once it is durable. Raises StoreError.

        Cancellation: a cancel point before the write is queued; once queued the caller
        waits for the outcome (shielded; at most the busy timeout), so it never loses track
        of a change that was committed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            op = self.submit(fn, what, on_commit=on_commit, on_abort=on_abort)
        except StoreError as exc:
            if on_abort is not None:
                on_abort(exc)
            raise
        with trio.CancelScope(shield=True):
            await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer: commit queued writes in batches until :meth:`aclose`.

        Shielded: cancelling its nursery does not stop it; only :meth:`aclose` does, after
        the writes queued before it are done. If it fails, every queued write fails too.
        """
        with trio.CancelScope(shield=True):
            task_status.started()
            try:
                async for first in self._receive:
                    batch = [first]
                    while True:
                        try:
                            batch.append(self._receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await self._commit(batch)
            finally:
                self._fail_queued()
                try:
                    await self._call(self._conn.close)
                finally:
                    self._stopped.set()

    @property
    def closed(self) -> bool:
        """Whether the store takes no more writes (closing or closed)."""
        return self._closing

    async def aclose(self) -> None:
        """Stop taking writes, finish those queued, close the connection. Idempotent.
        Run it shielded when the store must be closed cleanly."""
        self._closing = True
        self._send.close()
        await self._stopped.wait()

    async def _commit(self, batch: list[_Op[Any]]) -> None:
        failure = await self._call(self._commit_batch, batch)
        if failure is None:
            self.commits += 1
        try:
            for op in batch:
                error = op.error if op.error is not None else failure
                if error is None:
                    self.writes += 1
                    if op.on_commit is not None:
                        _run_callback(op.what, op.on_commit, op.result)
                    continue
                if _is_store_error(error):
                    op.error = self._failed(op.what, error)
                else:  # a fault in the write's own code: its caller gets it as it is
                    op.error = error
                    log.error("store: %s failed", op.what, exc_info=error)
                if op.on_abort is not None:
                    _run_callback(op.what, op.on_abort, op.error)
        finally:
            for op in batch:  # even if a callback failed: no writer is left waiting
                op.done.set()

    def _commit_batch(self, batch: list[_Op[Any]]) -> BaseException | None:
        """On the store's thread: one transaction, a savepoint per write when there are
        several. Returns the error that failed the whole transaction, or None."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return exc
        try:
            if len(batch) == 1:
                batch[0].result = batch[0].fn(conn)
            else:
                for op in batch:
                    conn.execute("SAVEPOINT w")
                    try:
                        op.result = op.fn(conn)
                    except Exception as exc:  # handed to that write's caller
                        op.error = exc
                        conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
            conn.execute("COMMIT")
            return None
        except Exception as exc:  # the whole transaction failed: every write in it
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback_error:
                    log.error("store: rollback failed too: %s", rollback_error)
            return exc

    def _failed(self, what: str, error: BaseException | str) -> StoreError:
        if isinstance(error, StoreError):
            return error
        self.failures += 1
        exc = StoreError(what, error)
        log.error("%s", exc)
        if self.on_error is not None:
            self.on_error(what, exc.error)
        return exc

    def _fail_queued(self) -> None:
        self._closing = True
        self._send.close()
        while True:
            try:
                op = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            op.error = self._failed(op.what, "the store is closed")
            if op.on_abort is not None:
                op.on_abort(op.error)
            op.done.set()


def _is_store_error(error: BaseException) -> bool:
    return isinstance(error, (sqlite3.Error, OSError, StoreError))


# ---------------------------------------------------------------- opening


def _connect(path: str, busy_timeout: float) -> tuple[sqlite3.Connection, str]:
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if path != ":memory:" and mode != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        return conn, sql.prepare(conn)
    except BaseException:
        conn.close()
        raise


async def open_store_connection(
    path: str | Path, *, threaded: bool = True, busy_timeout: float = 5.0
) -> Store:
    """Open (creating if needed) the store at ``path`` (``":memory:"`` for a store that does
    not outlive the process). Raises StoreError if it cannot be opened or written.

    ``threaded=False`` runs SQLite on the Trio thread (tests on a MockClock). Start its
    writer with :meth:`Store.run` in a nursery, or use :func:`open_store`.
    """
    store_path = str(path)
    try:
        if threaded:
            conn, tag = await trio.to_thread.run_sync(_connect, store_path, busy_timeout)
        else:
            conn, tag = _connect(store_path, busy_timeout)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"open {store_path}", exc) from exc
    return Store(conn, tag, threaded=threaded)


@asynccontextmanager
async def open_store(
    path: str | Path, *, threaded: bool = True, busy_timeout: float = 5.0
) -> AsyncIterator[Store]:
    """``async with open_store(path) as store``: the store and its writer for the block;
    leaving it finishes the queued writes and closes the connection (shielded), also when
    entering fails after the connection was opened."""
    store = await open_store_connection(path, threaded=threaded, busy_timeout=busy_timeout)
    try:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(store.run)
                yield store
            finally:
                # The writer (shielded) finishes what is queued and closes the connection;
                # the nursery waits for it.
                store._closing = True
                store._send.close()
    finally:
        if not store._stopped.is_set():  # the writer never ran: close the connection here
            with trio.CancelScope(shield=True):
                await store._call(store._conn.close)


def _run_callback(what: str, callback: Callable[[Any], None], value: Any) -> None:
    """Run a write's commit or abort callback. A fault in one (a bug of ours) is logged
    with its traceback and ends only that callback: the writer, and every other write,
    carry on."""
    try:
        callback(value)
    except Exception:
        log.exception("store: the callback after %s failed", what)
