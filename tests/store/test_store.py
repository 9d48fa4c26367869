"""The SQLite store: pragmas, group commit in order, and failures that lose nothing."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
import trio

from trio_relay.errors import StoreError
from trio_relay.store import sql
from trio_relay.store.engine import open_store
from trio_relay.wire.vocabulary import DELIVERY_STATES, DELIVERY_TRANSITIONS, OPEN_STATES


def queue(conn: sqlite3.Connection, body: str) -> tuple[int, list[int]]:
    return sql.insert_delivery(conn, "w", "me", body, None, 1.0, 100.0)


async def test_wal_and_full_sync_and_the_schema(tmp_path: Path) -> None:
    async with open_store(tmp_path / "relay.db") as store:
        mode = await store.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        sync = await store.read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        assert (mode, sync) == ("wal", 2)  # 2 is FULL
        seq, _ = await store.write(lambda c: queue(c, "hi"), "queue")
        tag = store.tag
    async with open_store(tmp_path / "relay.db") as store:
        assert store.tag == tag  # ids stay unique across restarts of the same store
        row = await store.read(lambda c: sql.get_delivery(c, seq))
        info = sql.row_info(store.tag, row)
        assert (info.delivery_id, info.body, info.state) == (f"{tag}-{seq}", "hi", "queued")


async def test_concurrent_writes_commit_together_and_apply_in_commit_order(tmp_path: Path) -> None:
    applied: list[int] = []
    async with open_store(tmp_path / "relay.db") as store:
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(
                    lambda i=i: store.write(
                        lambda c: queue(c, str(i)),
                        "queue",
                        on_commit=lambda r: applied.append(r[0]),
                    )
                )
        assert applied == sorted(applied) and len(applied) == 50
        assert store.commits < 50  # group commit: fewer transactions than writes
        assert store.writes == 50


async def test_a_failing_write_fails_alone_in_its_batch(tmp_path: Path) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        queue(conn, "half done")
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    async with open_store(tmp_path / "relay.db") as store:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.write, lambda c: queue(c, "before"), "queue")
            outcome: list[BaseException] = []

            async def failing() -> None:
                try:
                    await store.write(broken, "broken write")
                except StoreError as exc:
                    outcome.append(exc)

            nursery.start_soon(failing)
            nursery.start_soon(store.write, lambda c: queue(c, "after"), "queue")
        bodies = await store.read(
            lambda c: [r[0] for r in c.execute("SELECT body FROM deliveries")]
        )
    assert sorted(bodies) == ["after", "before"]  # the half-done insert was rolled back
    assert "no_such_table" in str(outcome[0])


async def test_a_failing_commit_callback_is_logged_and_the_store_carries_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a write's callback (a hook of the delivery engine, say) is reported with
    its traceback and stops nothing: the write is committed, and later writes are too."""

    def bug(_: object) -> None:
        raise RuntimeError("a bug in a hook")

    async with open_store(tmp_path / "relay.db") as store:
        store.submit(lambda c: queue(c, "first"), "queue first", on_commit=bug)
        await store.write(lambda c: queue(c, "second"), "queue second")
        bodies = await store.read(
            lambda c: [r[0] for r in c.execute("SELECT body FROM deliveries ORDER BY seq")]
        )
    assert bodies == ["first", "second"]
    (record,) = [r for r in caplog.records if "callback after queue first" in r.getMessage()]
    assert record.exc_info is not None and "a bug in a hook" in str(record.exc_info[1])


async def test_a_locked_database_fails_the_write_clearly_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    errors: list[tuple[str, str]] = []
    async with open_store(path, busy_timeout=0.1) as store:
        store.on_error = lambda what, error: errors.append((what, error))
        await store.write(lambda c: queue(c, "committed"), "queue")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            with trio.fail_after(10):
                with pytest.raises(StoreError, match="database is locked"):
                    await store.write(lambda c: queue(c, "refused"), "queue a delivery")
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert errors == [("queue a delivery", "database is locked")]
        await store.write(lambda c: queue(c, "later"), "queue")
    async with open_store(path) as store:
        bodies = await store.read(
            lambda c: [r[0] for r in c.execute("SELECT body FROM deliveries")]
        )
    assert bodies == ["committed", "later"]


