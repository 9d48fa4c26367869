"""The cluster's SQL, run on a psycopg connection in a worker thread: the schema, the
registry of brokers and agents, and the claim/ack protocol of cross-broker deliveries.
No Trio here: each function takes a connection and runs one transaction.

Tables (prefix ``trio_relay_``):

- ``brokers``: one row per broker name, with ``tag`` (its state directory's store tag: the
  same broker coming back), ``lease_until`` (renewed by its heartbeat; past it, the broker
  is *unreachable*), its control URL and the credential that URL takes from other brokers.
- ``agents``: which broker runs each agent. The name is the primary key: unique across the
  cluster. A row whose broker's lease has passed may be taken over by another broker.
- ``deliveries``: one row per accepted message. ``key`` (unique) makes a send that is
  retried after a lost connection the same send. ``claimed_by`` is NULL until the owning
  broker claims it (``FOR UPDATE SKIP LOCKED``: two claimers never take one row, nor wait
  for each other); ``local_id`` is the owner's local delivery, set once it is taken in;
  ``state`` follows the owner's reports, each conditional on ``claimed_by`` being the
  reporter, so a broker that lost a delivery to another cannot change it.

Each send commits with ``synchronous_commit`` on (PostgreSQL's default, set explicitly), and
notifies ``trio_relay_work`` with the owning broker's name; each report notifies
``trio_relay_state`` with the delivery's id.

Errors: psycopg's (``psycopg.OperationalError`` for a lost connection), as they come.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trio_relay.wire import DeliveryRecord
from trio_relay.wire.vocabulary import OPEN_STATES, TERMINAL_STATES

WORK_CHANNEL = "trio_relay_work"
STATE_CHANNEL = "trio_relay_state"
EVENTS_CHANNEL = "trio_relay_events"
ID_PREFIX = "cluster-"
#: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more.
MAX_PAYLOAD = 7999

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trio_relay_brokers (
    name text PRIMARY KEY,
    tag text NOT NULL,
    lease_until timestamptz NOT NULL,
    started_at double precision NOT NULL,
    control_url text,
    credential text,
    pid integer,
    host text
);
CREATE TABLE IF NOT EXISTS trio_relay_agents (
    name text PRIMARY KEY,
    broker text NOT NULL,
    state text NOT NULL,
    activity text NOT NULL DEFAULT 'starting',
    activity_since double precision,
    profile text,
    pid integer,
    updated_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS trio_relay_deliveries (
    id bigserial PRIMARY KEY,
    key text NOT NULL UNIQUE,
    agent text NOT NULL,
    sender text NOT NULL,
    body text NOT NULL,
    thread text,
    state text NOT NULL,
    claimed_by text,
    local_id text,
    from_broker text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    deadline_at double precision NOT NULL,
    last_error text,
    verification text,
    reason text
);
CREATE INDEX IF NOT EXISTS trio_relay_deliveries_waiting
    ON trio_relay_deliveries (agent, id) WHERE claimed_by IS NULL AND state = 'queued';
CREATE INDEX IF NOT EXISTS trio_relay_deliveries_untaken
    ON trio_relay_deliveries (claimed_by, id)
    WHERE local_id IS NULL AND state IN ('queued', 'sent', 'injected');
CREATE INDEX IF NOT EXISTS trio_relay_deliveries_open
    ON trio_relay_deliveries (agent) WHERE state IN ('queued', 'sent', 'injected');
CREATE INDEX IF NOT EXISTS trio_relay_deliveries_agent ON trio_relay_deliveries (agent, id);
"""

_OPEN = "state IN ('queued', 'sent', 'injected')"
_COLUMNS = (
    "id, agent, sender, body, thread, state, attempts, created_at, updated_at, deadline_at,"
    " last_error, verification, reason, claimed_by, local_id"
)


class NameTaken(Exception):
    """The broker name or agent name belongs to another live broker."""


@dataclass(frozen=True)
class Claimed:
    """A delivery a broker claimed for one of its agents, to take into its local engine."""

    id: int
    agent: str
    sender: str
    body: str
    thread: str | None
    local_id: str | None
    state: str


@dataclass(frozen=True)
class ClusterAgent:
    """One row of ``ps --cluster``: ``state`` is ``unreachable`` when its broker's lease
    has passed."""

    name: str
    broker: str
    state: str
    activity: str
    activity_since: float | None
    profile: str | None
    pid: int | None
    pending: int


