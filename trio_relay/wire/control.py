"""The control channel: what a client sends the broker and what it gets back, as msgspec
Structs.

A client sends requests ``{"id": ..., "op": ..., ...}`` (the id is the client's own) and
gets one answer each: ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error":
{"code", "message"}}``. A subscription's events arrive as ``{"id", "events": [...]}`` (in
order, batched when several are ready) with the id of the subscribe request. Unknown fields
are refused, so a typo is an error. The ``result`` Structs at the end are what the client
returns.

Pure data; no I/O.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from trio_relay.wire.events import BrokerEvent
from trio_relay.wire.vocabulary import TERMINAL_STATES, InjectMode, RestartMode

ControlId = Union[int, str]


class ControlRequest(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, kw_only=True):
    id: ControlId


class AgentOp(ControlRequest, kw_only=True):
    """Base of the requests about agent ``name``."""

    name: str


# ---------------------------------------------------------------- requests


class StatusOp(ControlRequest, tag="status", kw_only=True):
    """The broker's pid, version, uptime, agent count, last event seq, request counters."""


class SpawnOp(AgentOp, tag="spawn", kw_only=True):
    """Start ``command`` as agent ``name``: under the PTY worker unless ``native``, with the
    profile named ``profile`` (None: the one its command's name chooses); ``mcp``: give it
    the relay tools (``trio-relay mcp``) the way its profile says."""

    command: list[str]
    cwd: str | None = None
    env: dict[str, str] = {}
    native: bool = False
    rows: int = 24
    cols: int = 80
    restart: RestartMode = "never"
    profile: str | None = None
    mcp: bool = False


class AgentsOp(ControlRequest, tag="agents", kw_only=True):
    """Every agent the broker knows, running or ended; with ``cluster``, every agent of
    every broker of its cluster (:class:`ClusterAgentSummary`)."""

    cluster: bool = False


class PeersOp(ControlRequest, tag="peers", kw_only=True):
    """The agents one may message, each with its activity: every agent for the owner, every
    other one for an agent's token."""


class ReleaseOp(AgentOp, tag="release", kw_only=True):
    pass


class SendOp(ControlRequest, tag="send", kw_only=True):
    """A message for agent ``to``, answered once committed (``queued``), or with ``wait``
    once it is verified, unverified, failed, dropped or dead-lettered."""

    to: str
    body: str
    sender: str = msgspec.field(default="user", name="from")
    thread: str | None = None
    wait: bool = False
    timeout: float = 30.0


class DeliveriesOp(ControlRequest, tag="deliveries", kw_only=True):
    """Deliveries from the store, newest states included, optionally one agent's or some
    states only: the newest ``limit``, or with ``after`` (a delivery id) the first ``limit``
    after that one, oldest first either way."""

    agent: str | None = None
    states: list[str] | None = None
    limit: int = 100
    after: str | None = None


class DeliveryOp(ControlRequest, tag="delivery", kw_only=True):
    delivery_id: str


class WaitOp(ControlRequest, tag="wait", kw_only=True):
    """The delivery once it ended (verified, unverified, failed, dropped, dead letter); the
    error ``timeout`` if it has not within ``timeout`` seconds."""

    delivery_id: str
    timeout: float = 30.0


class DeadLettersOp(ControlRequest, tag="dead_letters", kw_only=True):
    agent: str | None = None
    limit: int = 100


class RedeliverOp(ControlRequest, tag="redeliver", kw_only=True):
    """Queue a dead letter or failed delivery again (same id, a fresh retry budget)."""

    delivery_id: str


class InputOp(AgentOp, tag="input", kw_only=True):
    data: str


class ResizeOp(AgentOp, tag="resize", kw_only=True):
    rows: int
    cols: int


class SnapshotOp(AgentOp, tag="snapshot", kw_only=True):
    ansi: bool = False
    timeout: float | None = None


class ModeOp(AgentOp, tag="mode", kw_only=True):
    """Get (no ``set``) or set an agent's injection mode."""

    set: InjectMode | None = None


class PendingOp(AgentOp, tag="pending", kw_only=True):
    pass


class FlushOp(AgentOp, tag="flush", kw_only=True):
    pass


class LogsOp(AgentOp, tag="logs", kw_only=True):
    """The last ``lines`` lines the agent's worker wrote to stderr."""

    lines: int = 100


class SubscribeOp(ControlRequest, tag="subscribe", kw_only=True):
    """Stream events numbered above ``since`` (None: from now), optionally only one agent's
    or only some kinds. Answered at once with ``{"last_seq"}``; events follow."""

    since: int | None = None
    agent: str | None = None
    kinds: list[str] | None = None
    #: Every broker's events as ``cluster_event`` (since: numbered by this broker's log of
    #: them; a broker that is not in a cluster refuses it).
    cluster: bool = False


class UnsubscribeOp(ControlRequest, tag="unsubscribe", kw_only=True):
    subscription: ControlId


class PruneOp(ControlRequest, tag="prune", kw_only=True):
    """Delete ended deliveries and released agents unchanged for ``older_than`` seconds
    (None: the broker's retention)."""

    older_than: float | None = None


class ShutdownOp(ControlRequest, tag="shutdown", kw_only=True):
    """Release every agent and stop the broker; answered before it stops."""


class LoginOp(ControlRequest, tag="login", kw_only=True):
    """A one-time login URL for the dashboard (``{"url": ...}``); the owner's only, and
    only from a broker serving HTTP (``up --http``)."""


