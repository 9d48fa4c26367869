"""Retention: deleting from the store what ended long enough ago."""

from __future__ import annotations

import logging
import time

import trio

from trio_relay.errors import StoreError
from trio_relay.store import sql
from trio_relay.store.engine import Store
from trio_relay.wire import PruneResult

log = logging.getLogger(__name__)

#: Ended deliveries and released agents are kept this long (seconds) by default.
DEFAULT_RETENTION = 7 * 24 * 3600.0
PRUNE_BATCH = 1000


async def prune(store: Store, older_than: float) -> PruneResult:
    """Delete from the store the ended deliveries (dead letters included) and the agents
    not to be respawned that have not changed for ``older_than`` seconds, in batches that
    do not hold up other writes. Returns how many of each. Raises StoreError, ValueError
    for a negative age. Cancellation: a cancel point between batches; a batch once queued
    is waited for (see :meth:`Store.write`)."""
    if not older_than >= 0:
        raise ValueError(f"an age must not be negative, got {older_than!r}")
    before = time.time() - older_than
    deliveries = 0
    while True:
        n = await store.write(
            lambda conn: sql.prune_deliveries(conn, before, PRUNE_BATCH), "prune deliveries"
        )
        deliveries += n
        if n < PRUNE_BATCH:
            break
    agents = await store.write(lambda conn: sql.prune_agents(conn, before), "prune agents")
    if deliveries or agents:
        log.info(
            "pruned %d ended deliveries and %d agents older than %g s",
            deliveries,
            agents,
            older_than,
        )
    return PruneResult(deliveries=deliveries, agents=agents)


async def prune_every(store: Store, retention: float) -> None:
    """Prune what is older than ``retention`` now and then (every hour at most), until
    cancelled. A store that cannot write is tried again at the next round."""
    period = min(3600.0, max(retention / 4, 0.05))
    while True:
        try:
            await prune(store, retention)
        except StoreError as exc:
            log.warning("retention: %s; trying again in %g s", exc, period)
        await trio.sleep(period)
