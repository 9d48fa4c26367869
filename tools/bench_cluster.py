#!/usr/bin/env python3
"""Benchmark a cluster of brokers on PostgreSQL: delivery latency on one broker and across
two, acceptance rate, and commit latency against the cluster's backlog, each beside a
baseline measured in the same run.

    .venv/bin/python tools/bench_cluster.py               # --sends 200
    .venv/bin/python tools/bench_cluster.py --sends 500
    .venv/bin/python tools/bench_cluster.py --quick       # a smoke run, under a minute

Set up here, as a user would: a real PostgreSQL server (``tests/support/postgres.py``,
fsync on, on this machine's disk), brokers A and B joined to it
(``python -m trio_relay up --detach --cluster DSN --broker-name A|B``) and a third broker C
without ``--cluster`` (the plain broker), each in its own temporary state directory, all
driven from this process by the Python client (``open_client`` over each broker's Unix
socket). Everything is stopped at the end (``trio-relay down``, then the server), even on
an error. The agents are native reference workers (``python -m trio_relay.worker.reference``
spawned with ``native=True``): each delivery is reported injected and then verified with
``verification="echo"`` at once, so what is measured is the relay, not a terminal.

- delivery latency, ``send`` until ``wait`` returns it terminal (verified), one at a time,
  ``--sends`` each, the four cases interleaved: same broker (client on B, agent ``wb`` on
  B), cross-broker (client on A, agent ``wb`` on B), the other way (client on B, agent
  ``wa`` on A), and the plain broker (client on C, agent ``wc`` on C); the commit part (the
  ``send`` call) is shown too. Then where the time goes (from the owner's delivery events)
  and the statements PostgreSQL runs per cross-broker delivery (from its log, with
  ``log_statement = all`` for 20 more deliveries only);
- sends per second (the ``send`` call's answer: committed in PostgreSQL), 1 sender and 64
  senders on 64 connections to A, to B's agent ``wb``, which delivers them meanwhile; then
  how long until the last is terminal, and the states they ended in. Baselines: the plain
  broker C (its agent ``wc``), and bare psycopg running the cluster's own insert
  transaction (``sql.insert_delivery``) on 1, 4 (a broker's pool) and 64 connections of a
  scratch database nobody listens to;
- commit latency of ``send`` from A with 10 and with 10,000 deliveries pending in the
  cluster, p50/p99 and the ratio. The backlog is made of real sends, held: agents
  ``hold-*`` on B in hold mode, each with at most 240 pending, since one agent holds at
  most 256 (the delivery cap: B takes every claimed delivery into its own store, where
  older ones beyond the cap are dropped). The probes go to the same held agents, as in
  tools/bench_delivery.py. The same on the plain broker C. Autovacuum is off for
  trio_relay_deliveries meanwhile, so that the large backlog is measured twice, as the
  fill left the table (its dead row versions) and after ``VACUUM (ANALYZE)``, rather than
  whenever autovacuum happens to come. At each backlog also: sequential deliveries to the
  broker's running agent (``wb`` from A; ``wc`` on C) and the CPU each broker process and
  PostgreSQL spent on each; in the cluster, the time of B's claim statements
  (``sql.claim`` under EXPLAIN ANALYZE, nothing to claim; B runs them at every
  notification of work) and ``agents --cluster`` (``ps --cluster``) on A.

Finally the warnings and errors in each broker's log are shown. The machine's load average
is printed at the start and the end: on a shared machine, read the figures with it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import trio
from measure import ROOT, git_head, pct, ratio, timed

sys.path.insert(0, str(ROOT / "tests" / "support"))
from postgres import PostgresServer, postgres_missing_reason

from trio_relay.client import RelayClient, open_client
from trio_relay.cluster import sql
from trio_relay.state import StateDir
from trio_relay.wire import DeliveryQueuedEvent, DeliveryVerifiedEvent

WORKER = [sys.executable, "-m", "trio_relay.worker.reference"]
OPEN = ("queued", "sent", "injected")
PER_HELD_AGENT = 240  # below the delivery cap (256) of each held agent, probes included
HELD_PREFIX = "hold-"


@dataclass(frozen=True)
class Sizes:
    sends: int  # per latency case, and commit probes per backlog
    warmup: int
    rate_one: int  # sends by the single sender
    rate_each: int  # sends by each of the 64 senders
    backlog: int  # the large backlog

    @classmethod
    def of(cls, sends: int | None, quick: bool) -> Sizes:
        if quick:
            return cls(sends or 20, 5, 100, 5, 1000)
        return cls(sends or 200, 20, 1000, 60, 10_000)


def labelled(state: str, reason: str | None) -> str:
    """A delivery's state, and for a drop whether the agent's cap made it."""
    return "dropped (cap)" if state == "dropped" and "(the cap)" in (reason or "") else state


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f} ms"


def p50_p99(samples: list[float]) -> str:
    return f"p50 {ms(pct(samples, 0.5))}  p99 {ms(pct(samples, 0.99))}"


# ---------------------------------------------------------------- processes


def relay(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_relay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@dataclass
class Brokers:
    root: Path
    dirs: dict[str, Path] = field(default_factory=dict)

    def start(self, name: str, dsn: str | None) -> Path:
        state = self.root / name
        self.dirs[name] = state
        cluster = ["--cluster", dsn, "--broker-name", name] if dsn else []
        up = relay("up", "--detach", "--state-dir", str(state), *cluster)
        if up.returncode != 0:
            raise RuntimeError(f"broker {name} did not start: {up.stderr.strip()}")
        return state

    def stop_all(self) -> None:
        for name, state in self.dirs.items():
            connection = StateDir(state).read_connection()
            if connection is None:
                continue
            try:
                down = relay("down", "--state-dir", str(state), "--timeout", "30", timeout=60)
                stopped = down.returncode == 0
            except subprocess.TimeoutExpired:
                stopped = False
            if not stopped:
                print(f"broker {name} did not stop by `down`: killing {connection.pid}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(connection.pid, signal.SIGKILL)

    def log_problems(self) -> dict[str, list[str]]:
        """Each broker's WARNING, ERROR and CRITICAL lines, and tracebacks."""
        found = {}
        for name, state in self.dirs.items():
            try:
                lines = (state / "broker.log").read_text(errors="replace").splitlines()
            except FileNotFoundError:
                lines = []
            found[name] = [
                line
                for line in lines
                if line.split(" ", 3)[2:3] in (["WARNING"], ["ERROR"], ["CRITICAL"])
                or line.startswith("Traceback")
            ]
        return found


