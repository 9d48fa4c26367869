"""Durable delivery: per-agent queues, dispatch to workers, retries, dead letters, crashes.

The state machine (declared in :data:`trio_relay.wire.vocabulary.DELIVERY_TRANSITIONS`, which
the store's SQL refuses to leave); every change is one conditional ``UPDATE`` committed
before its event::

    queued -> sent -> injected -> verified | unverified | failed
    queued -> dropped                 evicted: the agent's cap of pending deliveries
    queued -> dead_letter             its deadline passed before it could be handed over
    sent | injected -> queued         the worker exited; redelivered when it is back
    sent -> sent, injected -> injected  not acknowledged in time: handed over again
    sent | injected -> dead_letter    never acknowledged: attempts or deadline spent
    queued | sent | injected -> failed  the agent exited and will not come back, or was released
    dead_letter | failed -> queued    redeliver
    dead_letter -> verified | unverified  the worker's report came after all (late)

``unverified`` is what the worker reports as ``timeout_fallback``: injected, not seen echoed
(announced as ``delivery_unverified``, never as ``delivery_verified``).

A write queued from a hook that the store cannot commit (a worker's report, failing the
deliveries of an agent that will not come back) is tried again every ``store_retry``
seconds until it commits; each failure is a ``store_error`` event.

How it stays consistent without locks: memory (the open deliveries, per agent) changes only
in the store's ``on_commit`` callbacks, which run in commit order, so it follows the database
exactly. A decision taken before a commit (which delivery to evict, which to hand to the
worker) *claims* its deliveries so no other decision takes them meanwhile, and every
``UPDATE`` is conditional on the state it leaves, so a stale decision changes nothing.

Worker reports and agent lifecycle events arrive through synchronous hooks
(:meth:`DeliveryEngine.on_report`, :meth:`DeliveryEngine.on_event`) that only queue writes;
one timer task drives retries. Nothing here blocks the Trio thread.

The modules: ``policy`` (settings, receipt, transport, argument checks), ``mailbox`` (one
agent's open deliveries and claims), ``timers`` (the timer task's deadlines), ``core`` (the
shared state and steps), ``intake`` (send, redeliver), ``handover`` (to the worker),
``retries`` (backoff, dead letters), ``reports`` (from the worker), ``lifecycle`` (agent
runs), ``recovery`` (at start), ``hold`` (hold mode, flush), ``queries``, and ``engine``
(the facade).
"""

from __future__ import annotations

from trio_relay.broker.delivery.engine import DeliveryEngine
from trio_relay.broker.delivery.policy import DeliveryPolicy, Receipt, Transport

__all__ = ["DeliveryEngine", "DeliveryPolicy", "Receipt", "Transport"]
