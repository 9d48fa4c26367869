"""Every wire type of trio-relay, as msgspec Structs, with encoders and decoders built once.

Worker frames travel as newline-delimited JSON on a worker's stdin (broker -> worker) and
stdout (worker -> broker). Every frame is one JSON object tagged by ``kind``. Unknown fields
are ignored (so either side may add optional fields); an unknown ``kind``, a wrong type or a
missing field is a :class:`ProtocolError` naming the field.

- Fire-and-forget frames carry no ``request_id``.
- A request carries a ``request_id`` minted by the broker; its one answer is a
  :class:`Response`. The broker sends requests generically (:func:`encode_request`), so a
  native worker may implement request kinds of its own; the ones defined here are those the
  PTY worker implements.
- Worker events (``ready``, ``output``, ...) carry no ``request_id``.

Broker events (what a subscriber watches) are tagged by ``kind`` as well and carry a
sequence number and a wall-clock time.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from trio_relay.errors import ProtocolError
from trio_relay.wire.vocabulary import (
    TERMINAL_STATES,
    InjectMode,
    RestartMode,
    Verification,
)

PROTOCOL_VERSION = 1


class Frame(msgspec.Struct, tag_field="kind", omit_defaults=True):
    """Base of every worker-protocol frame."""


class ErrorInfo(msgspec.Struct):
    """A worker's error answer: a stable machine-readable code and a human message."""

    code: str
    message: str


# ---------------------------------------------------------------- broker -> worker


class BrokerHello(Frame, tag="hello"):
    """The broker's first frame to a worker."""

    protocol: int = PROTOCOL_VERSION
    broker: str = "trio-relay"


class Shutdown(Frame, tag="shutdown"):
    """Ask the worker to stop its program and exit. Fire-and-forget."""


class WriteInput(Frame, tag="write_input"):
    """Raw keystrokes for the worker's terminal (control keys included).

    Fire-and-forget; with a ``request_id`` it is a request, answered once the bytes reached
    the terminal.
    """

    data: str
    request_id: str | None = None


class Resize(Frame, tag="resize"):
    """Resize the worker's terminal. Fire-and-forget."""

    rows: int
    cols: int


class Deliver(Frame, tag="deliver"):
    """A message for the agent. The worker dedups by ``delivery_id``. Fire-and-forget."""

    delivery_id: str
    sender: str = msgspec.field(name="from")
    body: str
    thread: str | None = None


class Request(Frame):
    """Base of request frames: each is answered by exactly one :class:`Response`."""

    request_id: str


class Ping(Request, tag="ping"):
    """Liveness check; the answer's payload is ``{"data": data}``."""

    data: Any = None


class Snapshot(Request, tag="snapshot"):
    """The visible screen: payload ``{text, rows, cols, cursor: [row, col], offset}``."""

    ansi: bool = False


class Mode(Request, tag="mode"):
    """Get (``set`` absent) or set the injection mode; payload ``{"mode": ...}``."""

    set: InjectMode | None = None


class Pending(Request, tag="pending"):
    """Deliveries held in the worker; payload ``{"deliveries": [...]}``."""


class Flush(Request, tag="flush"):
    """Inject what is held; payload ``{"count": n}``."""


BrokerFrame = Union[
    BrokerHello, Shutdown, WriteInput, Resize, Deliver, Ping, Snapshot, Mode, Pending, Flush
]

#: Kinds that are never requests: :func:`encode_request` refuses them.
NOT_REQUEST_KINDS = frozenset({"hello", "shutdown", "resize", "deliver", "response"})


# ---------------------------------------------------------------- worker -> broker


class WorkerHello(Frame, tag="hello"):
    """The worker's first frame: its protocol version and what it is."""

    protocol: int
    worker: str = "native"
    pid: int | None = None
    #: A wrapper's program (the PTY worker's CMD): its pid, which is also its session and
    #: process group id, for a sweep of leftover process groups.
    program_pid: int | None = None


class Response(Frame, tag="response"):
    """The one answer to a request: a payload, or an error."""

    request_id: str
    payload: Any = None
    error: ErrorInfo | None = None


class Ready(Frame, tag="ready"):
    """The agent's program has started and settled."""


class Output(Frame, tag="output"):
    """Raw terminal output; ``offset`` is the byte offset of ``data`` in the output stream."""

    offset: int
    data: str


class Idle(Frame, tag="idle"):
    """The agent has been silent for the idle period with nothing pending."""


class Exited(Frame, tag="exited"):
    """The wrapped program itself exited (a wrapper reports this before it exits)."""

    code: int | None = None
    signal: int | None = None
    #: The final screen, as a ``snapshot`` request would answer it (the PTY worker).
    snapshot: dict[str, Any] | None = None


