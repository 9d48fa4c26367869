"""The store's SQL, run on the store's thread: the schema and its upgrade, every statement,
and the decoding of rows. No Trio, no I/O of its own beyond the connection it is given.

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
- ``origins``: a delivery taken from a cluster (see :mod:`trio_relay.cluster`), by its
  cluster id, so taking it again (after a crash before the cluster heard of it) finds the
  same delivery instead of making a second one.
- ``meta``: the schema version and the store's tag.

Errors: the statements raise :class:`sqlite3.Error` as SQLite does; the engine turns it into
:class:`~trio_relay.errors.StoreError` for the caller of the write.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from trio_relay.wire import DeliveryRecord
from trio_relay.wire.vocabulary import DELIVERY_TRANSITIONS, OPEN_STATES, TERMINAL_STATES

SCHEMA_VERSION = 3  # 2: the deliveries_ended index (for retention); 3: origins. Upgraded in place

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
CREATE TABLE IF NOT EXISTS origins (origin TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""

# The partial indexes' exact conditions: SQLite uses a partial index only for a query whose
# WHERE clause contains its condition as written, so every query on open deliveries repeats
# it (and names the index, so a plan through the whole history is an error, not a slowdown).
_OPEN = "state IN ('queued', 'sent', 'injected')"
_OPEN_INDEX = "INDEXED BY deliveries_open"
_DEAD = "state = 'dead_letter'"
_ENDED = "state IN ('verified', 'unverified', 'failed', 'dropped', 'dead_letter')"
_ENDED_INDEX = "INDEXED BY deliveries_ended"


def _state_in(states: Iterable[str]) -> str:
    return f"state IN ({', '.join(repr(s) for s in states)})"


assert _OPEN == _state_in(OPEN_STATES) and _ENDED == _state_in(TERMINAL_STATES)


#: The columns of a delivery row, in the order the queries select them.
ROW = (
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
_COLUMNS = ", ".join(ROW)

#: One delivery as stored: the protocol's record (states, ``terminal`` and ``describe()``).
DeliveryInfo = DeliveryRecord


@dataclass(frozen=True)
class AgentRow:
    """A stored agent spec. ``spec`` holds argv, cwd, env, restart and timing (JSON)."""

    name: str
    spec: dict[str, Any]
    running: bool
    mode: str


def prepare(conn: sqlite3.Connection) -> str:
    """Create what the schema lacks, check and upgrade its version, and return the store's
    tag (made on first use). Raises sqlite3.DatabaseError for a newer broker's store."""
    conn.executescript(_SCHEMA)
    row = conn.execute("SELECT value FROM meta WHERE key = 'tag'").fetchone()
    if row is None:
        tag = secrets.token_hex(3)
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO meta VALUES ('schema', ?), ('tag', ?)", (str(SCHEMA_VERSION), tag)
            )
        return tag
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if version is None or not 1 <= int(version[0]) <= SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {version and version[0]}; this broker reads"
            f" 1..{SCHEMA_VERSION} (is it a newer broker's store?)"
        )
    if int(version[0]) < SCHEMA_VERSION:  # the schema above added what it lacked
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
    return str(row[0])


# ---------------------------------------------------------------- deliveries


def delivery_id(tag: str, seq: int) -> str:
    return f"{tag}-{seq}"


def parse_delivery_id(tag: str, value: str) -> int | None:
    """The seq of a delivery id of this store, or None if it is not one."""
    prefix, _, seq = value.rpartition("-")
    if prefix != tag or not seq.isdigit():
        return None
    return int(seq)


