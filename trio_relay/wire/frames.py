"""The worker protocol: the frames between the broker and a worker, as msgspec Structs.

Frames travel as newline-delimited JSON on a worker's stdin (broker -> worker) and stdout
(worker -> broker). Every frame is one JSON object tagged by ``kind``. Unknown fields are
ignored (so either side may add optional fields); an unknown ``kind``, a wrong type or a
missing field is a :class:`~trio_relay.errors.ProtocolError` naming the field.

- Fire-and-forget frames carry no ``request_id``.
- A request carries a ``request_id`` minted by the broker; its one answer is a
  :class:`Response`. The broker sends requests generically (:func:`encode_request`), so a
  native worker may implement request kinds of its own; the ones defined here are those the
  PTY worker implements.
- Worker events (``ready``, ``output``, ...) carry no ``request_id``.

Pure data and functions; no I/O. Of the three protocols, the PTY worker needs only this one.
"""

from __future__ import annotations

from typing import Any, Union, get_args

import msgspec

from trio_relay.wire.codec import ENCODER, decode_with
from trio_relay.wire.vocabulary import Activity, InjectMode, Verification

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


class ActivityChanged(Frame, tag="activity"):
    """What the agent is doing changed (``activity``, with ``text``: the screen text that
    decided it, or a dialog's message for a person), or why deliveries wait did
    (``waiting``: None when they are typed as they come)."""

    activity: Activity
    text: str = ""
    waiting: str | None = None


class Exited(Frame, tag="exited"):
    """The wrapped program itself exited (a wrapper reports this before it exits)."""

    code: int | None = None
    signal: int | None = None
    #: The final screen, as a ``snapshot`` request would answer it (the PTY worker).
    snapshot: dict[str, Any] | None = None


class DeliveryInjected(Frame, tag="delivery_injected"):
    delivery_id: str


class DeliveryVerified(Frame, tag="delivery_verified"):
    """``submitted`` or ``echo`` (verified), ``timeout_fallback`` or ``not_submitted``
    (unverified, see reason): :data:`~trio_relay.wire.vocabulary.Verification`."""

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
    ActivityChanged,
    Exited,
    DeliveryInjected,
    DeliveryVerified,
    DeliveryFailed,
]


#: Kinds that are never requests, so :func:`encode_request` refuses them: the broker's frames
#: that have no ``request_id``, and the answer itself.
NOT_REQUEST_KINDS = frozenset(
    [
        *(
            frame.__struct_config__.tag
            for frame in get_args(BrokerFrame)
            if "request_id" not in frame.__struct_fields__
        ),
        Response.__struct_config__.tag,
    ]
)


# ---------------------------------------------------------------- encoding and decoding

#: ``{"kind":"<kind>","request_id":`` for each request kind seen: the constant head of a frame.
_request_prefixes: dict[str, bytes] = {}


def encode_request(kind: str, request_id: str, payload: dict[str, Any] | None) -> bytes:
    """Encode a request frame of any kind as one JSON line.

    Raises ValueError if ``kind`` is not a request kind or ``payload`` tries to set
    ``kind`` or ``request_id``.
    """
    prefix = _request_prefixes.get(kind)
    if prefix is None:
        if kind in NOT_REQUEST_KINDS or not kind:
            raise ValueError(f"{kind!r} is not a request kind")
        prefix = ENCODER.encode({"kind": kind, "request_id": ""})[:-3]
        if len(_request_prefixes) < 256:
            _request_prefixes[kind] = prefix
    head = prefix + ENCODER.encode(request_id)
    if not payload:
        return head + b"}\n"
    if "kind" in payload or "request_id" in payload:
        raise ValueError("a request payload may not set 'kind' or 'request_id'")
    return head + b"," + ENCODER.encode(payload)[1:] + b"\n"


_worker_frame_decoder = msgspec.json.Decoder(WorkerFrame)
_broker_frame_decoder = msgspec.json.Decoder(BrokerFrame)


def decode_worker_frame(line: bytes) -> WorkerFrame:
    """Decode one line from a worker. Raises ProtocolError naming the problem."""
    return decode_with(_worker_frame_decoder, line)


def decode_broker_frame(line: bytes) -> BrokerFrame:
    """Decode one line from the broker (used by workers). Raises ProtocolError."""
    return decode_with(_broker_frame_decoder, line)