def cluster_id(row_id: int) -> str:
    return f"{ID_PREFIX}{row_id}"


def parse_cluster_id(value: str) -> int | None:
    """The row id of a cluster delivery id, or None if it is not one."""
    prefix, digits = value[: len(ID_PREFIX)], value[len(ID_PREFIX) :]
    return int(digits) if prefix == ID_PREFIX and digits.isdigit() else None


def prepare(conn: Any) -> None:
    """Create what the schema lacks (one broker at a time: an advisory lock)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(7217001)")
        conn.execute(_SCHEMA)


# ---------------------------------------------------------------- brokers


def join(
    conn: Any,
    name: str,
    tag: str,
    lease: float,
    control_url: str | None,
    credential: str,
    pid: int,
    host: str,
) -> None:
    """Hold broker ``name`` under a lease of ``lease`` seconds. Raises NameTaken if another
    broker (another tag) holds it with a live lease."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO trio_relay_brokers AS b (name, tag, lease_until, started_at,"
            " control_url, credential, pid, host)"
            " VALUES (%s, %s, now() + make_interval(secs => %s), %s, %s, %s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET tag = EXCLUDED.tag,"
            " lease_until = EXCLUDED.lease_until, started_at = EXCLUDED.started_at,"
            " control_url = EXCLUDED.control_url, credential = EXCLUDED.credential,"
            " pid = EXCLUDED.pid, host = EXCLUDED.host"
            " WHERE b.tag = EXCLUDED.tag OR b.lease_until < now()"
            " RETURNING name",
            (name, tag, lease, time.time(), control_url, credential, pid, host),
        ).fetchone()
        if row is None:
            holder = conn.execute(
                "SELECT host, pid, lease_until FROM trio_relay_brokers WHERE name = %s", (name,)
            ).fetchone()
            raise NameTaken(
                f"broker name {name!r} is held by another live broker (host {holder[0]},"
                f" pid {holder[1]}, lease until {holder[2]:%H:%M:%S}); give another with"
                " --broker-name"
            )


def heartbeat(conn: Any, name: str, tag: str, lease: float) -> bool:
    """Renew the lease; False if the name was taken over (the lease had passed)."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE trio_relay_brokers SET lease_until = now() + make_interval(secs => %s)"
            " WHERE name = %s AND tag = %s RETURNING name",
            (lease, name, tag),
        ).fetchone()
    return row is not None


def leave(conn: Any, name: str, tag: str) -> None:
    """A broker stopping: its lease ends now (its agents were released)."""
    with conn.transaction():
        conn.execute(
            "UPDATE trio_relay_brokers SET lease_until = now() WHERE name = %s AND tag = %s",
            (name, tag),
        )


def broker_address(conn: Any, name: str) -> tuple[str | None, str | None, bool]:
    """A broker's control URL, its credential, and whether its lease is live."""
    row = conn.execute(
        "SELECT control_url, credential, lease_until >= now() FROM trio_relay_brokers"
        " WHERE name = %s",
        (name,),
    ).fetchone()
    return (None, None, False) if row is None else (row[0], row[1], bool(row[2]))


def credential_valid(conn: Any, credential: str) -> str | None:
    """The live broker whose credential this is, or None."""
    row = conn.execute(
        "SELECT name FROM trio_relay_brokers WHERE credential = %s AND lease_until >= now()",
        (credential,),
    ).fetchone()
    return None if row is None else str(row[0])


# ---------------------------------------------------------------- agents