def row_info(tag: str, row: Sequence[Any]) -> DeliveryInfo:
    return DeliveryRecord(delivery_id=delivery_id(tag, row[0]), **dict(zip(ROW, row, strict=True)))


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
    origin: str | None = None,
) -> tuple[int, list[int]]:
    """A new queued delivery, and the eviction of ``evict`` (queued ones) to ``dropped``.
    Returns its seq and the seqs actually dropped. With ``origin`` (a cluster delivery id)
    already taken, nothing is written: its seq is returned, with dropped ``[-1]``."""
    if origin is not None:
        row = conn.execute("SELECT seq FROM origins WHERE origin = ?", (origin,)).fetchone()
        if row is not None:
            return int(row[0]), [-1]
    cur = conn.execute(
        "INSERT INTO deliveries (agent, sender, body, thread, state, created_at, updated_at,"
        " deadline_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
        (agent, sender, body, thread, now, now, deadline_at),
    )
    if origin is not None:
        conn.execute("INSERT INTO origins VALUES (?, ?)", (origin, cur.lastrowid))
    dropped = [
        seq
        for seq in evict
        if transition(conn, seq, ("queued",), "dropped", now, reason=evict_reason)
    ]
    return cur.lastrowid, dropped  # type: ignore[return-value]


_TRANSITION_FIELDS = frozenset({"last_error", "verification", "reason", "deadline_at", "attempts"})

#: Every (from, to) pair :data:`~trio_relay.wire.vocabulary.DELIVERY_TRANSITIONS` declares.
LEGAL = frozenset((old, new) for old, news in DELIVERY_TRANSITIONS.items() for new in news)


def check_transition(from_states: Iterable[str], to_state: str) -> None:
    """Raises ValueError unless every move from one of ``from_states`` to ``to_state`` is
    declared in :data:`~trio_relay.wire.vocabulary.DELIVERY_TRANSITIONS`."""
    for old in from_states:
        if (old, to_state) not in LEGAL:
            raise ValueError(f"a delivery cannot go from {old!r} to {to_state!r}")


# The bulk statements below move these states, checked once here.
_HANDED_OVER = ("sent", "injected")
_IN_FLIGHT = _state_in(_HANDED_OVER)
check_transition(_HANDED_OVER, "queued")  # requeue_agent, reset_in_flight
check_transition(OPEN_STATES, "failed")  # fail_open
check_transition(("dead_letter",), "verified")  # late_report
check_transition(("dead_letter",), "unverified")


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
    Returns False (and changes nothing) if it was in none of them. Raises ValueError for
    a move the state machine does not declare (see :func:`check_transition`)."""
    check_transition(from_states, to_state)
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
        f" WHERE agent = ? AND {_IN_FLIGHT} AND {_OPEN} RETURNING seq",
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
        f" WHERE {_IN_FLIGHT} AND {_OPEN}",
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
    conn: sqlite3.Connection,
    agent: str | None,
    states: Sequence[str] | None,
    limit: int,
    after: int | None = None,
) -> list[tuple[Any, ...]]:
    """The newest ``limit`` deliveries (optionally of one agent, in some states), oldest first;
    with ``after`` (a seq), the first ``limit`` of those after it.

    Open states and dead letters are found through their partial indexes, one agent's
    deliveries through ``deliveries_agent``."""
    sql, args = _list_query(agent, states, after)
    rows = conn.execute(sql, (*args, limit)).fetchall()
    if after is None:
        rows.reverse()
    return rows


def _list_query(
    agent: str | None, states: Sequence[str] | None, after: int | None
) -> tuple[str, list[Any]]:
    where, args, index = [], [], ""
    if after is not None:
        where.append("seq > ?")
        args.append(after)
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
    order = "DESC" if after is None else "ASC"
    return f"SELECT {_COLUMNS} FROM deliveries {index} {clause} ORDER BY seq {order} LIMIT ?", args


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
    conn.execute(
        "DELETE FROM origins WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = origins.seq)"
    )
    return cur.rowcount


def origin_of(conn: sqlite3.Connection, origin: str) -> int | None:
    """The seq of the delivery taken from cluster delivery ``origin``, or None."""
    row = conn.execute("SELECT seq FROM origins WHERE origin = ?", (origin,)).fetchone()
    return None if row is None else int(row[0])


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