@contextlib.contextmanager
def cluster_setup(root: Path, brokers: Brokers) -> Iterator[PostgresServer]:
    """The server and ``brokers`` A, B (in its cluster) and C (plain), all stopped after."""
    reason = postgres_missing_reason()
    if reason is not None:
        raise SystemExit(f"cannot start PostgreSQL here: {reason}")
    server = PostgresServer(base_dir=root)
    try:
        server.start()
        brokers.start("A", server.dsn)
        brokers.start("B", server.dsn)
        brokers.start("C", None)
        yield server
    finally:
        try:
            brokers.stop_all()
        finally:
            server.close()


# ---------------------------------------------------------------- PostgreSQL, from here


class Pg:
    """The bench's own connection to the cluster's database (no broker code)."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.lock = threading.Lock()

    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.conn.execute(query, params).fetchall()

    def execute(self, statement: str) -> None:
        with self.lock:
            self.conn.execute(statement)

    async def arows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return await trio.to_thread.run_sync(self.rows, query, params)

    def version(self) -> str:
        return str(self.rows("SHOW server_version")[0][0])

    async def held_backlog(self) -> tuple[int, int, int]:
        """(open, open and not yet taken in by B, dropped) for the held agents."""
        (row,) = await self.arows(
            "SELECT count(*) FILTER (WHERE state IN ('queued', 'sent', 'injected')),"
            " count(*) FILTER (WHERE state IN ('queued', 'sent', 'injected')"
            "   AND local_id IS NULL),"
            " count(*) FILTER (WHERE state = 'dropped')"
            " FROM trio_relay_deliveries WHERE agent LIKE %s",
            (HELD_PREFIX + "%",),
        )
        return int(row[0]), int(row[1]), int(row[2])

    async def dead_rows(self) -> int:
        """Dead row versions in trio_relay_deliveries (PostgreSQL's statistics: they lag a
        little)."""
        (row,) = await self.arows(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'trio_relay_deliveries'"
        )
        return int(row[0])

    async def log_statements(self, on: bool) -> None:
        """Have the server log every statement (``log_statement = all``), or stop."""
        change = "SET log_statement = 'all'" if on else "RESET log_statement"
        await trio.to_thread.run_sync(self.execute, f"ALTER SYSTEM {change}")
        await self.arows("SELECT pg_reload_conf()")
        await trio.sleep(0.3)  # every backend takes the new setting at its next command

    async def states_between(self, agent: str, first: int, last: int) -> Counter[str]:
        found = await self.arows(
            "SELECT state, reason, count(*) FROM trio_relay_deliveries"
            " WHERE agent = %s AND id BETWEEN %s AND %s GROUP BY state, reason",
            (agent, first, last),
        )
        states: Counter[str] = Counter()
        for state, reason, n in found:
            states[labelled(state, reason)] += int(n)
        return states


class _NoRows:
    def fetchall(self) -> list[Any]:
        return []

    def fetchone(self) -> None:
        return None


class Explaining:
    """A stand-in connection for a function of trio_relay.cluster.sql: each statement
    runs under EXPLAIN ANALYZE (its plan's time recorded, no rows returned) and each
    transaction is rolled back."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.times: list[float] = []

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction() as tx:
            yield
            raise psycopg.Rollback(tx)

    def execute(self, query: str, params: Any = None) -> _NoRows:
        (plan,) = self.conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, params).fetchone()
        self.times.append((plan[0]["Planning Time"] + plan[0]["Execution Time"]) / 1e3)
        return _NoRows()