def claim_agent(conn: Any, name: str, broker: str) -> None:
    """Agent ``name`` runs on ``broker`` from now. Raises NameTaken if another broker with
    a live lease runs it."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO trio_relay_agents AS a (name, broker, state, updated_at)"
            " VALUES (%s, %s, 'starting', %s)"
            " ON CONFLICT (name) DO UPDATE SET broker = EXCLUDED.broker,"
            " state = EXCLUDED.state, updated_at = EXCLUDED.updated_at,"
            " activity = 'starting', activity_since = NULL, pid = NULL"
            " WHERE a.broker = EXCLUDED.broker OR NOT EXISTS (SELECT 1 FROM"
            " trio_relay_brokers b WHERE b.name = a.broker AND b.lease_until >= now())"
            " RETURNING name",
            (name, broker, time.time()),
        ).fetchone()
        if row is None:
            owner = conn.execute(
                "SELECT broker FROM trio_relay_agents WHERE name = %s", (name,)
            ).fetchone()
            raise NameTaken(f"agent {name!r} runs on broker {owner[0]!r}")


def update_agent(conn: Any, name: str, broker: str, fields: dict[str, Any]) -> None:
    """Record what changed of a running agent (state, activity, pid, profile)."""
    assigns = ", ".join(f"{column} = %({column})s" for column in fields)
    with conn.transaction():
        conn.execute(
            f"UPDATE trio_relay_agents SET {assigns}, updated_at = %(now)s"
            " WHERE name = %(name)s AND broker = %(broker)s",
            {**fields, "now": time.time(), "name": name, "broker": broker},
        )


def drop_agent(conn: Any, name: str, broker: str) -> int:
    """The agent was released: no broker runs it, and each of its open deliveries still in
    the cluster's hands (unclaimed, or ``broker``'s) fails, as nobody will take them.
    Returns how many failed."""
    return _end_agent(conn, name, broker, f"agent {name!r} was released")


def fail_agent(conn: Any, name: str, broker: str) -> int:
    """Agent ``name`` will not run on ``broker`` again (it could not be respawned): its
    row goes, and each of its open deliveries, unclaimed or ``broker``'s, fails. Returns
    how many failed."""
    return _end_agent(conn, name, broker, f"agent {name!r} did not come back on broker {broker!r}")


def _end_agent(conn: Any, name: str, broker: str, reason: str) -> int:
    with conn.transaction():
        gone = conn.execute(
            "DELETE FROM trio_relay_agents WHERE name = %s AND broker = %s RETURNING name",
            (name, broker),
        ).fetchone()
        if gone is None:
            return 0
        rows = conn.execute(
            "UPDATE trio_relay_deliveries SET state = 'failed', reason = %s, updated_at = %s"
            f" WHERE agent = %s AND {_OPEN} AND (claimed_by IS NULL OR claimed_by = %s)"
            " RETURNING id",
            (reason, time.time(), name, broker),
        ).fetchall()
        for (row_id,) in rows:
            conn.execute("SELECT pg_notify(%s, %s)", (STATE_CHANNEL, str(row_id)))
    return len(rows)


def locate(conn: Any, name: str) -> tuple[str, bool] | None:
    """The broker running agent ``name`` and whether its lease is live, or None."""
    row = conn.execute(
        "SELECT a.broker, coalesce(b.lease_until >= now(), false) FROM trio_relay_agents a"
        " LEFT JOIN trio_relay_brokers b ON b.name = a.broker WHERE a.name = %s",
        (name,),
    ).fetchone()
    return None if row is None else (str(row[0]), bool(row[1]))


def list_agents(conn: Any) -> list[ClusterAgent]:
    """Every agent of the cluster, by name, with how many deliveries are open for it."""
    rows = conn.execute(
        "SELECT a.name, a.broker,"
        " CASE WHEN coalesce(b.lease_until >= now(), false) THEN a.state ELSE 'unreachable' END,"
        " a.activity, a.activity_since, a.profile, a.pid,"
        " coalesce(o.n, 0)"
        " FROM trio_relay_agents a LEFT JOIN trio_relay_brokers b ON b.name = a.broker"
        " LEFT JOIN (SELECT agent, count(*) AS n FROM trio_relay_deliveries"
        f" WHERE {_OPEN} GROUP BY agent) o ON o.agent = a.name"
        " ORDER BY a.name"
    ).fetchall()
    return [ClusterAgent(*row) for row in rows]


# ---------------------------------------------------------------- deliveries


def insert_delivery(
    conn: Any,
    key: str,
    agent: str,
    sender: str,
    body: str,
    thread: str | None,
    from_broker: str,
    deadline: float,
) -> tuple[int, str]:
    """Accept a message for ``agent``: committed (synchronously) and its owner notified.
    Returns the row id and the owning broker. A ``key`` sent before returns that row.
    Raises LookupError (no such agent in the cluster, or it exited), NameTaken (its broker is
    unreachable: nothing is accepted)."""
    now = time.time()
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = on")
        before = conn.execute(
            "SELECT id FROM trio_relay_deliveries WHERE key = %s", (key,)
        ).fetchone()
        if before is not None:  # a retry of a send that did commit: that one stands
            found = locate(conn, agent)
            return int(before[0]), found[0] if found else ""
        owner = conn.execute(
            "SELECT a.broker, coalesce(b.lease_until >= now(), false), a.state"
            " FROM trio_relay_agents a LEFT JOIN trio_relay_brokers b ON b.name = a.broker"
            " WHERE a.name = %s",
            (agent,),
        ).fetchone()
        if owner is None or owner[2] == "exited":  # as a single broker: not running
            raise LookupError(agent)
        broker, live = owner[0], bool(owner[1])
        if not live:
            raise NameTaken(f"agent {agent!r} is on broker {broker!r}, which is unreachable")
        row = conn.execute(
            "INSERT INTO trio_relay_deliveries (key, agent, sender, body, thread, state,"
            " from_broker, created_at, updated_at, deadline_at)"
            " VALUES (%s, %s, %s, %s, %s, 'queued', %s, %s, %s, %s)"
            " ON CONFLICT (key) DO NOTHING RETURNING id",
            (key, agent, sender, body, thread, from_broker, now, now, now + deadline),
        ).fetchone()
        if row is None:
            row = conn.execute(
                "SELECT id FROM trio_relay_deliveries WHERE key = %s", (key,)
            ).fetchone()
        conn.execute("SELECT pg_notify(%s, %s)", (WORK_CHANNEL, broker))
    return int(row[0]), broker


def claim(conn: Any, broker: str, limit: int = 100, *, adopt: bool = False) -> list[Claimed]:
    """Claim up to ``limit`` queued deliveries nobody claimed, for ``broker``'s agents,
    oldest first. Rows another claimer holds are skipped, not waited for.

    With ``adopt`` (at start, after a reconnect or a failed record, when an agent is
    spawned here), also: the open ones another broker claimed for agents now ``broker``'s
    (the registry gave the agent to ``broker`` once that broker's lease passed, whether or
    not it has come back since: taken over, queued again), and the open ones ``broker``
    claimed before, for its agents, but did not take in (``local_id`` NULL). Each kind has its own partial
    index, so the common claim costs what is waiting, not what is held."""
    now = time.time()
    mine = "SELECT name FROM trio_relay_agents WHERE broker = %(me)s"
    params = {"me": broker, "now": now, "limit": limit}
    returning = " RETURNING id, agent, sender, body, thread, local_id, state"
    with conn.transaction():
        rows = conn.execute(
            "UPDATE trio_relay_deliveries d SET claimed_by = %(me)s, updated_at = %(now)s"
            " WHERE d.id IN (SELECT id FROM trio_relay_deliveries x"
            f" WHERE x.claimed_by IS NULL AND x.state = 'queued' AND x.agent IN ({mine})"
            " ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)" + returning,
            params,
        ).fetchall()
        if adopt:
            rows += conn.execute(
                "UPDATE trio_relay_deliveries d SET claimed_by = %(me)s, local_id = NULL,"
                " state = 'queued', updated_at = %(now)s"
                " WHERE d.id IN (SELECT id FROM trio_relay_deliveries x"
                f" WHERE x.agent IN ({mine}) AND x.{_OPEN} AND x.claimed_by <> %(me)s"
                " ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)" + returning,
                params,
            ).fetchall()
            rows += conn.execute(
                "SELECT id, agent, sender, body, thread, local_id, state"
                f" FROM trio_relay_deliveries WHERE claimed_by = %(me)s AND local_id IS NULL"
                f" AND {_OPEN} AND agent IN ({mine}) ORDER BY id LIMIT %(limit)s",
                params,
            ).fetchall()
    seen: dict[int, Claimed] = {}
    for row in rows:
        seen.setdefault(row[0], Claimed(*row))
    return sorted(seen.values(), key=lambda c: c.id)


def taken(conn: Any, broker: str, pairs: Sequence[tuple[int, str]]) -> int:
    """Record each (row id, local delivery id) ``broker`` took into its engine; returns
    how many rows it still held."""
    with conn.transaction():
        count = 0
        for row_id, local_id in pairs:
            cur = conn.execute(
                "UPDATE trio_relay_deliveries SET local_id = %s WHERE id = %s AND claimed_by = %s",
                (local_id, row_id, broker),
            )
            count += cur.rowcount
    return count


@dataclass(frozen=True)
class Report:
    """A state change of a claimed delivery, from its owner's engine."""

    id: int
    state: str
    attempts: int | None = None
    last_error: str | None = None
    verification: str | None = None
    reason: str | None = None