ControlOp = Union[
    StatusOp,
    SpawnOp,
    AgentsOp,
    PeersOp,
    ReleaseOp,
    SendOp,
    DeliveriesOp,
    DeliveryOp,
    WaitOp,
    DeadLettersOp,
    RedeliverOp,
    InputOp,
    ResizeOp,
    SnapshotOp,
    ModeOp,
    PendingOp,
    FlushOp,
    LogsOp,
    SubscribeOp,
    UnsubscribeOp,
    PruneOp,
    ShutdownOp,
    LoginOp,
]


# ---------------------------------------------------------------- answers


class ControlError(msgspec.Struct):
    code: str
    message: str


class ControlAnswer(msgspec.Struct, omit_defaults=True):
    id: ControlId | None
    ok: bool
    result: Any = None
    error: ControlError | None = None


class ControlEvents(msgspec.Struct):
    """Events for the subscription ``id``, in order; as many as were ready at once."""

    id: ControlId
    events: list[BrokerEvent]


# ---------------------------------------------------------------- results


class AgentSummary(msgspec.Struct, kw_only=True):
    """An agent as ``spawn``, ``agents`` and ``release`` report it."""

    name: str
    state: str
    pid: int | None
    argv: list[str]
    restarts: int
    started_at: float | None
    last_exit: str | None
    last_reason: str
    last_activity: float | None
    pending_deliveries: int
    pending_requests: int
    protocol_errors: int
    #: What the agent is doing (:data:`~trio_relay.wire.vocabulary.Activity`), since when
    #: (wall clock), and the screen text that decided it (a dialog's message in attention).
    activity: str = "starting"
    activity_since: float | None = None
    activity_text: str = ""
    #: Why deliveries wait in its worker (None: they are typed as they come).
    waiting: str | None = None
    profile: str | None = None


class ClusterAgentSummary(msgspec.Struct, kw_only=True):
    """An agent of the cluster as ``agents`` with ``cluster`` reports it: ``state`` is
    ``unreachable`` while its broker's lease has passed."""

    name: str
    broker: str
    state: str
    activity: str
    activity_since: float | None = None
    profile: str | None = None
    pid: int | None = None
    pending_deliveries: int = 0


class PeerSummary(msgspec.Struct, kw_only=True):
    """An agent as ``peers`` reports it: what another agent needs to message it."""

    name: str
    state: str
    activity: str
    activity_since: float | None = None
    profile: str | None = None


class DeliveryRecord(msgspec.Struct, kw_only=True):
    """A delivery as the store has it (``deliveries``, ``delivery``, ``dead_letters``,
    ``pending``). ``state`` is one of :data:`OPEN_STATES` or :data:`TERMINAL_STATES`;
    ``unverified`` is an injection the worker could not see echoed (``verification`` is
    ``timeout_fallback``, ``reason`` says why): never a plain success."""

    delivery_id: str
    agent: str
    state: str
    sender: str = ""
    body: str = ""
    thread: str | None = None
    attempts: int = 0
    seq: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    deadline_at: float = 0.0
    last_error: str | None = None
    verification: str | None = None
    reason: str | None = None
    #: An open delivery its agent's worker holds: why it is not typed yet (the agent is
    #: starting, busy, waits for a person, or a draft is in its input line).
    waiting: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def describe(self) -> str:
        """The state in words, e.g. ``verified (echo)`` or ``injected but not verified
        (timeout_fallback: ...)``."""
        if self.state == "verified":
            return f"verified ({self.verification})"
        if self.state == "unverified":
            return f"injected but not verified ({self.verification}: {self.reason})"
        if self.waiting and not self.terminal:
            return f"{self.state}, waiting: {self.waiting}"
        detail = self.reason or self.last_error
        return f"{self.state} ({detail})" if detail and self.terminal else self.state


class SendReceipt(DeliveryRecord, kw_only=True):
    """The answer to ``send`` and ``redeliver``: ``queued`` once committed, or with ``wait``
    the delivery's end state. ``evicted`` are older deliveries dropped to make room."""

    evicted: list[str] = []


class ScreenSnapshot(msgspec.Struct, kw_only=True):
    """What an agent's screen shows; ``offset`` is the output byte offset it reflects."""

    text: str
    rows: int
    cols: int
    cursor: list[int]
    offset: int | None = None


class BrokerStatus(msgspec.Struct, kw_only=True):
    version: str
    pid: int
    url: str
    uptime: float
    agents: dict[str, int]
    last_seq: int
    requests: dict[str, int]
    you: str | None = None
    #: In a cluster: this broker's name there and whether PostgreSQL answers now.
    cluster: dict[str, Any] | None = None
    #: With ``up --shared-pty``: ``{"pid": N}`` of the running shared PTY host (pid None
    #: until the first PTY agent starts it, and again after it died); else None.
    shared_pty: dict[str, Any] | None = None


class PendingDeliveries(msgspec.Struct, kw_only=True):
    mode: str
    deliveries: list[DeliveryRecord]


class ModeResult(msgspec.Struct, kw_only=True):
    mode: str


class FlushResult(msgspec.Struct, kw_only=True):
    count: int


class PruneResult(msgspec.Struct, kw_only=True):
    """What ``prune`` deleted from the store."""

    deliveries: int
    agents: int