def claim_statements_time(pg: Pg, broker: str, repeat: int = 20) -> float:
    """The median time PostgreSQL takes for ``sql.claim``'s statements (all of them)."""
    totals = []
    with pg.lock:
        for _ in range(repeat):
            explaining = Explaining(pg.conn)
            sql.claim(explaining, broker)
            totals.append(sum(explaining.times))
    return statistics.median(totals)


# ---------------------------------------------------------------- bare psycopg baseline


def bare_database(server: PostgresServer) -> str:
    """A scratch database with the cluster's schema, one live broker and one agent: the
    cluster's insert transaction runs there with nobody listening."""
    dsn = server.create_database("bench_bare")
    with psycopg.connect(dsn, autocommit=True) as conn:
        sql.prepare(conn)
        sql.join(conn, "bare", "tag", 3600, None, "x", os.getpid(), "here")
        sql.claim_agent(conn, "w", "bare")
    return dsn


def bare_inserts(dsn: str, connections: int, total: int) -> tuple[float, list[float]]:
    """``total`` inserts on ``connections`` threads with a connection each: (sends/s,
    each one's latency)."""
    per = max(1, total // connections)
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(connections)]
    latencies: list[list[float]] = [[] for _ in conns]
    start = threading.Barrier(connections + 1)

    def run(i: int) -> None:
        conn, out = conns[i], latencies[i]
        start.wait()
        for n in range(per):
            t = time.perf_counter()
            sql.insert_delivery(conn, uuid.uuid4().hex, "w", "bench", f"m{n}", None, "bare", 60)
            out.append(time.perf_counter() - t)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    start.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    for conn in conns:
        conn.close()
    return per * connections / elapsed, [x for out in latencies for x in out]


# ---------------------------------------------------------------- through the brokers


@dataclass
class Case:
    label: str
    client: RelayClient
    agent: str
    commit: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    verifications: Counter[str] = field(default_factory=Counter)


async def deliver_once(case: Case, body: str, record: bool) -> None:
    t0 = time.perf_counter()
    receipt = await case.client.send(case.agent, body, sender="bench")
    t1 = time.perf_counter()
    done = await case.client.wait(receipt.delivery_id, timeout=30)
    t2 = time.perf_counter()
    if done.state != "verified":
        raise RuntimeError(f"{case.label}: {receipt.delivery_id} ended {done.state}: {done}")
    if record:
        case.commit.append(t1 - t0)
        case.total.append(t2 - t0)
        case.verifications[done.verification or "-"] += 1


async def latency_cases(cases: list[Case], sizes: Sizes) -> None:
    for i in range(sizes.warmup + sizes.sends):
        for case in cases:
            await deliver_once(case, f"latency {case.label} {i}", i >= sizes.warmup)


STAGES = (
    "send (commit)",
    "to the owner's store",
    "in the owner (to verified)",
    "back to the waiter",
)


async def breakdown(
    sender: RelayClient, owner: RelayClient, agent: str, n: int
) -> dict[str, list[float]]:
    """Where the time of ``n`` sequential deliveries goes, from the owner's events (its
    wall clock, this machine's): the ``send`` call; from its answer to the owner's
    ``delivery_queued`` (committed in its own store: for a cluster send, the NOTIFY, the
    claim and the take-in); from there to ``delivery_verified``; from there until the
    sender's ``wait`` returns (for a cluster send: the report to PostgreSQL, its NOTIFY and
    the waiter's read). A plain broker queues before ``send`` answers: its second stage is
    negative, the time from its queued event to the answer."""
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    kinds = ["delivery_queued", "delivery_verified"]
    async with owner.subscribe(agent=agent, kinds=kinds) as events:
        for i in range(n):
            t0 = time.time()
            receipt = await sender.send(agent, f"breakdown {i}", sender="bench")
            t1 = time.time()
            await sender.wait(receipt.delivery_id, timeout=30)
            t3 = time.time()
            queued = verified = None
            with trio.fail_after(10):
                async for event in events:
                    if isinstance(event, DeliveryQueuedEvent):
                        queued = event.time
                    elif isinstance(event, DeliveryVerifiedEvent):
                        verified = event.time
                        break
            if queued is None or verified is None:
                raise RuntimeError(f"breakdown: missed the events of {receipt.delivery_id}")
            for stage, value in zip(
                STAGES, (t1 - t0, queued - t1, verified - queued, t3 - verified)
            ):
                stages[stage].append(value)
    return stages


