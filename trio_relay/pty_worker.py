"""The PTY worker: any terminal program as a trio-relay agent.

    python -m trio_relay.pty_worker [options] -- CMD [ARGS...]

runs CMD in a pseudo-terminal (its own session, the PTY as its controlling terminal,
``TERM=xterm-256color``, 24x80 unless told otherwise) and speaks the worker protocol on
stdin/stdout; stderr is its log. See ``--help`` for the options.

What it does:

- models the screen (:mod:`trio_relay.screen`) and answers the terminal queries that
  full-screen programs block on (cursor position, device attributes, colours);
- reports the raw output as ``output`` frames, coalesced (at most 16 ms or 4 KiB each), UTF-8
  safe across reads, with byte offsets; ``ready`` once CMD's output has been quiet for
  ``--settle`` seconds (or ``--prompt`` matched the screen); ``idle`` after ``--idle`` seconds
  of silence with no delivery queued or in flight;
- takes ``write_input`` (raw keys; acknowledged when it carries a ``request_id``), ``resize``,
  and the requests ``ping``, ``snapshot``, ``mode``, ``pending`` and ``flush``;
- types ``deliver`` frames into the terminal one at a time, in order, once ready (format and
  echo matching in :mod:`trio_relay.injection`), paced by an adaptive throttle
  (:mod:`trio_relay.throttle`), and reports ``delivery_injected`` then ``delivery_verified``
  (``echo``, or ``timeout_fallback`` with a reason after ``--verify-timeout`` seconds) or
  ``delivery_failed``. A delivery id is typed at most once per worker;
- when CMD exits: reads its output to the end (EIO on the master is end of file), kills what
  is left of its session, reports ``exited`` with CMD's own code or signal and the final
  screen, and exits with CMD's code (128 + signal if it was killed);
- on ``shutdown``, SIGTERM, SIGHUP or end of file on stdin (the broker is gone): SIGHUP to
  CMD's session, SIGKILL after ``--kill-grace`` seconds, then as above.

It uses no Trio: one thread, ``selectors`` and named deadlines, so that the wrapper stays
small next to the program it wraps (see the README for the measured figures).
"""

from __future__ import annotations

if __name__ == "__main__":  # before pyte is imported: see trio_relay.termwidth
    from . import termwidth

    termwidth.install()

import codecs
import errno
import os
import re
import selectors
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from .errors import ProtocolError
from .framing import LineSplitter, OversizedLine
from .injection import (
    MODES,
    Delivery,
    DeliveryBook,
    EchoMatcher,
    InjectMode,
    Settled,
    format_message,
)
from .protocol import (
    PROTOCOL_VERSION,
    BrokerHello,
    Deliver,
    DeliveryFailed,
    DeliveryInjected,
    DeliveryVerified,
    ErrorInfo,
    Exited,
    Flush,
    Idle,
    Mode,
    Output,
    Pending,
    Ping,
    Ready,
    Resize,
    Response,
    Shutdown,
    Snapshot,
    WorkerHello,
    WriteInput,
    decode_broker_frame,
    encode,
)
from .ptyproc import PtyProcess
from .screen import TerminalScreen
from .throttle import InjectionThrottle, Outcome

COALESCE_SECONDS = 0.016
COALESCE_BYTES = 4096
READ_SIZE = 4096
DRAIN_SECONDS = 1.0  # after CMD exited: how long to wait for the rest of its output
MAX_SIZE = 1000
BRACKETED_PASTE = ("\x1b[200~", "\x1b[201~")
REQUEST_KINDS = frozenset({"ping", "snapshot", "mode", "pending", "flush", "write_input"})
KNOWN_KINDS = REQUEST_KINDS | {"hello", "shutdown", "resize", "deliver"}


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """What ``python -m trio_relay.pty_worker`` was asked to do (see :func:`parse_args`)."""

    argv: list[str]
    rows: int = 24
    cols: int = 80
    term: str = "xterm-256color"
    cwd: str | None = None
    settle: float = 0.25
    prompt: re.Pattern[str] | None = None
    ready_timeout: float = 15.0
    idle: float = 2.0
    mode: InjectMode = "auto_inject"
    verify_timeout: float = 5.0
    chunk: int = 128
    key_delay: float = 0.005
    enter_delay: float = 0.03
    kill_grace: float = 1.0