def report(conn: Any, broker: str, reports: Sequence[Report]) -> list[int]:
    """Record the states ``broker`` reports (only for rows it holds) and notify each one's
    waiters. Returns the ids changed."""
    now = time.time()
    changed: list[int] = []
    with conn.transaction():
        for r in reports:
            row = conn.execute(
                "UPDATE trio_relay_deliveries SET state = %s, updated_at = %s,"
                " attempts = coalesce(%s, attempts), last_error = coalesce(%s, last_error),"
                " verification = coalesce(%s, verification), reason = coalesce(%s, reason)"
                " WHERE id = %s AND claimed_by = %s RETURNING id",
                (r.state, now, r.attempts, r.last_error, r.verification, r.reason, r.id, broker),
            ).fetchone()
            if row is not None:
                changed.append(r.id)
                conn.execute("SELECT pg_notify(%s, %s)", (STATE_CHANNEL, str(r.id)))
    return changed


def held(conn: Any, broker: str) -> list[tuple[int, str | None, str]]:
    """The open deliveries ``broker`` holds: (row id, local id, state)."""
    rows = conn.execute(
        f"SELECT id, local_id, state FROM trio_relay_deliveries WHERE claimed_by = %s AND {_OPEN}",
        (broker,),
    ).fetchall()
    return [(int(r[0]), r[1], str(r[2])) for r in rows]