#: How the statements of trio_relay/cluster/sql.py begin, and what they do.
KNOWN_STATEMENTS = (
    ("BEGIN", "BEGIN: a write transaction (its COMMIT waits for the WAL flush)"),
    ("INSERT INTO trio_relay_deliveries", "insert_delivery: INSERT"),
    ("SELECT a.broker, coalesce", "insert_delivery/locate: SELECT the agent's broker"),
    ("UPDATE trio_relay_deliveries d SET claimed_by", "claim: UPDATE ... SKIP LOCKED"),
    ("SELECT id, agent, sender, body, thread, local_id", "claim: SELECT the untaken"),
    ("UPDATE trio_relay_deliveries SET local_id", "taken: UPDATE local_id"),
    ("UPDATE trio_relay_deliveries SET state", "report: UPDATE state"),
    ("SELECT pg_notify", "pg_notify (work, state and events channels)"),
    ("SELECT id, agent, sender, body, thread, state", "get_delivery: SELECT (a waiter's read)"),
    ("UPDATE trio_relay_agents", "update_agent: UPDATE"),
    ("UPDATE trio_relay_brokers SET lease_until = now() +", "heartbeat: UPDATE the lease"),
)


async def statements_per_delivery(
    pg: Pg, server_log: Path, client: RelayClient, agent: str, n: int
) -> Counter[str]:
    """The statements the server runs for each of ``n`` sequential deliveries (send, then
    wait), from its log with ``log_statement = all`` meanwhile (heartbeats included)."""
    mark = uuid.uuid4().hex
    await pg.log_statements(True)
    try:
        await pg.arows(f"SELECT 'start-{mark}'")
        for i in range(n):
            receipt = await client.send(agent, f"counted {i}", sender="bench")
            await client.wait(receipt.delivery_id, timeout=30)
        await pg.arows(f"SELECT 'end-{mark}'")
    finally:
        await pg.log_statements(False)
    text = await trio.Path(server_log).read_text(errors="replace")
    start = text.find("\n", text.find(f"start-{mark}"))
    text = text[start : text.rfind("\n", start, text.find(f"end-{mark}", start))]
    found: Counter[str] = Counter()
    for line in text.splitlines():
        _, sep, statement = line.partition(" LOG:  ")
        if not sep or not statement.startswith(("statement: ", "execute ")):
            continue
        statement = statement.split(": ", 1)[1]
        for start_of, name in KNOWN_STATEMENTS:
            if statement.startswith(start_of):
                found[name] += 1
                break
        else:
            if statement not in ("COMMIT", "ROLLBACK") and "SET LOCAL" not in statement:
                found[statement[:60]] += 1
    return Counter({name: count / n for name, count in found.items()})


@dataclass
class Rate:
    label: str
    sends: int
    elapsed: float
    latencies: list[float]
    delivered_after: float | None = None  # until the last one was terminal
    states: Counter[str] = field(default_factory=Counter)

    @property
    def per_second(self) -> float:
        return self.sends / self.elapsed


async def send_many(
    clients: list[RelayClient], agents: list[str], total: int, what: str
) -> tuple[float, list[float], list[str]]:
    """``total`` sends, spread over the clients (one task each) and round-robin over the
    agents: (elapsed, latencies, delivery ids)."""
    latencies: list[float] = []
    ids: list[str] = []
    senders = len(clients)

    async def sender(j: int) -> None:
        client = clients[j]
        for i in range(j, total, senders):
            t = time.perf_counter()
            receipt = await client.send(agents[i % len(agents)], f"{what} {i}", sender="bench")
            latencies.append(time.perf_counter() - t)
            ids.append(receipt.delivery_id)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for j in range(senders):
            nursery.start_soon(sender, j)
    return time.perf_counter() - t0, latencies, ids


async def until(check: Any, what: str, timeout: float = 300, every: float = 0.05) -> float:
    """Poll the async ``check`` until it is true; the seconds it took."""
    t0 = time.perf_counter()
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(every)
        return time.perf_counter() - t0
    raise RuntimeError(f"{what}: not done after {timeout} s")


async def cluster_rate(label: str, clients: list[RelayClient], total: int, pg: Pg) -> Rate:
    elapsed, latencies, ids = await send_many(clients, ["wb"], total, label)
    rows = sorted(sql.parse_cluster_id(i) or 0 for i in ids)
    t_sent = time.perf_counter()

    async def drained() -> bool:
        states = await pg.states_between("wb", rows[0], rows[-1])
        return not any(states[s] for s in OPEN)

    await until(drained, f"{label}: deliveries to wb")
    rate = Rate(label, len(ids), elapsed, latencies)
    rate.delivered_after = elapsed + time.perf_counter() - t_sent
    rate.states = await pg.states_between("wb", rows[0], rows[-1])
    return rate


