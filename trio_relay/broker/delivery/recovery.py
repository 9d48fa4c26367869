"""The engine's start: the stored agents' modes and every open delivery, loaded into memory;
what was handed to a worker of the previous run is queued again."""

from __future__ import annotations

import logging

from trio_relay.broker.delivery.core import Core
from trio_relay.broker.delivery.mailbox import Delivery
from trio_relay.store import sql

log = logging.getLogger(__name__)


async def recover(core: Core) -> list[sql.AgentRow]:
    """Returns the stored agents. Raises StoreError. Cancellation: as the store's reads and
    writes (a write once queued is waited for)."""
    agents = await core.store.read(sql.load_agents, "load agents")
    for agent in agents:
        core.modes[agent.name] = agent.mode
    now = core.wall()
    requeued = await core.store.write(
        lambda conn: sql.reset_in_flight(conn, now), "requeue deliveries of the last run"
    )
    rows = await core.store.read(sql.load_open, "load open deliveries")
    for row in rows:
        delivery = Delivery(row)
        core.mailbox(delivery.agent).queued[delivery.seq] = delivery
        core.open[delivery.seq] = delivery
    if rows:
        log.info("recovered %d open deliveries (%d were in flight)", len(rows), requeued)
    return agents
