"""The durable store: SQLite from the standard library, in the state directory.

Schema (one file, ``relay.db``; WAL journal, ``synchronous=FULL``):

- ``deliveries``: one row per delivery. ``seq`` (the rowid) orders them and, with the
  store's tag, makes the delivery id (``<tag>-<seq>``), so a lookup by id is a rowid lookup
  and no second unique index is paid for on every insert. A state change is one ``UPDATE``
  of one row, conditional on the state it leaves. Dead letters are rows in state
  ``dead_letter`` (with their last error), found through a partial index. Queries on open
  deliveries name the partial index ``deliveries_open`` (``INDEXED BY``, with its exact
  ``WHERE`` condition), so their cost follows the open deliveries, never the history;
  listing one agent's deliveries uses ``deliveries_agent``.
- ``agents``: one row per agent spec (argv, cwd, the caller's extra env, restart policy,
  timing) with ``running`` (respawn at start) and ``mode`` (``auto_inject`` | ``hold``).
- ``meta``: the schema version and the store's tag.

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

import json
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio

from trio_relay.errors import StoreError
from trio_relay.wire import DeliveryRecord
from trio_relay.wire.vocabulary import OPEN_STATES, TERMINAL_STATES

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 2  # 2: the deliveries_ended index (for retention); 1 is upgraded in place

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY,
    agent TEXT NOT NULL,
    sender TEXT NOT NULL,
    body TEXT NOT NULL,
    thread TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deadline_at REAL NOT NULL,
    last_error TEXT,
    verification TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_open ON deliveries (agent, seq)
    WHERE state IN ('queued', 'sent', 'injected');
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (seq) WHERE state = 'dead_letter';
CREATE INDEX IF NOT EXISTS deliveries_agent ON deliveries (agent, seq);
CREATE INDEX IF NOT EXISTS deliveries_ended ON deliveries (updated_at)
    WHERE state IN ('verified', 'unverified', 'failed', 'dropped', 'dead_letter');
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    running INTEGER NOT NULL,
    mode TEXT NOT NULL DEFAULT 'auto_inject',
    updated_at REAL NOT NULL
);
"""

# The partial indexes' exact conditions: SQLite uses a partial index only for a query whose
# WHERE clause contains its condition as written, so every query on open deliveries repeats
# it (and names the index, so a plan through the whole history is an error, not a slowdown).
_OPEN = "state IN ('queued', 'sent', 'injected')"
_OPEN_INDEX = "INDEXED BY deliveries_open"
_DEAD = "state = 'dead_letter'"
_ENDED = "state IN ('verified', 'unverified', 'failed', 'dropped', 'dead_letter')"
_ENDED_INDEX = "INDEXED BY deliveries_ended"
assert _ENDED == f"state IN ({', '.join(repr(s) for s in TERMINAL_STATES)})"

_COLUMNS = (
    "seq, agent, sender, body, thread, state, attempts, created_at, updated_at, deadline_at,"
    " last_error, verification, reason"
)


#: One delivery as stored: the protocol's record (states, ``terminal`` and ``describe()``).
DeliveryInfo = DeliveryRecord

#: The columns of a delivery row, in the order the queries select them.
_ROW = (
    "seq",
    "agent",
    "sender",
    "body",
    "thread",
    "state",
    "attempts",
    "created_at",
    "updated_at",
    "deadline_at",
    "last_error",
    "verification",
    "reason",
)


@dataclass(frozen=True)
class AgentRow:
    """A stored agent spec. ``spec`` holds argv, cwd, env, restart and timing (JSON)."""

    name: str
    spec: dict[str, Any]
    running: bool
    mode: str


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
                        op.on_commit(op.result)
                    continue
                if _is_store_error(error):
                    op.error = self._failed(op.what, error)
                else:  # a fault in the write's own code: its caller gets it as it is
                    op.error = error
                    log.error("store: %s failed", op.what, exc_info=error)
                if op.on_abort is not None:
                    op.on_abort(op.error)
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
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key = 'tag'").fetchone()
        if row is None:
            tag = secrets.token_hex(3)
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO meta VALUES ('schema', ?), ('tag', ?)", (str(SCHEMA_VERSION), tag)
                )
        else:
            tag = row[0]
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if version is None or not 1 <= int(version[0]) <= SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version and version[0]}; this broker reads"
                    f" 1..{SCHEMA_VERSION} (is it a newer broker's store?)"
                )
            if int(version[0]) < SCHEMA_VERSION:  # the schema above added what it lacked
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),)
                )
    except BaseException:
        conn.close()
        raise
    return conn, tag


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


# ---------------------------------------------------------------- SQL (run on the store's thread)


def delivery_id(tag: str, seq: int) -> str:
    return f"{tag}-{seq}"