async def plain_rate(label: str, clients: list[RelayClient], total: int) -> Rate:
    elapsed, latencies, ids = await send_many(clients, ["wc"], total, label)
    t_sent = time.perf_counter()
    first = clients[0]

    async def drained() -> bool:
        return not await first.deliveries("wc", states=list(OPEN), limit=1)

    await until(drained, f"{label}: deliveries to wc")
    rate = Rate(label, len(ids), elapsed, latencies)
    rate.delivered_after = elapsed + time.perf_counter() - t_sent
    wanted = set(ids)
    found = await first.deliveries("wc", limit=len(ids) + 100)
    rate.states = Counter(labelled(d.state, d.reason) for d in found if d.delivery_id in wanted)
    return rate


@contextlib.asynccontextmanager
async def clients_of(state: Path, n: int) -> AsyncIterator[list[RelayClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_client(state_dir=str(state))) for _ in range(n)]


async def spawn_held(client: RelayClient, count: int) -> list[str]:
    names = [f"{HELD_PREFIX}{i}" for i in range(count)]

    async def one(name: str) -> None:
        await client.spawn(name, WORKER, native=True)
        await client.mode(name, "hold")

    for start in range(0, count, 8):
        async with trio.open_nursery() as nursery:
            for name in names[start : start + 8]:
                nursery.start_soon(one, name)
    return names


@dataclass
class Backlog:
    """What was measured with one backlog pending."""

    pending_before: int = 0
    pending_after: int = 0
    commit: list[float] = field(default_factory=list)  # the probes' send calls
    delivery: list[float] = field(default_factory=list)  # send -> verified, running agent
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per such delivery
    # cluster only:
    dead_rows: int | None = None  # dead row versions in trio_relay_deliveries meanwhile
    claim: float | None = None  # B's claim statements, EXPLAIN ANALYZE
    ps: list[float] | None = None  # agents --cluster on A