async def test_a_full_store_fails_the_write_and_keeps_what_was_committed(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    async with open_store(path) as store:
        await store.write(lambda c: queue(c, "committed"), "queue")
        # SQLite's own disk-full condition: no page may be added beyond the current count.
        await store.read(
            lambda c: c.execute(
                f"PRAGMA max_page_count = {c.execute('PRAGMA page_count').fetchone()[0]:d}"
            )
        )
        with pytest.raises(StoreError, match="full"):
            await store.write(lambda c: queue(c, "x" * 200_000), "queue a big delivery")
    async with open_store(path) as store:
        bodies = await store.read(
            lambda c: [r[0] for r in c.execute("SELECT body FROM deliveries")]
        )
    assert bodies == ["committed"]


async def test_a_store_that_cannot_be_opened_says_so(tmp_path: Path) -> None:
    (tmp_path / "relay.db").mkdir()  # a directory where the database file should be
    with pytest.raises(StoreError, match="cannot open"):
        async with open_store(tmp_path / "relay.db"):
            pass  # pragma: no cover - never entered


async def test_writes_after_close_fail(tmp_path: Path) -> None:
    async with open_store(tmp_path / "relay.db") as store:
        pass
    with pytest.raises(StoreError, match="closed"):
        await store.write(lambda c: queue(c, "late"), "queue")


async def test_transitions_are_conditional_on_the_state_left(tmp_path: Path) -> None:
    async with open_store(tmp_path / "relay.db") as store:
        seq, _ = await store.write(lambda c: queue(c, "m"), "queue")
        sent = await store.write(
            lambda c: sql.transition(c, seq, ("queued",), "sent", 2.0, add_attempt=True), "send"
        )
        again = await store.write(
            lambda c: sql.transition(c, seq, ("queued",), "dropped", 3.0, reason="r"), "drop"
        )
        row = sql.row_info(store.tag, await store.read(lambda c: sql.get_delivery(c, seq)))
    assert (sent, again) == (True, False)
    assert (row.state, row.attempts, row.reason) == ("sent", 1, None)


async def test_a_fault_in_a_write_alone_in_its_batch_is_raised_never_success(
    tmp_path: Path,
) -> None:
    aborted: list[BaseException] = []
    async with open_store(tmp_path / "relay.db") as store:

        def buggy(conn: sqlite3.Connection) -> None:
            queue(conn, "half done")
            raise ValueError("bug in the write")

        with pytest.raises(ValueError, match="bug in the write"):
            await store.write(buggy, "buggy write", on_abort=aborted.append)
        bodies = await store.read(
            lambda c: [r[0] for r in c.execute("SELECT body FROM deliveries")]
        )
    assert bodies == []  # rolled back
    assert len(aborted) == 1 and isinstance(aborted[0], ValueError)


class _Recorder:
    """A connection that records each statement (and its arguments) it runs."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.statements = conn, []  # type: ignore[var-annotated]

    def execute(self, sql_text: str, args: tuple = ()) -> sqlite3.Cursor:  # type: ignore[type-arg]
        self.statements.append((sql_text, args))
        return self.conn.execute(sql_text, args)


async def test_the_writer_queries_go_through_an_index_never_the_whole_history(
    tmp_path: Path,
) -> None:
    def plans(conn: sqlite3.Connection, run) -> list[str]:  # type: ignore[no-untyped-def]
        recorder = _Recorder(conn)
        run(recorder)
        return [
            row[3]
            for text, args in recorder.statements
            for row in conn.execute("EXPLAIN QUERY PLAN " + text, args)
        ]

    calls = {
        "requeue_agent": lambda c: sql.requeue_agent(c, "w", 2.0),
        "fail_open": lambda c: sql.fail_open(c, "w", "gone", 2.0, stop_agent=False),
        "reset_in_flight": lambda c: sql.reset_in_flight(c, 2.0),
        "load_open": sql.load_open,
        "dead letters": lambda c: sql.list_deliveries(c, None, ("dead_letter",), 10),
        "one agent's dead letters": lambda c: sql.list_deliveries(c, "w", ("dead_letter",), 10),
        "one agent's": lambda c: sql.list_deliveries(c, "w", None, 10),
        "one agent's verified": lambda c: sql.list_deliveries(c, "w", ("verified",), 10),
        "open": lambda c: sql.list_deliveries(c, None, ("queued", "sent", "injected"), 10),
        "late report": lambda c: sql.late_report(c, 1, "w", "verified", 2.0, verification="echo"),
    }
    async with open_store(tmp_path / "relay.db") as store:
        for what, call in calls.items():
            found = await store.read(lambda c: plans(c, call))
            assert found, what
            for plan in found:  # SEARCH by rowid or an index, or a scan of a partial index
                if plan.startswith("USE TEMP B-TREE"):
                    continue  # sorting what the index found
                assert plan.startswith("SEARCH") or "USING INDEX deliveries_" in plan, (what, plan)
                assert "deliveries_agent" not in plan or what.startswith("one agent"), (what, plan)
        assert await store.read(lambda c: sql.list_deliveries(c, None, ("bogus",), 10)) == []


def test_the_declared_transitions_name_exactly_the_states_the_schema_knows() -> None:
    # the schema knows the states through its partial indexes (open, dead, ended)
    in_schema = set(re.findall(r"'(\w+)'", " ".join(re.findall(r"WHERE (.*)", sql._SCHEMA))))
    assert in_schema == set(DELIVERY_STATES) == set(DELIVERY_TRANSITIONS)
    targets = {new for news in DELIVERY_TRANSITIONS.values() for new in news}
    assert targets <= in_schema
    assert {old for old, _ in sql.LEGAL} <= set(OPEN_STATES) | {"dead_letter", "failed"}


async def test_a_transition_the_state_machine_does_not_declare_is_refused(tmp_path: Path) -> None:
    async with open_store(tmp_path / "relay.db") as store:
        seq, _ = await store.write(lambda c: queue(c, "m"), "queue")
        with pytest.raises(ValueError, match="cannot go from 'queued' to 'verified'"):
            await store.write(
                lambda c: sql.transition(c, seq, ("queued",), "verified", 2.0), "skip ahead"
            )
        with pytest.raises(ValueError, match="cannot go from 'dropped' to 'queued'"):
            await store.write(
                lambda c: sql.transition(c, seq, ("dropped",), "queued", 2.0), "revive"
            )
        row = sql.row_info(store.tag, await store.read(lambda c: sql.get_delivery(c, seq)))
    assert (row.state, row.updated_at) == ("queued", 1.0)