def parse_delivery_id(tag: str, value: str) -> int | None:
    """The seq of a delivery id of this store, or None if it is not one."""
    prefix, _, seq = value.rpartition("-")
    if prefix != tag or not seq.isdigit():
        return None
    return int(seq)


def row_info(tag: str, row: Sequence[Any]) -> DeliveryInfo:
    return DeliveryRecord(delivery_id=delivery_id(tag, row[0]), **dict(zip(_ROW, row, strict=True)))


def insert_delivery(
    conn: sqlite3.Connection,
    agent: str,
    sender: str,
    body: str,
    thread: str | None,
    now: float,
    deadline_at: float,
    evict: Iterable[int] = (),
    evict_reason: str = "",
) -> tuple[int, list[int]]:
    """A new queued delivery, and the eviction of ``evict`` (queued ones) to ``dropped``.
    Returns its seq and the seqs actually dropped."""
    cur = conn.execute(
        "INSERT INTO deliveries (agent, sender, body, thread, state, created_at, updated_at,"
        " deadline_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
        (agent, sender, body, thread, now, now, deadline_at),
    )
    dropped = [
        seq
        for seq in evict
        if transition(conn, seq, ("queued",), "dropped", now, reason=evict_reason)
    ]
    return cur.lastrowid, dropped  # type: ignore[return-value]


_TRANSITION_FIELDS = frozenset({"last_error", "verification", "reason", "deadline_at", "attempts"})


def transition(
    conn: sqlite3.Connection,
    seq: int,
    from_states: Sequence[str],
    to_state: str,
    now: float,
    *,
    add_attempt: bool = False,
    **fields: Any,
) -> bool:
    """Move one delivery from one of ``from_states`` to ``to_state``, setting ``fields``.
    Returns False (and changes nothing) if it was in none of them."""
    assert set(fields) <= _TRANSITION_FIELDS, fields
    sets = ["state = ?", "updated_at = ?", *(f"{name} = ?" for name in fields)]
    if add_attempt:
        sets.append("attempts = attempts + 1")
    marks = ", ".join("?" * len(from_states))
    cur = conn.execute(
        f"UPDATE deliveries SET {', '.join(sets)} WHERE seq = ? AND state IN ({marks})",
        (to_state, now, *fields.values(), seq, *from_states),
    )
    return cur.rowcount == 1


def redeliver(
    conn: sqlite3.Connection,
    seq: int,
    now: float,
    deadline_at: float,
    evict: Iterable[int] = (),
    evict_reason: str = "",
) -> tuple[bool, list[int]]:
    """A dead letter or failed delivery queued again with a fresh retry budget, and the
    eviction of ``evict``. Returns whether it was requeued and the seqs dropped."""
    ok = transition(
        conn,
        seq,
        ("dead_letter", "failed"),
        "queued",
        now,
        attempts=0,
        deadline_at=deadline_at,
        verification=None,
        reason=None,
    )
    if not ok:
        return False, []
    dropped = [
        s for s in evict if transition(conn, s, ("queued",), "dropped", now, reason=evict_reason)
    ]
    return ok, dropped


def requeue_agent(conn: sqlite3.Connection, agent: str, now: float) -> list[int]:
    """Every delivery of ``agent`` handed to its worker (sent or injected) back to queued.
    Returns their seqs."""
    rows = conn.execute(
        f"UPDATE deliveries {_OPEN_INDEX} SET state = 'queued', updated_at = ?"
        f" WHERE agent = ? AND state IN ('sent', 'injected') AND {_OPEN} RETURNING seq",
        (now, agent),
    ).fetchall()
    return sorted(r[0] for r in rows)


def fail_open(
    conn: sqlite3.Connection, agent: str, reason: str, now: float, *, stop_agent: bool
) -> list[int]:
    """Every open delivery of ``agent`` to ``failed`` with ``reason``; with ``stop_agent``,
    the agent is no longer one to respawn. Returns their seqs."""
    rows = conn.execute(
        f"UPDATE deliveries {_OPEN_INDEX} SET state = 'failed', reason = ?, updated_at = ?"
        f" WHERE agent = ? AND {_OPEN} RETURNING seq",
        (reason, now, agent),
    ).fetchall()
    if stop_agent:
        set_agent_running(conn, agent, False)
    return sorted(r[0] for r in rows)


def reset_in_flight(conn: sqlite3.Connection, now: float) -> int:
    """At start: whatever was handed to a worker of the previous run is queued again."""
    cur = conn.execute(
        f"UPDATE deliveries {_OPEN_INDEX} SET state = 'queued', updated_at = ?"
        f" WHERE state IN ('sent', 'injected') AND {_OPEN}",
        (now,),
    )
    return cur.rowcount