class _Envelope(msgspec.Struct):
    """The two fields needed to answer a frame that did not decode."""

    kind: Any = None
    request_id: Any = None


_envelope = msgspec.json.Decoder(_Envelope)


class _Input:
    """Bytes queued for the terminal; ``done(error)`` runs once they are all written."""

    __slots__ = ("data", "done", "owner")

    def __init__(
        self, data: bytes, done: Callable[[OSError | None], None] | None, owner: str | None
    ) -> None:
        self.data = memoryview(data)
        self.done = done
        self.owner = owner


class PtyWorker:
    """The worker's state and event loop around one running :class:`PtyProcess`."""

    def __init__(
        self, options: Options, proc: PtyProcess, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.opts = options
        self.proc = proc
        self.clock = clock
        self.screen = TerminalScreen(options.rows, options.cols)
        self.book = DeliveryBook(options.mode)
        self.throttle = InjectionThrottle(clock=clock)
        self.selector = selectors.DefaultSelector()
        self.deadlines: dict[str, float] = {}
        self.out: list[bytes] = []
        self.stdout_broken = False
        self.splitter = LineSplitter()
        # terminal input
        self.input: deque[_Input] = deque()
        self.master_open = True
        # output
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.fed = 0  # bytes read from the master
        self.emitted = 0  # byte offset where the next output frame starts
        self.batch: list[str] = []
        self.batch_bytes = 0
        self.parse_errors_logged = 0
        # lifecycle
        self.ready = False
        self.idle_sent = False
        self.stopping = False
        self.exit_code: int | None = None
        # the delivery in flight
        self.matcher: EchoMatcher | None = None
        self.typing: deque[tuple[float, bytes]] = deque()
        self.injected_at = 0.0
        self._handlers: dict[str, Callable[[], None]] = {
            "settle": self._on_settled,
            "ready_timeout": self._on_ready_timeout,
            "idle": self._on_idle,
            "coalesce": self._flush_output,
            "throttle": self._pump,
            "key": self._type_next,
            "typing": self._on_typing_timeout,
            "verify": self._on_verify_timeout,
            "kill": self._on_kill_grace,
            "drain": self._on_drain_timeout,
        }

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        """Serve until CMD has exited and been reported; return the worker's exit code."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, _note_signal)
        try:
            self.selector.register(0, selectors.EVENT_READ, self._on_stdin)
            self.selector.register(self.proc.master, selectors.EVENT_READ, self._on_master)
            self.selector.register(self.proc.pidfd, selectors.EVENT_READ, self._on_program_exit)
            self.selector.register(wake_r, selectors.EVENT_READ, lambda: self._on_signal(wake_r))
            self.send(
                WorkerHello(
                    protocol=PROTOCOL_VERSION, worker="pty", pid=os.getpid(),
                    program_pid=self.proc.pid,
                )
            )
            now = self.clock()
            self.deadlines["settle"] = now + self.opts.settle
            self.deadlines["ready_timeout"] = now + self.opts.ready_timeout
            while self.exit_code is None:
                for key, mask in self.selector.select(self._timeout()):
                    if key.fd == self.proc.master:
                        self._on_master(mask)
                    else:
                        key.data()
                self._run_due()
                self._flush_stdout()
            return self.exit_code
        finally:
            signal.set_wakeup_fd(-1)
            self.selector.close()
            os.close(wake_r)
            os.close(wake_w)

    def _timeout(self) -> float | None:
        if not self.deadlines:
            return None
        return max(0.0, min(self.deadlines.values()) - self.clock())

    def _run_due(self) -> None:
        now = self.clock()
        for name, when in sorted(self.deadlines.items(), key=lambda item: item[1]):
            if when <= now and self.deadlines.get(name) == when:
                del self.deadlines[name]
                self._handlers[name]()

    def send(self, frame: Any) -> None:
        self.out.append(encode(frame))

    def _flush_stdout(self) -> None:
        if not self.out:
            return
        data = memoryview(b"".join(self.out))
        self.out.clear()
        if self.stdout_broken:
            return
        try:
            while data:
                data = data[os.write(1, data) :]
        except BrokenPipeError:
            self.stdout_broken = True
            log("stdout is closed: the broker is gone; dropping frames")

    # ------------------------------------------------------------ broker -> worker

    def _on_stdin(self) -> None:
        chunk = os.read(0, 65536)
        if not chunk:
            self.selector.unregister(0)
            lines = self.splitter.feed(b"\n") if self.splitter.buffered else []
            for line in lines:
                self._handle_line(line)
            self.begin_stop("stdin closed: the broker is gone")
            return
        for line in self.splitter.feed(chunk):
            self._handle_line(line)

    def _handle_line(self, line: bytes | OversizedLine) -> None:
        if isinstance(line, OversizedLine):
            log(f"discarded an oversized frame ({line.length} bytes): {line.head[:80]!r}")
            return
        try:
            frame = decode_broker_frame(line)
        except ProtocolError as exc:
            self._bad_frame(line, exc)
            return
        kind = type(frame)
        if kind is Deliver:
            self._on_deliver(frame)
        elif kind is WriteInput:
            self._on_write_input(frame)
        elif kind is Resize:
            self._on_resize(frame)
        elif kind is Shutdown:
            self.begin_stop("shutdown requested")
        elif kind is BrokerHello:
            if frame.protocol != PROTOCOL_VERSION:
                log(f"the broker speaks protocol {frame.protocol}; this worker {PROTOCOL_VERSION}")
        else:
            self._on_request(frame)

    def _bad_frame(self, line: bytes, exc: ProtocolError) -> None:
        log(f"bad frame: {exc}: {line[:200]!r}")
        try:
            envelope = _envelope.decode(line)
        except msgspec.MsgspecError:
            return  # not even an object with a kind: nothing to answer
        rid, kind = envelope.request_id, envelope.kind
        if not isinstance(rid, str) or not rid:
            return
        if kind not in KNOWN_KINDS:
            self.answer(rid, error=ErrorInfo("unknown_kind", f"unknown request kind {kind!r}"))
        else:
            self.answer(rid, error=ErrorInfo("bad_request", str(exc)))

    def answer(self, rid: str, payload: Any = None, error: ErrorInfo | None = None) -> None:
        self.send(Response(request_id=rid, payload=payload, error=error))

    def _on_request(self, frame: Any) -> None:
        rid = frame.request_id
        kind = type(frame)
        if kind is Ping:
            self.answer(rid, {"data": frame.data})
        elif kind is Snapshot:
            self._flush_output()
            payload = self.screen.snapshot(frame.ansi)
            payload["offset"] = self.screen_offset
            self.answer(rid, payload)
        elif kind is Mode:
            if frame.set is not None:
                released = self.book.set_mode(frame.set)
                log(f"mode {frame.set}" + (f"; {released} held deliveries queued" if released else ""))
                self._pump()
            self.answer(rid, {"mode": self.book.mode})
        elif kind is Pending:
            self.answer(rid, {"mode": self.book.mode, "deliveries": self.book.pending()})
        elif kind is Flush:
            count = self.book.flush()
            self._pump()
            self.answer(rid, {"count": count})
        else:  # pragma: no cover - every BrokerFrame kind is dispatched above
            raise AssertionError(f"unhandled frame {frame!r}")

    def _on_write_input(self, frame: WriteInput) -> None:
        rid = frame.request_id
        try:
            data = frame.data.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:
            log(f"write_input: {exc}")
            if rid is not None:
                self.answer(rid, error=ErrorInfo("bad_request", f"cannot encode input: {exc}"))
            return
        if not self.master_open:
            log("write_input: the terminal is closed")
            if rid is not None:
                self.answer(rid, error=ErrorInfo("terminal_closed", "the terminal is closed"))
            return

        def done(error: OSError | None) -> None:
            if rid is None:
                return
            if error is None:
                self.answer(rid, {"bytes": len(data)})
            else:
                self.answer(rid, error=ErrorInfo("write_failed", f"cannot write: {error}"))

        self.queue_input(data, done)

    def _on_resize(self, frame: Resize) -> None:
        if not (1 <= frame.rows <= MAX_SIZE and 1 <= frame.cols <= MAX_SIZE):
            log(f"resize to {frame.rows}x{frame.cols} refused: out of range 1..{MAX_SIZE}")
            return
        self.screen.resize(frame.rows, frame.cols)
        if self.master_open:
            self.proc.resize(frame.rows, frame.cols)

    # ------------------------------------------------------------ the terminal

    def queue_input(
        self,
        data: bytes,
        done: Callable[[OSError | None], None] | None = None,
        owner: str | None = None,
    ) -> None:
        """Write ``data`` to the terminal after what is already queued; ``done`` is called
        once it is all written, or with the error if it cannot be."""
        self.input.append(_Input(data, done, owner))
        self._write_input()

    def _write_input(self) -> None:
        while self.input and self.master_open:
            item = self.input[0]
            try:
                written = os.write(self.proc.master, item.data)
            except BlockingIOError:
                break
            except OSError as exc:
                self._fail_input(exc)
                return
            item.data = item.data[written:]
            if not item.data:
                self.input.popleft()
                if item.done is not None:
                    item.done(None)
        self._watch_master()

    def _fail_input(self, error: OSError) -> None:
        if self.input:
            log(f"cannot write to the terminal: {error}")
        while self.input:
            item = self.input.popleft()
            if item.done is not None:
                item.done(error)

    def _watch_master(self) -> None:
        if self.master_open:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.input else 0)
            self.selector.modify(self.proc.master, events, self._on_master)

    def _on_master(self, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read_master()
        if mask & selectors.EVENT_WRITE and self.master_open:
            self._write_input()

    def _read_master(self) -> None:
        for _ in range(16):
            try:
                data = os.read(self.proc.master, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                data = b""
            if not data:
                self._on_master_eof()
                return
            self._on_output(data)

    def _on_master_eof(self) -> None:
        self.master_open = False
        self.selector.unregister(self.proc.master)
        self._fail_input(OSError(errno.EIO, "the terminal is closed"))
        if self.proc.returncode is not None:
            self._finish()
        else:
            log("every process closed the terminal; waiting for the program to exit")

    def _on_output(self, data: bytes) -> None:
        now = self.clock()
        if self.batch and self.batch_bytes + len(data) > COALESCE_BYTES:
            self._flush_output()
        if not self.batch:
            self.deadlines.setdefault("coalesce", now + COALESCE_SECONDS)
        self.fed += len(data)
        text = self.decoder.decode(data)
        self._apply(text)
        self.batch.append(text)
        self.batch_bytes += len(data)
        if self.batch_bytes >= COALESCE_BYTES:
            self._flush_output()
        if not self.ready:
            self.deadlines["settle"] = now + self.opts.settle
        else:
            self._arm_idle(now)

    def _apply(self, text: str) -> None:
        """Feed decoded output to the screen; answer its queries; look for the echo and the
        prompt."""
        for answer in self.screen.feed(text):
            self.queue_input(answer.encode())
        if self.screen.parse_errors > self.parse_errors_logged:
            if self.parse_errors_logged < 20:
                log(f"screen model skipped a sequence: {self.screen.last_parse_error}")
            self.parse_errors_logged = self.screen.parse_errors
        if self.matcher is not None and self.book.current is not None:
            if self.book.current.state == "verifying" and (
                self.matcher.found or self.matcher.check_text(self.screen.text())
            ):
                self._settle(Settled("echo"))
        if not self.ready and self.opts.prompt is not None:
            if self.opts.prompt.search(self.screen.text()):
                self._become_ready("prompt matched")

    @property
    def decoded(self) -> int:
        """Byte offset up to which output has been decoded to text."""
        return self.fed - len(self.decoder.getstate()[0])

    @property
    def screen_offset(self) -> int:
        """Byte offset of the output the screen reflects (held-back query text is ASCII)."""
        return self.decoded - self.screen.held

    def _flush_output(self) -> None:
        self.deadlines.pop("coalesce", None)
        data = "".join(self.batch)
        self.batch.clear()
        self.batch_bytes = 0
        if data:
            self.send(Output(offset=self.emitted, data=data))
        self.emitted = self.decoded

    # ------------------------------------------------------------ lifecycle

    def _on_settled(self) -> None:
        self._become_ready(f"quiet for {self.opts.settle:g} s")

    def _on_ready_timeout(self) -> None:
        self._become_ready(f"still not quiet after {self.opts.ready_timeout:g} s")

    def _become_ready(self, why: str) -> None:
        if self.ready:
            return
        self.ready = True
        self.deadlines.pop("settle", None)
        self.deadlines.pop("ready_timeout", None)
        log(f"ready: {why}")
        self.send(Ready())
        self._arm_idle(self.clock())
        self._pump()

    @property
    def alive(self) -> bool:
        """CMD runs and nobody asked it to stop."""
        return not self.stopping and self.proc.returncode is None

    def _arm_idle(self, now: float) -> None:
        if self.ready and self.alive:
            self.idle_sent = False
            self.deadlines["idle"] = now + self.opts.idle

    def _on_idle(self) -> None:
        if self.book.busy:
            return  # re-armed when the delivery in flight settles
        if not self.idle_sent:
            self.idle_sent = True
            self.send(Idle())

    def _on_signal(self, fd: int) -> None:
        for signum in os.read(fd, 64):
            self.begin_stop(f"received {signal.Signals(signum).name}")

    def begin_stop(self, reason: str) -> None:
        """Stop CMD: SIGHUP to its session now, SIGKILL after the kill grace."""
        if self.stopping:
            return
        self.stopping = True
        self.deadlines.pop("idle", None)
        if self.proc.returncode is not None:
            return
        log(f"stopping the program: {reason}")
        self.proc.signal_session(signal.SIGHUP)
        self.proc.signal_session(signal.SIGCONT)
        self.deadlines["kill"] = self.clock() + self.opts.kill_grace

    def _on_kill_grace(self) -> None:
        if self.proc.returncode is None:
            log(f"the program outlived SIGHUP by {self.opts.kill_grace:g} s; sending SIGKILL")
            self.proc.signal_session(signal.SIGKILL)

    def _on_program_exit(self) -> None:
        if self.proc.poll() is None:
            return  # pidfd readiness without a status: wait for the next one
        self.selector.unregister(self.proc.pidfd)
        self.deadlines.pop("kill", None)
        self.deadlines.pop("idle", None)
        left = self.proc.signal_session(signal.SIGKILL)
        if left:
            log(f"killed {left} process(es) the program left in its session")
        if not self.master_open:
            self._finish()
        else:
            self.deadlines["drain"] = self.clock() + DRAIN_SECONDS

    def _on_drain_timeout(self) -> None:
        log(f"the terminal stayed open {DRAIN_SECONDS:g} s after the program exited")
        self._finish()

    def _finish(self) -> None:
        """Report the end: remaining output, the delivery in flight, ``exited``."""
        self.deadlines.clear()
        tail = self.decoder.decode(b"", final=True)
        if tail:
            self._apply(tail)
            self.batch.append(tail)
        self.screen.finish()
        self._flush_output()
        current = self.book.current
        if current is not None:
            if current.state == "verifying":
                if self.matcher is not None and self.matcher.check_text(self.screen.text()):
                    self._settle(Settled("echo"))
                else:
                    self._settle(
                        Settled(
                            "timeout_fallback",
                            "the program exited before the message text appeared on screen",
                        )
                    )
            else:
                self._settle(Settled("failed", "the program exited while the message was typed"))
        for delivery in (*self.book.queue, *self.book.held):
            log(f"delivery {delivery.delivery_id} was not typed: the program exited")
        returncode = self.proc.returncode
        assert returncode is not None
        code, sig = (None, -returncode) if returncode < 0 else (returncode, None)
        snapshot = self.screen.snapshot()
        snapshot["offset"] = self.screen_offset
        self.send(Exited(code=code, signal=sig, snapshot=snapshot))
        log(f"the program {'was killed by signal %d' % sig if sig else 'exited with code %d' % code}")
        self.exit_code = code if code is not None else 128 + (sig or 0)

    # ------------------------------------------------------------ deliveries

    def _on_deliver(self, frame: Deliver) -> None:
        did = frame.delivery_id
        if self.book.known(did):
            settled = self.book.settled(did)
            if settled is None:
                log(f"delivery {did} is already pending; duplicate ignored")
            else:
                log(f"delivery {did} was already {settled.verification}; acknowledged again")
                self._announce(did, settled, injected=False)
            return
        if not self.alive:
            log(f"delivery {did} not accepted: the program is stopping or has exited")
            return
        self.book.add(Delivery(did, frame.sender, frame.body, frame.thread))
        self._pump()

    def _announce(self, did: str, settled: Settled, injected: bool) -> None:
        """Report an outcome; ``injected``: delivery_injected was already sent for it."""
        if settled.verification == "failed":
            self.send(DeliveryFailed(delivery_id=did, reason=settled.reason or "failed"))
        else:
            if not injected:
                self.send(DeliveryInjected(delivery_id=did))
            self.send(
                DeliveryVerified(
                    delivery_id=did, verification=settled.verification, reason=settled.reason
                )
            )

    def _pump(self) -> None:
        """Start the next injection if it is time: ready, nothing in flight, throttle open."""
        if not (self.ready and self.alive and self.master_open) or self.book.current:
            return
        if not self.book.queue:
            return
        wait = self.throttle.wait_time()
        if wait > 0:
            self.deadlines["throttle"] = self.clock() + wait
            return
        delivery = self.book.next()
        assert delivery is not None
        text = format_message(delivery.sender, delivery.delivery_id, delivery.body)
        self.matcher = EchoMatcher(text)
        self.screen.on_draw = self.matcher.feed
        size = self.opts.chunk
        pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
        if self.screen.bracketed_paste:
            pieces[0] = BRACKETED_PASTE[0] + pieces[0]
            pieces[-1] += BRACKETED_PASTE[1]
        self.typing.clear()
        self.typing.extend((self.opts.key_delay, piece.encode()) for piece in pieces)
        self.typing.append((self.opts.enter_delay, b"\r"))
        self.deadlines["typing"] = self.clock() + self.opts.verify_timeout
        self._type_next()

    def _type_next(self) -> None:
        current = self.book.current
        if current is None or not self.typing:
            return
        _, data = self.typing.popleft()
        self.queue_input(data, self._typed, owner=current.delivery_id)

    def _typed(self, error: OSError | None) -> None:
        current = self.book.current
        if current is None or current.state != "typing":
            return
        if error is not None:
            self._settle(Settled("failed", f"cannot write to the terminal: {error}"))
            return
        if self.typing:
            self.deadlines["key"] = self.clock() + self.typing[0][0]
            return
        self.deadlines.pop("typing", None)
        current.state = "verifying"
        self.send(DeliveryInjected(delivery_id=current.delivery_id))
        self.injected_at = self.clock()
        if self.matcher is not None and (
            self.matcher.found or self.matcher.check_text(self.screen.text())
        ):
            self._settle(Settled("echo"))
        else:
            self.deadlines["verify"] = self.injected_at + self.opts.verify_timeout

    def _on_typing_timeout(self) -> None:
        current = self.book.current
        if current is None or current.state != "typing":
            return
        dropped = [item for item in self.input if item.owner == current.delivery_id]
        for item in dropped:
            self.input.remove(item)
        self._watch_master()
        self._settle(
            Settled(
                "failed",
                f"could not type the message within {self.opts.verify_timeout:g} s: "
                "the program is not reading its input",
            )
        )

    def _on_verify_timeout(self) -> None:
        current = self.book.current
        if current is None or current.state != "verifying" or self.matcher is None:
            return
        if self.matcher.check_text(self.screen.text()):
            self._settle(Settled("echo"))
            return
        seen = self.matcher.seen
        what = f"{seen} other characters were drawn" if seen else "nothing was drawn"
        self._settle(
            Settled(
                "timeout_fallback",
                f"the message text did not appear on screen within "
                f"{self.opts.verify_timeout:g} s ({what})",
            )
        )

    def _settle(self, settled: Settled) -> None:
        delivery = self.book.settle(settled)
        self.screen.on_draw = None
        self.matcher = None
        self.typing.clear()
        for name in ("key", "typing", "verify"):
            self.deadlines.pop(name, None)
        if settled.verification == "failed":
            self.throttle.record(Outcome.FAILED)
            log(f"delivery {delivery.delivery_id} failed: {settled.reason}")
        elif settled.verification == "echo":
            self.throttle.record(Outcome.SUCCESS)
        else:
            self.throttle.record(Outcome.UNVERIFIED)
            log(f"delivery {delivery.delivery_id} unverified: {settled.reason}")
        self._announce(delivery.delivery_id, settled, injected=True)
        self._arm_idle(self.clock())
        self._pump()


def _note_signal(signum: int, frame: object) -> None:
    """Signal handler: nothing to do here; the wakeup fd tells the loop which signal."""


def log(message: str) -> None:
    """One line to stderr, the worker's log (the broker keeps the last lines)."""
    try:
        sys.stderr.write(f"pty_worker: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass  # stderr is gone with the broker; there is nowhere left to report to


class UsageError(Exception):
    """A bad command line."""


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must not be negative")
    return value


def _size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_SIZE:
        raise ValueError(f"must be in 1..{MAX_SIZE}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _mode(text: str) -> str:
    if text not in MODES:
        raise ValueError(f"must be one of {', '.join(MODES)}")
    return text


def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text, re.MULTILINE)


# option -> (Options field, parser, help). A hand-written parser rather than argparse, which
# would cost every agent 0.4 MB of RSS for a command line read once.
OPTIONS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "--rows": ("rows", _size, "terminal rows (default 24)"),
    "--cols": ("cols", _size, "terminal columns (default 80)"),
    "--term": ("term", str, "TERM for CMD (default xterm-256color)"),
    "--cwd": ("cwd", str, "working directory for CMD (default: the worker's)"),
    "--settle": ("settle", _positive,
                 "ready once the output was quiet this long, in seconds (default 0.25)"),
    "--prompt": ("prompt", _pattern,
                 "ready as soon as this regular expression matches the screen"),
    "--ready-timeout": ("ready_timeout", _positive,
                        "ready after this many seconds even if never quiet (default 15)"),
    "--idle": ("idle", _positive,
               "idle after this many seconds of silence with nothing pending (default 2)"),
    "--mode": ("mode", _mode, "injection mode at start: auto_inject (default) or hold"),
    "--verify-timeout": ("verify_timeout", _positive,
                         "seconds to wait for a typed message to appear (default 5)"),
    "--chunk": ("chunk", _count, "characters typed per write when injecting (default 128)"),
    "--key-delay": ("key_delay", _non_negative,
                    "pause between typed chunks, in seconds (default 0.005)"),
    "--enter-delay": ("enter_delay", _non_negative,
                      "pause before the Enter that ends a message, in seconds (default 0.03)"),
    "--kill-grace": ("kill_grace", _positive,
                     "seconds between SIGHUP and SIGKILL when stopping CMD (default 1)"),
}

USAGE = "usage: python -m trio_relay.pty_worker [options] -- CMD [ARGS...]"


def help_text() -> str:
    lines = [
        USAGE, "",
        "Run CMD in a pseudo-terminal as a trio-relay agent (the worker protocol on",
        "stdin/stdout, a log on stderr).", "", "options:",
        f"  {'-h, --help':26s}show this help and exit",
    ]
    lines += [f"  {name + ' VALUE':26s}{text}" for name, (_, _, text) in OPTIONS.items()]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> Options:
    """Parse the command line (``--name value`` or ``--name=value``, then ``--`` and the
    command). Raises UsageError naming the problem."""
    values: dict[str, Any] = {}
    rest = list(argv)
    while rest and rest[0] != "--" and rest[0].startswith("-"):
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if name not in OPTIONS:
            raise UsageError(f"unknown option {name!r}")
        if not eq:
            if not rest:
                raise UsageError(f"{name} needs a value")
            value = rest.pop(0)
        field, convert, _ = OPTIONS[name]
        try:
            values[field] = convert(value)
        except (ValueError, re.error) as exc:
            raise UsageError(f"{name} {value!r}: {exc}") from None
    if rest[:1] == ["--"]:
        rest.pop(0)
    if not rest:
        raise UsageError("no command: give it after --")
    return Options(argv=rest, **values)


def main(argv: list[str] | None = None) -> int:
    """Run the worker; returns CMD's exit code (128 + signal), 127 if CMD cannot start, 2 for
    a bad command line."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        print(help_text())
        return 0
    try:
        options = parse_args(args)
    except UsageError as exc:
        print(f"{USAGE}\npty_worker: error: {exc}", file=sys.stderr)
        return 2
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = options.term
    try:
        proc = PtyProcess.spawn(
            options.argv, rows=options.rows, cols=options.cols, env=env, cwd=options.cwd
        )
    except OSError as exc:
        log(f"cannot run {exc.filename!r}: {exc.strerror}")
        return 127
    try:
        return PtyWorker(options, proc).run()
    except BaseException:
        proc.signal_session(signal.SIGKILL)  # a fault of ours must not leave CMD behind
        raise
    finally:
        proc.close()


if __name__ == "__main__":
    sys.exit(main())