class DeliveryInjected(Frame, tag="delivery_injected"):
    delivery_id: str


class DeliveryVerified(Frame, tag="delivery_verified"):
    """``echo``: the text appeared on screen. ``timeout_fallback``: it did not, see reason."""

    delivery_id: str
    verification: Verification
    reason: str | None = None


class DeliveryFailed(Frame, tag="delivery_failed"):
    delivery_id: str
    reason: str


WorkerFrame = Union[
    WorkerHello,
    Response,
    Ready,
    Output,
    Idle,
    Exited,
    DeliveryInjected,
    DeliveryVerified,
    DeliveryFailed,
]


# ---------------------------------------------------------------- broker events


class Event(msgspec.Struct, tag_field="kind", kw_only=True):
    """Base of broker events. ``seq`` and ``time`` are set by the event log."""

    seq: int = 0
    time: float = 0.0


class AgentEvent(Event, kw_only=True):
    agent: str


class AgentSpawned(AgentEvent, tag="agent_spawned", kw_only=True):
    pid: int
    argv: list[str]
    attempt: int = 0


class AgentReady(AgentEvent, tag="agent_ready", kw_only=True):
    pass


class AgentIdle(AgentEvent, tag="agent_idle", kw_only=True):
    pass


class AgentOutput(AgentEvent, tag="agent_output", kw_only=True):
    offset: int
    data: str


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


class DeliveryInjectedEvent(AgentEvent, tag="delivery_injected", kw_only=True):
    delivery_id: str


class DeliveryVerifiedEvent(AgentEvent, tag="delivery_verified", kw_only=True):
    """Terminal, a success: the message was seen on the agent's screen (``verification`` is
    ``echo``). A delivery that could not be verified is ``delivery_unverified`` instead."""

    delivery_id: str
    verification: str
    reason: str | None = None


class DeliveryUnverifiedEvent(AgentEvent, tag="delivery_unverified", kw_only=True):
    """Terminal, not a success: injected but not seen on the agent's screen in time
    (``verification`` is ``timeout_fallback``, ``reason`` says why); the delivery's state is
    ``unverified``."""

    delivery_id: str
    verification: str
    reason: str | None = None


class DeliveryFailedEvent(AgentEvent, tag="delivery_failed", kw_only=True):
    delivery_id: str
    reason: str


class DeliveryQueuedEvent(AgentEvent, tag="delivery_queued", kw_only=True):
    """Committed to the store: a delivery for ``agent`` waits its turn (``redelivery``: a
    dead letter or failed delivery queued again)."""

    delivery_id: str
    sender: str
    thread: str | None = None
    redelivery: bool = False


class DeliveryDroppedEvent(AgentEvent, tag="delivery_dropped", kw_only=True):
    """Terminal: a queued delivery was evicted (the agent's cap was reached)."""

    delivery_id: str
    reason: str
    evicted_by: str | None = None


class DeliveryRequeuedEvent(AgentEvent, tag="delivery_requeued", kw_only=True):
    """A delivery handed to the agent's worker went back to queued (the worker exited)."""

    delivery_id: str
    reason: str


class DeliveryRetryingEvent(AgentEvent, tag="delivery_retrying", kw_only=True):
    """The worker did not acknowledge a delivery in time; it is sent again (``attempt``)."""

    delivery_id: str
    attempt: int
    error: str


class DeadLetterEvent(AgentEvent, tag="dead_letter", kw_only=True):
    """Terminal: the retry budget (attempts or deadline) is spent; ``error`` is the last."""

    delivery_id: str
    attempts: int
    error: str


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
    AgentOutput,
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
    Gap,
]


# ---------------------------------------------------------------- codecs, built once

_encoder = msgspec.json.Encoder()
_worker_frame_decoder = msgspec.json.Decoder(WorkerFrame)
_broker_frame_decoder = msgspec.json.Decoder(BrokerFrame)
_event_decoder = msgspec.json.Decoder(BrokerEvent)


def encode(obj: Any) -> bytes:
    """Encode a frame or event as one JSON line, newline included."""
    return _encoder.encode(obj) + b"\n"


def encode_request(kind: str, request_id: str, payload: dict[str, Any] | None) -> bytes:
    """Encode a request frame of any kind as one JSON line.

    Raises ValueError if ``kind`` is not a request kind or ``payload`` tries to set
    ``kind`` or ``request_id``.
    """
    prefix = _request_prefixes.get(kind)
    if prefix is None:
        if kind in NOT_REQUEST_KINDS or not kind:
            raise ValueError(f"{kind!r} is not a request kind")
        prefix = _encoder.encode({"kind": kind, "request_id": ""})[:-3]
        if len(_request_prefixes) < 256:
            _request_prefixes[kind] = prefix
    head = prefix + _encoder.encode(request_id)
    if not payload:
        return head + b"}\n"
    if "kind" in payload or "request_id" in payload:
        raise ValueError("a request payload may not set 'kind' or 'request_id'")
    return head + b"," + _encoder.encode(payload)[1:] + b"\n"