def load_open(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """Every open delivery, in order."""
    return conn.execute(
        f"SELECT {_COLUMNS} FROM deliveries {_OPEN_INDEX} WHERE {_OPEN} ORDER BY seq"
    ).fetchall()


def get_delivery(conn: sqlite3.Connection, seq: int) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = conn.execute(
        f"SELECT {_COLUMNS} FROM deliveries WHERE seq = ?", (seq,)
    ).fetchone()
    return row


def list_deliveries(
    conn: sqlite3.Connection, agent: str | None, states: Sequence[str] | None, limit: int
) -> list[tuple[Any, ...]]:
    """The newest ``limit`` deliveries (optionally of one agent, in some states), oldest first.

    Open states and dead letters are found through their partial indexes, one agent's
    deliveries through ``deliveries_agent``."""
    sql, args = _list_query(agent, states)
    rows = conn.execute(sql, (*args, limit)).fetchall()
    rows.reverse()
    return rows


def _list_query(agent: str | None, states: Sequence[str] | None) -> tuple[str, list[Any]]:
    where, args, index = [], [], ""
    if agent is not None:
        where.append("agent = ?")
        args.append(agent)
    if states:
        # Inlined as literals (only the known ones: an unknown state matches nothing) so
        # that the planner can prove a partial index's condition.
        known = [s for s in dict.fromkeys(states) if s in OPEN_STATES or s in TERMINAL_STATES]
        if not known:
            where.append("0")
        elif known == ["dead_letter"]:
            where.append(_DEAD)
            index = "INDEXED BY deliveries_dead"
        else:
            where.append(f"state IN ({', '.join(repr(s) for s in known)})")
            if set(known) <= set(OPEN_STATES):
                where.append(_OPEN)
                index = _OPEN_INDEX
            elif agent is not None:
                index = "INDEXED BY deliveries_agent"
    elif agent is not None:
        index = "INDEXED BY deliveries_agent"
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {_COLUMNS} FROM deliveries {index} {clause} ORDER BY seq DESC LIMIT ?", args


def late_report(
    conn: sqlite3.Connection, seq: int, agent: str, state: str, now: float, **fields: Any
) -> bool:
    """A dead letter of ``agent`` that its worker reports verified or unverified after all
    (a late report) takes that state. Returns whether it did."""
    assert state in ("verified", "unverified") and set(fields) <= _TRANSITION_FIELDS, fields
    sets = ", ".join(f"{name} = ?" for name in ("state", "updated_at", *fields))
    cur = conn.execute(
        f"UPDATE deliveries SET {sets} WHERE seq = ? AND agent = ? AND {_DEAD}",
        (state, now, *fields.values(), seq, agent),
    )
    return cur.rowcount == 1


def prune_deliveries(conn: sqlite3.Connection, before: float, limit: int) -> int:
    """Delete up to ``limit`` ended deliveries (verified, unverified, failed, dropped, dead
    letters) last changed before ``before``. Returns how many."""
    cur = conn.execute(
        f"DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries {_ENDED_INDEX}"
        f" WHERE {_ENDED} AND updated_at < ? LIMIT ?)",
        (before, limit),
    )
    return cur.rowcount


def prune_agents(conn: sqlite3.Connection, before: float) -> int:
    """Delete the agents that are not to be respawned, last changed before ``before``, with
    no open delivery. Returns how many."""
    cur = conn.execute(
        f"DELETE FROM agents WHERE running = 0 AND updated_at < ? AND NOT EXISTS"
        f" (SELECT 1 FROM deliveries {_OPEN_INDEX} WHERE deliveries.agent = agents.name"
        f" AND {_OPEN})",
        (before,),
    )
    return cur.rowcount


def put_agent(conn: sqlite3.Connection, name: str, spec: dict[str, Any], now: float) -> str:
    """Record ``name`` as an agent to run (``running``); keeps its mode. Returns the mode."""
    row = conn.execute(
        "INSERT INTO agents (name, spec, running, updated_at) VALUES (?, ?, 1, ?)"
        " ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, running = 1,"
        " updated_at = excluded.updated_at RETURNING mode",
        (name, json.dumps(spec), now),
    ).fetchone()
    return str(row[0])


def set_agent_running(conn: sqlite3.Connection, name: str, running: bool) -> None:
    conn.execute(
        "UPDATE agents SET running = ?, updated_at = ? WHERE name = ?",
        (int(running), time.time(), name),
    )


def set_agent_mode(conn: sqlite3.Connection, name: str, mode: str) -> bool:
    cur = conn.execute(
        "UPDATE agents SET mode = ?, updated_at = ? WHERE name = ?", (mode, time.time(), name)
    )
    return cur.rowcount == 1


def load_agents(conn: sqlite3.Connection) -> list[AgentRow]:
    rows = conn.execute("SELECT name, spec, running, mode FROM agents ORDER BY rowid").fetchall()
    return [AgentRow(r[0], json.loads(r[1]), bool(r[2]), r[3]) for r in rows]
