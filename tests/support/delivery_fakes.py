"""Shared by the delivery engine's tests on MockClock: a fake worker transport, and a
recorder of every state change the store's connection performs."""

from __future__ import annotations

import sqlite3

import trio

from trio_relay.errors import InputQueueFull, WorkerNotFound
from trio_relay.store.engine import Store
from trio_relay.wire import decode_broker_frame


class FakeTransport:
    """Agents that are 'active' (``alive``) and 'running', the deliver frames written to
    them with the time, and why each will not come back (``fates``)."""

    def __init__(self) -> None:
        self.alive: set[str] = set()
        self.running: set[str] = set()
        self.frames: list[tuple[float, str, str]] = []  # (time, agent, delivery_id)
        self.fates: dict[str, str] = {}
        self.waits: dict[str, str] = {}  # agent -> why its worker holds what it was handed
        self.full: set[str] = set()  # agents whose worker reads nothing: InputQueueFull

    def active(self, agent: str) -> bool:
        return agent in self.alive

    def deliver(self, agent: str, frame: bytes) -> None:
        if agent not in self.running:
            raise WorkerNotFound(agent)
        if agent in self.full:
            raise InputQueueFull(agent, 8 << 20, 8 << 20)
        decoded = decode_broker_frame(frame)
        self.frames.append((trio.current_time(), agent, decoded.delivery_id))  # type: ignore[union-attr]

    def fate(self, agent: str) -> str | None:
        return self.fates.get(agent)

    def waiting(self, agent: str) -> str | None:
        return self.waits.get(agent)

    def gave_up(self, agent: str) -> bool:
        return self.fates.get(agent, "").startswith("it gave up")

    def ids(self, agent: str = "w") -> list[str]:
        return [d for _, a, d in self.frames if a == agent]

    def counts(self) -> dict[str, int]:
        """How many frames each delivery id was written in."""
        out: dict[str, int] = {}
        for _, _, did in self.frames:
            out[did] = out.get(did, 0) + 1
        return out


async def record_transitions(store: Store, seen: set[tuple[str, str]]) -> None:
    """From now on, add to ``seen`` the (old, new) state of every delivery row the store's
    connection updates, whichever statement does it (a temporary trigger)."""

    def install(conn: sqlite3.Connection) -> None:
        conn.create_function("seen", 2, lambda old, new: seen.add((old, new)))
        conn.execute(
            "CREATE TEMP TRIGGER IF NOT EXISTS record_transitions AFTER UPDATE OF state"
            " ON main.deliveries BEGIN SELECT seen(old.state, new.state); END"
        )

    await store.read(install, "record transitions")
