"""What the PTY worker does with each line from the broker.

:class:`BrokerFrames` decodes a line and acts on it: ``deliver`` (to the injector),
``write_input`` (raw keys, acknowledged when it carries a ``request_id``), ``resize``,
``shutdown``, ``hello``, and the requests ``ping``, ``snapshot``, ``mode``, ``pending`` and
``flush``, each answered with one ``response``. A line that is not a frame this worker takes
is counted and logged, and answered (``unknown_kind`` or ``bad_request``) if it names a
request id. Sans-IO: it acts on the :class:`~trio_relay.worker.pty.core.PtyCore` it serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from trio_relay.errors import ProtocolError
from trio_relay.wire import (
    PROTOCOL_VERSION,
    BrokerHello,
    Deliver,
    ErrorInfo,
    Flush,
    Mode,
    Pending,
    Ping,
    Resize,
    Shutdown,
    Snapshot,
    WriteInput,
    decode_broker_frame,
)
from trio_relay.wire.lines import OversizedLine
from trio_relay.worker.pty.options import MAX_SIZE

if TYPE_CHECKING:
    from trio_relay.worker.pty.core import PtyCore

REQUEST_KINDS = frozenset({"ping", "snapshot", "mode", "pending", "flush", "write_input"})
KNOWN_KINDS = REQUEST_KINDS | {"hello", "shutdown", "resize", "deliver"}
TERMINAL_CLOSED = "the terminal is closed"


class _Envelope(msgspec.Struct):
    """The two fields needed to answer a frame that did not decode."""

    kind: Any = None
    request_id: Any = None


_envelope = msgspec.json.Decoder(_Envelope)


class BrokerFrames:
    """Acts on the broker's frames for one :class:`PtyCore`."""

    def __init__(self, core: PtyCore) -> None:
        self.core = core
        self.outbox = core.outbox
        self.bad_frames = 0  # protocol errors: lines that are not a frame this worker takes

    def handle(self, line: bytes | OversizedLine, now: float) -> None:
        core = self.core
        if isinstance(line, OversizedLine):
            self.bad_frames += 1
            self.outbox.log(
                f"bad frame ({self.bad_frames} so far): discarded an oversized frame "
                f"({line.length} bytes): {line.head[:80]!r}"
            )
            return
        try:
            frame = decode_broker_frame(line)
        except ProtocolError as exc:
            self._bad_frame(line, exc)
            return
        kind = type(frame)
        if kind is Deliver:
            core.injector.deliver(frame, now, accepting=core.alive)
        elif kind is WriteInput:
            self._write_input(frame)
        elif kind is Resize:
            self._resize(frame)
        elif kind is Shutdown:
            core.begin_stop("shutdown requested", now)
        elif kind is BrokerHello:
            if frame.protocol != PROTOCOL_VERSION:
                self.outbox.log(
                    f"the broker speaks protocol {frame.protocol}; this worker {PROTOCOL_VERSION}"
                )
        else:
            self._request(frame, now)

    def _bad_frame(self, line: bytes, exc: ProtocolError) -> None:
        self.bad_frames += 1
        self.outbox.log(f"bad frame ({self.bad_frames} so far): {exc}: {line[:200]!r}")
        try:
            envelope = _envelope.decode(line)
        except msgspec.MsgspecError:
            return  # not even an object with a kind: nothing to answer
        rid, kind = envelope.request_id, envelope.kind
        if not isinstance(rid, str) or not rid:
            return
        if kind not in KNOWN_KINDS:
            self.outbox.answer(
                rid, error=ErrorInfo("unknown_kind", f"unknown request kind {kind!r}")
            )
        else:
            self.outbox.answer(rid, error=ErrorInfo("bad_request", str(exc)))

    def _request(self, frame: Any, now: float) -> None:
        core, answer = self.core, self.outbox.answer
        book = core.injector.book
        rid = frame.request_id
        kind = type(frame)
        if kind is Ping:
            answer(rid, {"data": frame.data})
        elif kind is Snapshot:
            core.output_stream.flush()
            payload = core.screen.snapshot(frame.ansi)
            payload["offset"] = core.screen_offset
            answer(rid, payload)
        elif kind is Mode:
            if frame.set is not None:
                released = book.set_mode(frame.set)
                queued = f"; {released} held deliveries queued" if released else ""
                self.outbox.log(f"mode {frame.set}{queued}")
                core.injector.pump(now)
            answer(rid, {"mode": book.mode})
        elif kind is Pending:
            answer(rid, {"mode": book.mode, "deliveries": book.pending()})
        elif kind is Flush:
            count = book.flush()
            core.injector.pump(now)
            answer(rid, {"count": count})
        else:  # pragma: no cover - every BrokerFrame kind is dispatched above
            raise AssertionError(f"unhandled frame {frame!r}")

    def _write_input(self, frame: WriteInput) -> None:
        rid, answer, log = frame.request_id, self.outbox.answer, self.outbox.log
        try:
            data = frame.data.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:
            log(f"write_input: {exc}")
            if rid is not None:
                answer(rid, error=ErrorInfo("bad_request", f"cannot encode input: {exc}"))
            return
        if not self.core.terminal_open:
            log(f"write_input: {TERMINAL_CLOSED}")
            if rid is not None:
                answer(rid, error=ErrorInfo("terminal_closed", TERMINAL_CLOSED))
            return

        def done(error: OSError | None, now: float) -> None:
            if rid is None:
                return
            if error is None:
                answer(rid, {"bytes": len(data)})
            else:
                answer(rid, error=ErrorInfo("write_failed", f"cannot write: {error}"))

        self.core.injector.user_input(data, done)

    def _resize(self, frame: Resize) -> None:
        rows, cols = frame.rows, frame.cols
        if not (1 <= rows <= MAX_SIZE and 1 <= cols <= MAX_SIZE):
            self.outbox.log(f"resize to {rows}x{cols} refused: out of range 1..{MAX_SIZE}")
            return
        self.core.screen.resize(rows, cols)
        if self.core.terminal_open:
            self.outbox.program.append((rows, cols))
