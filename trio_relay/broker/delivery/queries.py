"""Reading deliveries: from the store (one, or a listing), from memory (an agent's open
ones), and waiting for one to end. Nothing here changes a delivery."""

from __future__ import annotations

import trio

from trio_relay.broker.delivery.core import Core, Waiter
from trio_relay.errors import DeliveryNotFound, DeliveryTimeout
from trio_relay.store import sql
from trio_relay.store.sql import DeliveryInfo


async def get(core: Core, delivery_id: str) -> DeliveryInfo:
    """One delivery as stored. Raises DeliveryNotFound or StoreError."""
    seq = core.seq_of(delivery_id)
    row = await core.store.read(lambda conn: sql.get_delivery(conn, seq), "read a delivery")
    if row is None:
        raise DeliveryNotFound(delivery_id)
    return sql.row_info(core.tag, row)


async def wait(core: Core, delivery_id: str, timeout: float) -> DeliveryInfo:
    """See :meth:`DeliveryEngine.wait`."""
    seq = core.seq_of(delivery_id)
    with trio.move_on_after(timeout):
        while True:
            if seq not in core.open:
                info = await get(core, delivery_id)
                if info.terminal:
                    return info
                await trio.lowlevel.checkpoint()  # reopened meanwhile: wait on it
                continue
            waiter = core.waiters.setdefault(seq, Waiter())
            await waiter.event.wait()
            if waiter.info is not None:
                return waiter.info
    delivery = core.open.get(seq)
    raise DeliveryTimeout(delivery_id, timeout, delivery.state if delivery else "open")


async def deliveries(
    core: Core,
    agent: str | None,
    states: tuple[str, ...] | None,
    limit: int,
    after: str | None = None,
) -> list[DeliveryInfo]:
    """The newest ``limit`` deliveries, oldest first; with ``after`` (a delivery id), the
    first ``limit`` after that one. Raises DeliveryNotFound for an ``after`` that is not
    one of this store's ids, StoreError."""
    seq = None if after is None else core.seq_of(after)
    rows = await core.store.read(
        lambda conn: sql.list_deliveries(conn, agent, states, limit, seq), "list deliveries"
    )
    return [sql.row_info(core.tag, row) for row in rows]


def pending(core: Core, agent: str) -> list[DeliveryInfo]:
    """The agent's open deliveries in order. Raises WorkerNotFound."""
    box = core.known(agent)
    opened = sorted([*box.queued.values(), *box.inflight.values()], key=lambda d: d.seq)
    return [d.info(core.tag) for d in opened]


def statistics(core: Core) -> dict[str, int]:
    return {
        "open": len(core.open),
        "mailboxes": len(core.mailboxes),
        "stale_reports": core.stale_reports,
        "commits": core.store.commits,
        "writes": core.store.writes,
        "store_failures": core.store.failures,
    }
