"""One agent's open deliveries in memory, and the claims that keep concurrent decisions
apart. Pure bookkeeping: no Trio, no store, no events."""

from __future__ import annotations

from typing import Any

from trio_relay.store import sql
from trio_relay.store.sql import DeliveryInfo


class Delivery:
    """An open delivery as the engine holds it: the store's row, one attribute a column."""

    __slots__ = sql.ROW

    def __init__(self, row: Any) -> None:
        for name, value in zip(sql.ROW, row, strict=True):
            setattr(self, name, value)

    @classmethod
    def queued(
        cls,
        seq: int,
        agent: str,
        sender: str,
        body: str,
        thread: str | None,
        *,
        created_at: float,
        now: float,
        deadline_at: float,
        last_error: str | None = None,
    ) -> Delivery:
        """One just committed as ``queued`` (a send, or a redelivery with a fresh budget)."""
        return cls(
            (seq, agent, sender, body, thread, "queued", 0, created_at, now, deadline_at)
            + (last_error, None, None)
        )

    def info(self, tag: str) -> DeliveryInfo:
        return sql.row_info(tag, [getattr(self, name) for name in sql.ROW])


class Mailbox:
    """One agent's open deliveries: ``queued`` and ``inflight`` (handed to its worker),
    each ordered by seq, with the claims of decisions whose commit is pending."""

    def __init__(self, name: str, mode: str) -> None:
        self.name = name
        self.mode = mode
        self.queued: dict[int, Delivery] = {}
        self.inflight: dict[int, Delivery] = {}
        self.leaving: set[int] = set()  # queued ones claimed by a pending eviction or dispatch
        self.busy: set[int] = set()  # in-flight ones with a pending retry or dead letter
        self.incoming = 0  # sends being committed
        self.dispatching = 0
        self.flushed: set[int] = set()  # released by a flush while in hold mode
        self.running = False
        self.run = 0
        self.stall_at: float | None = None  # trio time: retry the head of inflight
        self.pump_at: float | None = None  # trio time: try dispatching again (store failed)
        self.preamble: str | None = None  # added to the first message of each run
        self.preamble_due = False  # this run has not been given it yet

    @property
    def idle(self) -> bool:
        """Nothing open in it and no decision about it pending."""
        return not (self.queued or self.inflight or self.incoming or self.dispatching or self.busy)

    def head(self) -> Delivery | None:
        """The oldest in-flight delivery: the one whose progress the stall timer watches."""
        return next(iter(self.inflight.values()), None)

    def add_queued(self, delivery: Delivery) -> None:
        if self.queued and delivery.seq < next(reversed(self.queued)):
            self.queued[delivery.seq] = delivery
            self.queued = dict(sorted(self.queued.items()))
        else:
            self.queued[delivery.seq] = delivery

    def claim_eviction(self, cap: int) -> int | None:
        """The oldest unclaimed queued delivery to evict if one more would exceed ``cap``."""
        if len(self.queued) - len(self.leaving) + self.incoming < cap:
            return None
        for seq in self.queued:
            if seq not in self.leaving:
                self.leaving.add(seq)
                return seq
        return None

    def choose(self, now: float, room: int) -> tuple[list[Delivery], list[int]]:
        """What to hand over next: at most ``room`` unclaimed queued deliveries in order
        (none past one that hold mode keeps), and the seqs met on the way whose deadline
        passed (never handed over)."""
        chosen: list[Delivery] = []
        expired: list[int] = []
        for seq, delivery in self.queued.items():
            if seq in self.leaving:
                continue
            if self.mode == "hold" and seq not in self.flushed:
                break
            if now >= delivery.deadline_at:
                expired.append(seq)
                continue
            if len(chosen) >= room:
                break
            chosen.append(delivery)
        return chosen, expired

    def move_back(self) -> list[Delivery]:
        """The worker exited: every in-flight delivery is queued again, in order. Returns
        them."""
        moved = list(self.inflight.values())
        self.inflight.clear()
        self.stall_at = None
        for delivery in moved:
            delivery.state = "queued"
            self.add_queued(delivery)
        return moved