def cpu_seconds(pids: list[int]) -> float:
    """The CPU time (user + system) the live ones of ``pids`` used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_groups(brokers: dict[str, Path], postmaster: int) -> dict[str, list[int]]:
    """Each broker's process (not its agents'), and PostgreSQL's (the postmaster and every
    process under it)."""
    groups = {}
    for name, state in brokers.items():
        connection = StateDir(state).read_connection()
        groups[name] = [connection.pid] if connection else []
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    groups["PostgreSQL"] = [
        postmaster,
        *(pid for pid, ppid in parents.items() if ppid == postmaster),
    ]
    return groups


async def loaded_delivery(
    backlog: Backlog, case: Case, sizes: Sizes, processes: dict[str, list[int]]
) -> None:
    """Sequential deliveries to ``case``'s running agent with the backlog held, and the CPU
    each process group spent on each."""
    before = {name: cpu_seconds(pids) for name, pids in processes.items()}
    await latency_cases([case], sizes)
    n = sizes.warmup + sizes.sends
    backlog.cpu = {name: (cpu_seconds(pids) - before[name]) / n for name, pids in processes.items()}
    backlog.delivery = case.total


async def commit_probes(
    backlog: Backlog, client: RelayClient, agents: list[str], sizes: Sizes, pending: Any
) -> None:
    backlog.pending_before = await pending()
    await send_many([client], agents, sizes.warmup, "warm-up")
    _, backlog.commit, _ = await send_many([client], agents, sizes.sends, "probe")
    backlog.pending_after = await pending()


# ---------------------------------------------------------------- the run


@dataclass
class Results:
    cases: list[Case] = field(default_factory=list)
    rates: dict[str, Rate] = field(default_factory=dict)
    bare: dict[int, tuple[float, list[float]]] = field(default_factory=dict)
    backlogs: dict[str, Backlog] = field(default_factory=dict)
    stages: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    statements: Counter[str] = field(default_factory=Counter)  # per delivery
    held_agents: int = 0
    dropped_held: int = 0
    fill_seconds: dict[str, float] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and end


async def measure(
    dirs: dict[str, Path], pg: Pg, server: PostgresServer, bare_dsn: str, sizes: Sizes
) -> Results:
    out = Results()
    load_at_start = os.getloadavg()[0]
    server_log = server.log_file
    async with (
        open_client(state_dir=str(dirs["A"])) as a,
        open_client(state_dir=str(dirs["B"])) as b,
        open_client(state_dir=str(dirs["C"])) as c,
    ):
        await b.spawn("wb", WORKER, native=True)
        await a.spawn("wa", WORKER, native=True)
        await c.spawn("wc", WORKER, native=True)

        # (a) latency, the cases interleaved
        print("delivery latency ...", flush=True)
        out.cases = [
            Case("same broker     (client B -> agent on B)", b, "wb"),
            Case("cross-broker    (client A -> agent on B)", a, "wb"),
            Case("cross, reversed (client B -> agent on A)", b, "wa"),
            Case("plain broker    (client C -> agent on C)", c, "wc"),
        ]
        await latency_cases(out.cases, sizes)
        half = max(10, sizes.sends // 2)
        out.stages["cross-broker (client A -> agent on B)"] = await breakdown(a, b, "wb", half)
        out.statements = await statements_per_delivery(pg, server_log, a, "wb", 20)
        out.stages["plain broker (client C -> agent on C)"] = await breakdown(c, c, "wc", half)

        # (b) acceptance rate
        print("sends per second ...", flush=True)
        for connections in (1, 4, 64):
            total = sizes.rate_one if connections == 1 else sizes.rate_each * 64
            out.bare[connections] = await trio.to_thread.run_sync(
                bare_inserts, bare_dsn, connections, total
            )
        out.rates["cluster 1"] = await cluster_rate("1 sender", [a], sizes.rate_one, pg)
        out.rates["plain 1"] = await plain_rate("1 sender", [c], sizes.rate_one)
        async with clients_of(dirs["A"], 64) as many_a:
            out.rates["cluster 64"] = await cluster_rate(
                "64 senders", many_a, sizes.rate_each * 64, pg
            )
        async with clients_of(dirs["C"], 64) as many_c:
            out.rates["plain 64"] = await plain_rate("64 senders", many_c, sizes.rate_each * 64)

        # (c) commit latency against the backlog
        print("commit latency against the backlog ...", flush=True)
        big = sizes.backlog
        probes = sizes.sends + sizes.warmup
        count = math.ceil((big + 3 * probes + 10) / PER_HELD_AGENT)
        out.held_agents = count
        held_b = await spawn_held(b, count)
        held_c = await spawn_held(c, count)
        assert server.pid is not None
        processes = process_groups(dirs, server.pid)
        # Autovacuum would come at a moment of its own: here it comes when asked.
        await trio.to_thread.run_sync(
            pg.execute, "ALTER TABLE trio_relay_deliveries SET (autovacuum_enabled = false)"
        )

        async def cluster_pending() -> int:
            return (await pg.held_backlog())[0]

        async def plain_pending() -> int:
            listed = await c.deliveries(states=["queued"], limit=big + 4 * probes)
            return sum(1 for d in listed if d.agent.startswith(HELD_PREFIX))

        async def taken_in(expected: int) -> None:
            async def check() -> bool:
                open_, untaken, _dropped = await pg.held_backlog()
                return open_ >= expected and untaken == 0

            await until(check, f"B takes in {expected} held deliveries")

        async def fill(state: Path, agents: list[str], missing: int) -> float:
            async with clients_of(state, 64 if missing > 64 else 1) as fillers:
                t = time.perf_counter()
                await send_many(fillers, agents, missing, "backlog")
                return time.perf_counter() - t

        for key, level, vacuum in (
            ("10", 10, True),
            (f"{big}", big, False),
            (f"{big} vacuumed", big, True),
        ):
            missing = level - await cluster_pending()
            if missing > 0:
                t = time.perf_counter()
                await fill(dirs["A"], held_b, missing)
                await taken_in(level)
                out.fill_seconds[f"cluster {level}"] = time.perf_counter() - t
            if vacuum:
                await trio.to_thread.run_sync(pg.execute, "VACUUM (ANALYZE) trio_relay_deliveries")
            backlog = out.backlogs[f"cluster {key}"] = Backlog()
            backlog.dead_rows = await pg.dead_rows()
            backlog.claim = await trio.to_thread.run_sync(claim_statements_time, pg, "B")
            backlog.ps = await timed(20, a.cluster_agents)
            await loaded_delivery(backlog, Case("loaded", a, "wb"), sizes, processes)
            await commit_probes(backlog, a, held_b, sizes, cluster_pending)
            await taken_in(backlog.pending_after)

        for level in (10, big):
            missing = level - await plain_pending()
            out.fill_seconds[f"plain {level}"] = await fill(dirs["C"], held_c, missing)
            backlog = out.backlogs[f"plain {level}"] = Backlog()
            await loaded_delivery(backlog, Case("loaded", c, "wc"), sizes, processes)
            await commit_probes(backlog, c, held_c, sizes, plain_pending)
        out.dropped_held = (await pg.held_backlog())[2]
    out.load = (load_at_start, os.getloadavg()[0])
    return out


# ---------------------------------------------------------------- the report


def note(text: str) -> None:
    """An explanation under a table, wrapped."""
    print(textwrap.fill(text, 100, initial_indent="  ", subsequent_indent="  "))


def ratios(top: list[float], bottom: list[float]) -> str:
    """The p50 and p99 ratios, aligned with :func:`p50_p99`."""
    return (
        f"p50 {ratio(pct(top, 0.5), pct(bottom, 0.5)):>11}"
        f"  p99 {ratio(pct(top, 0.99), pct(bottom, 0.99)):>11}"
    )


def report(results: Results, sizes: Sizes, pg_version: str, problems: dict[str, list[str]]) -> None:
    print()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"python {sys.version.split()[0]}, PostgreSQL {pg_version} (fsync on, Unix socket),"
        f" {os.cpu_count()} CPUs, commit {git_head()}"
    )
    print("load average (1 min) at the start {:.2f}, at the end {:.2f}".format(*results.load))
    note(
        "agents: native reference workers (python -m trio_relay.worker.reference, spawn"
        " --native), which report each delivery injected, then verified (verification=echo)"
        " at once"
    )

    same, cross, _reverse, plain = results.cases
    print(f"\n(a) delivery latency, send -> wait returns it verified, {sizes.sends} each")
    print(f"  {'':42} {'send -> verified':>28}   {'of which the send (commit)':>28}")
    for case in results.cases:
        kinds = ", ".join(f"{k} {n}" for k, n in case.verifications.items())
        print(f"  {case.label:42} {p50_p99(case.total)}   {p50_p99(case.commit)}   [{kinds}]")
    for name, top, bottom in (
        ("cross / same", cross, same),
        ("same / plain", same, plain),
        ("cross / plain", cross, plain),
    ):
        print(
            f"  {name:42} {ratios(top.total, bottom.total)}   {ratios(top.commit, bottom.commit)}"
        )
    print()
    for label, stages in results.stages.items():
        n = len(stages[STAGES[0]])
        print(f"  where it goes, {label}, median of {n}:")
        print(
            "    "
            + ", ".join(f"{k} {statistics.median(v) * 1e3:.2f} ms" for k, v in stages.items())
        )
    note(
        "(from the owner's delivery_queued and delivery_verified events; the plain broker"
        " queues inside the send: its negative stage is that event's lead on the answer)"
    )
    print("  PostgreSQL statements per cross-broker delivery (20 more, logged by the server):")
    for statement, count in results.statements.most_common():
        print(f"    {count:6.2f}  {statement}")

    print("\n(b) sends per second (answered once committed), to one running agent")
    print(
        f"  {'':40} {'sends':>6} {'accepted/s':>11} {'send p50':>11} {'send p99':>11}"
        f" {'all terminal':>13}  end states"
    )
    for key, label in (
        ("cluster 1", "cluster, 1 sender on A -> wb on B"),
        ("cluster 64", "cluster, 64 senders on A -> wb on B"),
        ("plain 1", "plain broker, 1 sender on C -> wc"),
        ("plain 64", "plain broker, 64 senders on C -> wc"),
    ):
        rate = results.rates[key]
        states = ", ".join(f"{s} {n}" for s, n in sorted(rate.states.items()))
        after = f"{rate.delivered_after:.2f} s" if rate.delivered_after is not None else "-"
        print(
            f"  {label:40} {rate.sends:>6} {rate.per_second:>11,.0f}"
            f" {ms(pct(rate.latencies, 0.5)):>11} {ms(pct(rate.latencies, 0.99)):>11}"
            f" {after:>13}  {states}"
        )
    for connections, (per_second, latencies) in results.bare.items():
        label = f"bare psycopg insert_delivery, {connections} conn."
        print(
            f"  {label:40} {len(latencies):>6} {per_second:>11,.0f}"
            f" {ms(pct(latencies, 0.5)):>11} {ms(pct(latencies, 0.99)):>11}"
        )
    r, bare = results.rates, results.bare
    note(
        "dropped (cap): the plain broker keeps at most 256 queued per agent and drops the"
        " oldest beyond (its receipts name them); a cluster's owner takes in what it claims at"
        " its own pace, so its local queue stays below the cap here"
    )
    note(
        f"ratios: cluster 64 / 1 sender {ratio(r['cluster 64'].per_second, r['cluster 1'].per_second)};"
        f" cluster / plain broker: 1 sender {ratio(r['cluster 1'].per_second, r['plain 1'].per_second)},"
        f" 64 senders {ratio(r['cluster 64'].per_second, r['plain 64'].per_second)};"
        f" cluster / bare psycopg: 1 sender / 1 conn. {ratio(r['cluster 1'].per_second, bare[1][0])},"
        f" 64 senders / 4 conn. (a broker's pool) {ratio(r['cluster 64'].per_second, bare[4][0])},"
        f" / 64 conn. {ratio(r['cluster 64'].per_second, bare[64][0])}"
    )

    big = sizes.backlog
    print(
        f"\n(c) commit latency of send with a backlog pending, {sizes.sends} probes after"
        f" {sizes.warmup} warm-up"
    )
    note(
        f"the backlog: real sends to {results.held_agents} agents in hold mode (at most"
        f" {PER_HELD_AGENT} each: one agent holds at most 256), taken in by their broker; the"
        " probes go to the same agents. Cluster: autovacuum off for trio_relay_deliveries,"
        " VACUUM (ANALYZE) where it says"
    )
    rows = (
        ("cluster 10", "cluster, 10, after VACUUM"),
        (f"cluster {big}", f"cluster, {big:,}, no VACUUM since"),
        (f"cluster {big} vacuumed", f"cluster, {big:,}, after VACUUM"),
        ("plain 10", "plain broker, 10"),
        (f"plain {big}", f"plain broker, {big:,}"),
    )
    pairs = ((rows[1], rows[0]), (rows[2], rows[0]), (rows[4], rows[3]))
    print(f"  {'':38} {'pending start->end':>19}   {'send (commit)':>28}")
    for key, label in rows:
        backlog = results.backlogs[key]
        span = f"{backlog.pending_before:,}->{backlog.pending_after:,}"
        print(f"  {label:38} {span:>19}   {p50_p99(backlog.commit)}")
    for top, bottom in pairs:
        large, small = results.backlogs[top[0]], results.backlogs[bottom[0]]
        print(f"  {top[1] + ' / 10':38} {'':19}   {ratios(large.commit, small.commit)}")
    cluster_big, plain_big = results.backlogs[rows[1][0]], results.backlogs[rows[4][0]]
    print(
        f"  {f'cluster / plain broker, {big:,}':38} {'':19}"
        f"   {ratios(cluster_big.commit, plain_big.commit)}"
    )

    print(
        f"\n  meanwhile: {sizes.sends} deliveries to the broker's running agent (wb on B from a"
        " client on A; wc on C)"
    )
    print(
        f"  {'':38} {'send -> verified':>28}   {'CPU ms per delivery':<26}"
        f" {'dead rows':>9} {'claim':>11} {'ps --cluster':>12}"
    )
    for key, label in rows:
        backlog = results.backlogs[key]
        groups = ("C",) if key.startswith("plain") else ("A", "B", "PostgreSQL")
        cpu = " ".join(f"{name} {backlog.cpu[name] * 1e3:.1f}" for name in groups)
        line = f"  {label:38} {p50_p99(backlog.delivery)}   {cpu:<26}"
        if backlog.claim is not None and backlog.ps:
            line += f" {backlog.dead_rows:>9,} {ms(backlog.claim)} {ms(pct(backlog.ps, 0.5)):>12}"
        print(line.rstrip())
    for top, bottom in pairs:
        large, small = results.backlogs[top[0]], results.backlogs[bottom[0]]
        line = f"  {top[1] + ' / 10':38} {ratios(large.delivery, small.delivery)}"
        if large.claim and small.claim and large.ps and small.ps:
            line += (
                f"   {'':26} {'':9} {ratio(large.claim, small.claim):>11}"
                f" {ratio(pct(large.ps, 0.5), pct(small.ps, 0.5)):>12}"
            )
        print(line.rstrip())
    note(
        "CPU: user + system time of each broker's own process and of all PostgreSQL's"
        " processes, per delivery. dead rows: dead row versions in trio_relay_deliveries."
        " claim: B's claim statements (sql.claim under EXPLAIN ANALYZE, nothing to claim),"
        " which B runs at every notification of work. ps --cluster: agents --cluster on A, p50."
    )
    fills = ", ".join(f"{k} {v:.1f} s" for k, v in results.fill_seconds.items())
    note(f"filling (64 senders; cluster: until B took all in): {fills}")
    note(f"held deliveries dropped (must be 0): {results.dropped_held}")

    print("\nbroker logs (WARNING and above):")
    for name, lines in problems.items():
        print(f"  {name}: {len(lines)} line(s)")
        for line in lines[:5]:
            print(f"    {line[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, help="sends per latency case and per backlog (200)")
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    args = parser.parse_args()
    if args.sends is not None and args.sends < 1:
        parser.error("--sends must be positive")
    sizes = Sizes.of(args.sends, args.quick)
    for variable in (
        "TRIO_RELAY_URL",
        "TRIO_RELAY_TOKEN",
        "TRIO_RELAY_CLUSTER",
        "TRIO_RELAY_AGENT",
    ):
        os.environ.pop(variable, None)  # the brokers started here, nothing else

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(
        prefix="bench-cluster-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # the postgres user reaches its directory inside
        print("starting PostgreSQL and brokers A, B (cluster) and C (plain) ...", flush=True)
        brokers = Brokers(root)
        try:
            with cluster_setup(root, brokers) as server:
                bare_dsn = bare_database(server)
                pg = Pg(server.dsn)
                try:
                    results = trio.run(measure, brokers.dirs, pg, server, bare_dsn, sizes)
                    version = pg.version()
                finally:
                    pg.conn.close()
        except BaseException:
            for name, lines in brokers.log_problems().items():  # they may say why
                print(f"broker {name}'s log, WARNING and above:", *lines[-10:], sep="\n  ")
            raise
        problems = brokers.log_problems()
    report(results, sizes, version, problems)
    print(f"\nwall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