#: ``{"kind":"<kind>","request_id":`` for each request kind seen: the constant head of a frame.
_request_prefixes: dict[str, bytes] = {}


def _decode(decoder: msgspec.json.Decoder, line: bytes) -> Any:
    try:
        return decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid frame: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None


def decode_worker_frame(line: bytes) -> WorkerFrame:
    """Decode one line from a worker. Raises ProtocolError naming the problem."""
    return _decode(_worker_frame_decoder, line)


def decode_broker_frame(line: bytes) -> BrokerFrame:
    """Decode one line from the broker (used by workers). Raises ProtocolError."""
    return _decode(_broker_frame_decoder, line)


def decode_event(data: bytes) -> BrokerEvent:
    """Decode one broker event. Raises ProtocolError."""
    return _decode(_event_decoder, data)


# ---------------------------------------------------------------- the control channel
#
# A client sends requests ``{"id": ..., "op": ..., ...}`` (the id is the client's own) and
# gets one answer each: ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false,
# "error": {"code", "message"}}``. A subscription's events arrive as ``{"id", "events":
# [...]}`` (in order, batched when several are ready) with the id of the subscribe request. Unknown fields are refused, so a typo is an error.

ControlId = Union[int, str]
RestartModeName = RestartMode


class ControlRequest(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, kw_only=True):
    id: ControlId


class StatusOp(ControlRequest, tag="status", kw_only=True):
    """The broker's pid, version, uptime, agent count, last event seq, request counters."""


class SpawnOp(ControlRequest, tag="spawn", kw_only=True):
    """Start ``command`` as agent ``name``: under the PTY worker unless ``native``."""

    name: str
    command: list[str]
    cwd: str | None = None
    env: dict[str, str] = {}
    native: bool = False
    rows: int = 24
    cols: int = 80
    restart: RestartModeName = "never"


class AgentsOp(ControlRequest, tag="agents", kw_only=True):
    """Every agent the broker knows, running or ended."""


class ReleaseOp(ControlRequest, tag="release", kw_only=True):
    name: str


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
    states only."""

    agent: str | None = None
    states: list[str] | None = None
    limit: int = 100


class DeliveryOp(ControlRequest, tag="delivery", kw_only=True):
    delivery_id: str


class DeadLettersOp(ControlRequest, tag="dead_letters", kw_only=True):
    agent: str | None = None
    limit: int = 100


class RedeliverOp(ControlRequest, tag="redeliver", kw_only=True):
    """Queue a dead letter or failed delivery again (same id, a fresh retry budget)."""

    delivery_id: str


class InputOp(ControlRequest, tag="input", kw_only=True):
    name: str
    data: str


class ResizeOp(ControlRequest, tag="resize", kw_only=True):
    name: str
    rows: int
    cols: int


class SnapshotOp(ControlRequest, tag="snapshot", kw_only=True):
    name: str
    ansi: bool = False
    timeout: float | None = None


class ModeOp(ControlRequest, tag="mode", kw_only=True):
    """Get (no ``set``) or set an agent's injection mode."""

    name: str
    set: InjectMode | None = None


class PendingOp(ControlRequest, tag="pending", kw_only=True):
    name: str


class FlushOp(ControlRequest, tag="flush", kw_only=True):
    name: str


class LogsOp(ControlRequest, tag="logs", kw_only=True):
    """The last ``lines`` lines the agent's worker wrote to stderr."""

    name: str
    lines: int = 100


class SubscribeOp(ControlRequest, tag="subscribe", kw_only=True):
    """Stream events numbered above ``since`` (None: from now), optionally only one agent's
    or only some kinds. Answered at once with ``{"last_seq"}``; events follow."""

    since: int | None = None
    agent: str | None = None
    kinds: list[str] | None = None


class UnsubscribeOp(ControlRequest, tag="unsubscribe", kw_only=True):
    subscription: ControlId


class PruneOp(ControlRequest, tag="prune", kw_only=True):
    """Delete ended deliveries and released agents unchanged for ``older_than`` seconds
    (None: the broker's retention)."""

    older_than: float | None = None


class ShutdownOp(ControlRequest, tag="shutdown", kw_only=True):
    """Release every agent and stop the broker; answered before it stops."""


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


ControlOp = Union[
    StatusOp,
    SpawnOp,
    AgentsOp,
    ReleaseOp,
    SendOp,
    DeliveriesOp,
    DeliveryOp,
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
]


# ---------------------------------------------------------------- control results
#
# What the ``result`` of each answer holds; the client returns these Structs.


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
