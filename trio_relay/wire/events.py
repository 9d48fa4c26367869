"""Broker events: what a subscriber watches, as msgspec Structs tagged by ``kind``.

Every event carries a sequence number and a wall-clock time, set by the event log. An
event about one agent is an :class:`AgentEvent`; one about one of its deliveries is a
:class:`DeliveryEvent`. Events marked *terminal* are the last of their agent or delivery.

Pure data; no I/O. :func:`decode_event` raises ProtocolError.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from trio_relay.wire.codec import decode_with


class Event(msgspec.Struct, tag_field="kind", kw_only=True):
    """Base of broker events. ``seq`` and ``time`` are set by the event log."""

    seq: int = 0
    time: float = 0.0


class AgentEvent(Event, kw_only=True):
    """Base of the events about agent ``agent``."""

    agent: str


# ---------------------------------------------------------------- an agent's life


class AgentSpawned(AgentEvent, tag="agent_spawned", kw_only=True):
    pid: int
    argv: list[str]
    attempt: int = 0


class AgentReady(AgentEvent, tag="agent_ready", kw_only=True):
    pass


class AgentIdle(AgentEvent, tag="agent_idle", kw_only=True):
    pass


class AgentActivity(AgentEvent, tag="agent_activity", kw_only=True):
    """The agent's activity changed ``from`` one to ``to`` another (see
    :data:`~trio_relay.wire.vocabulary.Activity`); ``text`` is the screen text that decided
    it (for ``attention``: what the dialog asks of a person)."""

    from_: str = msgspec.field(name="from")
    to: str
    text: str = ""


class AgentOutput(AgentEvent, tag="agent_output", kw_only=True):
    offset: int
    data: str


class AgentResized(AgentEvent, tag="agent_resized", kw_only=True):
    """The agent's terminal was resized to ``rows`` x ``cols`` (the frame is written)."""

    rows: int
    cols: int


class AgentExited(AgentEvent, tag="agent_exited", kw_only=True):
    """Terminal: the agent's process is gone and reaped. ``intended`` is true only when the
    broker asked for the exit (release, shutdown)."""

    code: int | None
    signal: int | None
    intended: bool
    reason: str


class SpawnFailedEvent(AgentEvent, tag="spawn_failed", kw_only=True):
    """Terminal: the agent could not be started; ``error`` carries the OS error."""

    error: str
    errno: int | None = None


class AgentRestarting(AgentEvent, tag="agent_restarting", kw_only=True):
    attempt: int
    delay: float


class AgentGaveUp(AgentEvent, tag="agent_gave_up", kw_only=True):
    attempts: int
    reason: str


class WorkerProtocolError(AgentEvent, tag="worker_protocol_error", kw_only=True):
    error: str
    excerpt: str


# ---------------------------------------------------------------- a delivery's life


class DeliveryEvent(AgentEvent, kw_only=True):
    """Base of the events about delivery ``delivery_id`` to agent ``agent``."""

    delivery_id: str


class DeliveryQueuedEvent(DeliveryEvent, tag="delivery_queued", kw_only=True):
    """Committed to the store: a delivery for ``agent`` waits its turn (``redelivery``: a
    dead letter or failed delivery queued again)."""

    sender: str
    thread: str | None = None
    redelivery: bool = False


class DeliveryInjectedEvent(DeliveryEvent, tag="delivery_injected", kw_only=True):
    pass


class DeliveryVerifiedEvent(DeliveryEvent, tag="delivery_verified", kw_only=True):
    """Terminal, a success: the message was seen on the agent's screen (``verification`` is
    ``echo``). A delivery that could not be verified is ``delivery_unverified`` instead."""

    verification: str
    reason: str | None = None


class DeliveryUnverifiedEvent(DeliveryEvent, tag="delivery_unverified", kw_only=True):
    """Terminal, not a success: injected but not seen on the agent's screen in time
    (``verification`` is ``timeout_fallback``, ``reason`` says why); the delivery's state is
    ``unverified``."""

    verification: str
    reason: str | None = None


class DeliveryFailedEvent(DeliveryEvent, tag="delivery_failed", kw_only=True):
    reason: str


class DeliveryDroppedEvent(DeliveryEvent, tag="delivery_dropped", kw_only=True):
    """Terminal: a queued delivery was evicted (the agent's cap was reached)."""

    reason: str
    evicted_by: str | None = None


class DeliveryRequeuedEvent(DeliveryEvent, tag="delivery_requeued", kw_only=True):
    """A delivery handed to the agent's worker went back to queued (the worker exited)."""

    reason: str


class DeliveryRetryingEvent(DeliveryEvent, tag="delivery_retrying", kw_only=True):
    """The worker did not acknowledge a delivery in time; it is sent again (``attempt``)."""

    attempt: int
    error: str


class DeadLetterEvent(DeliveryEvent, tag="dead_letter", kw_only=True):
    """Terminal: the retry budget (attempts or deadline) is spent; ``error`` is the last."""

    attempts: int
    error: str


# ---------------------------------------------------------------- the broker's own


class ClusterEvent(Event, tag="cluster_event", kw_only=True):
    """An event of one broker of the cluster (``events --cluster``): ``event`` is that
    broker's event as it encoded it (its own ``seq``); ``agent`` is its agent, if any.
    ``truncated``: the event was too large for a notification, so only its kind, agent and
    seq are here."""

    broker: str
    agent: str | None = None
    event: dict[str, Any]
    truncated: bool = False


class StoreErrorEvent(Event, tag="store_error", kw_only=True):
    """The store could not do ``operation``; nothing of it was committed."""

    operation: str
    error: str


class Gap(Event, tag="gap", kw_only=True):
    """A subscriber fell behind: events ``first``..``last`` (inclusive) are lost to it."""

    first: int
    last: int


BrokerEvent = Union[
    AgentSpawned,
    AgentReady,
    AgentIdle,
    AgentActivity,
    AgentOutput,
    AgentResized,
    AgentExited,
    SpawnFailedEvent,
    AgentRestarting,
    AgentGaveUp,
    WorkerProtocolError,
    DeliveryInjectedEvent,
    DeliveryVerifiedEvent,
    DeliveryUnverifiedEvent,
    DeliveryFailedEvent,
    DeliveryQueuedEvent,
    DeliveryDroppedEvent,
    DeliveryRequeuedEvent,
    DeliveryRetryingEvent,
    DeadLetterEvent,
    StoreErrorEvent,
    ClusterEvent,
    Gap,
]

_event_decoder = msgspec.json.Decoder(BrokerEvent)


def decode_event(data: bytes) -> BrokerEvent:
    """Decode one broker event. Raises ProtocolError."""
    return decode_with(_event_decoder, data)