def redeliver(conn: Any, row_id: int) -> tuple[str, str]:
    """Queue a dead letter or failed delivery again; its owner claims it anew and takes it
    in again (finding its local copy by the cluster id, and queueing that again), so until
    then it has no local id. Returns its agent and the owner to notify. Raises LookupError (no such row: its id;
    no live broker runs its agent: the agent's name), ValueError (not in such a state)."""
    with conn.transaction():
        row = conn.execute(
            "SELECT agent, state, claimed_by FROM trio_relay_deliveries WHERE id = %s FOR UPDATE",
            (row_id,),
        ).fetchone()
        if row is None:
            raise LookupError(row_id)
        agent, state, claimed_by = row
        if state not in ("dead_letter", "failed"):
            raise ValueError(state)
        conn.execute(
            "UPDATE trio_relay_deliveries SET state = 'queued', claimed_by = NULL,"
            " local_id = NULL, updated_at = %s WHERE id = %s",
            (time.time(), row_id),
        )
        owner = locate(conn, agent)
        if owner is None or not owner[1]:
            raise LookupError(agent)  # as on one broker: nobody would take it
        target = owner[0]
        conn.execute("SELECT pg_notify(%s, %s)", (WORK_CHANNEL, target))
    return str(agent), target


def get_delivery(conn: Any, row_id: int) -> DeliveryRecord | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM trio_relay_deliveries WHERE id = %s", (row_id,)
    ).fetchone()
    return None if row is None else record(row)


def list_deliveries(
    conn: Any,
    agent: str | None,
    states: Sequence[str] | None,
    limit: int,
    after: int | None,
) -> list[DeliveryRecord]:
    """The newest ``limit`` (or the first ``limit`` after row ``after``), oldest first."""
    where, params = ["TRUE"], []
    if agent is not None:
        where.append("agent = %s")
        params.append(agent)
    if states:
        where.append("state = ANY(%s)")
        params.append(list(states))
    if after is not None:
        where.append("id > %s")
        params.append(after)
        order = "ORDER BY id LIMIT %s"
    else:
        order = "ORDER BY id DESC LIMIT %s"
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM trio_relay_deliveries WHERE {' AND '.join(where)} {order}",
        (*params, limit),
    ).fetchall()
    return sorted((record(r) for r in rows), key=lambda d: d.seq)


def pending_count(conn: Any) -> int:
    return int(
        conn.execute(f"SELECT count(*) FROM trio_relay_deliveries WHERE {_OPEN}").fetchone()[0]
    )


def record(row: Sequence[Any]) -> DeliveryRecord:
    """A row as the control channel reports deliveries; ``reason`` names the broker and
    local id while it is held."""
    (row_id, agent, sender, body, thread, state, attempts, created, updated, deadline) = row[:10]
    last_error, verification, reason, claimed_by, local_id = row[10:]
    return DeliveryRecord(
        delivery_id=cluster_id(row_id),
        agent=agent,
        state=state,
        sender=sender,
        body=body,
        thread=thread,
        attempts=attempts,
        seq=row_id,
        created_at=created,
        updated_at=updated,
        deadline_at=deadline,
        last_error=last_error,
        verification=verification,
        reason=reason
        or (f"held by broker {claimed_by} as {local_id}" if claimed_by and local_id else None),
    )


TERMINAL = frozenset(TERMINAL_STATES)
OPEN = frozenset(OPEN_STATES)
