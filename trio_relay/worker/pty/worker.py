"""The PTY worker: any terminal program as a trio-relay agent.

    python -m trio_relay.worker.pty [options] -- CMD [ARGS...]

runs CMD in a pseudo-terminal (its own session, the PTY as its controlling terminal,
``TERM=xterm-256color``, 24x80 unless told otherwise) and speaks the worker protocol on
stdin/stdout; stderr is its log. See ``--help`` for the options.

What it does:

- models the screen (:mod:`trio_relay.worker.pty.screen`) and answers the terminal queries that
  full-screen programs block on (cursor position, device attributes, colours);
- reports the raw output as ``output`` frames, coalesced (at most 16 ms or 4 KiB each), UTF-8
  safe across reads, with byte offsets. Offsets count the bytes of the output as reported
  (the UTF-8 of the frames' text): the program's own bytes, except that each byte of
  invalid UTF-8 is reported as U+FFFD and counts its 3 bytes, so ``offset + len(data in
  UTF-8)`` is always the next frame's offset. Output frames are sent as the output is read;
  the screen model (pyte, ~100-200 KB/s) catches up in slices of ~10 ms between the other
  work, so a ``snapshot`` reflects an offset at or behind the last frame sent. While more
  than 128 KiB of frames wait for the broker to read them, or 8 KiB of output waits for the
  screen model, the worker stops reading the terminal (CMD is slowed down) but serves
  stdin, signals and deadlines; ``ready`` once CMD's output has been quiet for
  ``--settle`` seconds (or ``--prompt`` matched the screen); ``idle`` after ``--idle`` seconds
  of silence with no delivery queued or in flight;
- takes ``write_input`` (raw keys; acknowledged when it carries a ``request_id``), ``resize``,
  and the requests ``ping``, ``snapshot``, ``mode``, ``pending`` and ``flush``;
- types ``deliver`` frames into the terminal one at a time, in order, once ready (format and
  echo matching in :mod:`trio_relay.worker.pty.injection`), paced by an adaptive throttle
  (:mod:`trio_relay.worker.pty.throttle`), and reports ``delivery_injected`` then ``delivery_verified``
  (``echo``, or ``timeout_fallback`` with a reason after ``--verify-timeout`` seconds) or
  ``delivery_failed``. A delivery id is typed at most once per worker (one it failed to type
  may be tried again);
- when CMD exits: reads its output to the end (EIO on the master is end of file), kills what
  is left of its session, reports ``exited`` with CMD's own code or signal and the final
  screen, and exits with CMD's code (128 + signal if it was killed). A delivery being typed
  or verified when CMD exits is reported only if its echo is on the final screen; otherwise
  it (like those queued or held) is left unreported, so the broker requeues it for CMD's
  restart (or fails it naming the exit if there is none);
- on ``shutdown``, SIGTERM, SIGHUP or end of file on stdin (the broker is gone): SIGHUP to
  CMD's session, SIGKILL after ``--kill-grace`` seconds, then as above.

It uses no Trio: one thread, ``selectors`` and named deadlines, so that the wrapper stays
small next to the program it wraps (see the README for the measured figures).
"""

from __future__ import annotations

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

from trio_relay.errors import ProtocolError
from trio_relay.wire import (
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
from trio_relay.wire.lines import LineSplitter, OversizedLine
from trio_relay.wire.vocabulary import TERMINAL_SIZE_RANGE
from trio_relay.worker.pty.injection import (
    MODES,
    Delivery,
    DeliveryBook,
    EchoMatcher,
    InjectMode,
    Settled,
    format_message,
)
from trio_relay.worker.pty.process import PtyProcess
from trio_relay.worker.pty.screen import TerminalScreen
from trio_relay.worker.pty.throttle import InjectionThrottle, Outcome

COALESCE_SECONDS = 0.016
COALESCE_BYTES = 4096
COALESCE_QUIET = 0.002
READ_SIZE = 4096
DRAIN_SECONDS = 1.0  # after CMD exited: how long to wait for the rest of its output
# Frames waiting for the broker to read stdout: above this the worker stops reading CMD's
# output (so CMD is slowed down) but goes on serving stdin, signals and deadlines.
STDOUT_HIGH_WATER = 128 * 1024
# After the end is reported: how long to wait for the broker to take the last frames (shorter
# once the worker was told to stop, or the broker is gone).
FINAL_FLUSH_SECONDS = 5.0
FINAL_FLUSH_STOPPING_SECONDS = 1.0
# The screen model (pyte, ~100-200 KB/s) is fed in slices within a time budget per pass of
# the loop, so that input, requests and deadlines are served between slices; output frames
# are sent when the output is read, not when it is parsed. Reading pauses while more than
# PARSE_BACKLOG characters wait for the screen model.
PARSE_SLICE = 256
PARSE_BUDGET = 0.010
PARSE_BACKLOG = 8192
MAX_SIZE = TERMINAL_SIZE_RANGE[1]
BRACKETED_PASTE = ("\x1b[200~", "\x1b[201~")
REQUEST_KINDS = frozenset({"ping", "snapshot", "mode", "pending", "flush", "write_input"})
KNOWN_KINDS = REQUEST_KINDS | {"hello", "shutdown", "resize", "deliver"}


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """What ``python -m trio_relay.worker.pty`` was asked to do (see :func:`parse_args`)."""

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
        self.unsent: deque[memoryview] = deque()  # encoded frames stdout did not take yet
        self.unsent_bytes = 0
        self.stdout_watched = False
        self.stdout_broken = False
        self.splitter = LineSplitter()
        self.bad_frames = 0  # protocol errors: lines that are not a frame this worker takes
        # terminal input
        self.input: deque[_Input] = deque()
        self.master_open = True
        self.master_events = selectors.EVENT_READ  # what the selector watches the master for
        # output
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        # Offsets count the bytes of the output as reported: the UTF-8 of the frames' text,
        # the program's own bytes unless it wrote invalid UTF-8 (each bad byte is U+FFFD).
        self.fed = 0  # bytes read from the master
        self.emitted = 0  # byte offset where the next output frame starts
        self.batch: list[str] = []
        self.batch_bytes = 0  # UTF-8 bytes in batch
        self.batch_started = 0.0  # when the first text in batch was read
        self.backlog: deque[str] = deque()  # decoded output not yet fed to the screen
        self.backlog_chars = 0
        self.parsed = 0  # bytes of output fed to the screen
        self.parse_errors_logged = 0
        # lifecycle
        self.ready = False
        self.idle_sent = False
        self.stopping = False
        self.exit_code: int | None = None
        # the delivery in flight
        self.matcher: EchoMatcher | None = None
        self.typing: deque[tuple[float, bytes]] = deque()
        self.typed_bytes = 0
        self.typing_bytes = 0
        self.paste_open = False
        # write_input that came while a delivery was typed: written after its bytes
        self.user_held: list[tuple[bytes, Callable[[OSError | None], None]]] = []
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
                    protocol=PROTOCOL_VERSION,
                    worker="pty",
                    pid=os.getpid(),
                    program_pid=self.proc.pid,
                )
            )
            now = self.clock()
            self.deadlines["settle"] = now + self.opts.settle
            self.deadlines["ready_timeout"] = now + self.opts.ready_timeout
            os.set_blocking(1, False)  # a broker that does not read must not stop the loop
            while self.exit_code is None:
                for key, mask in self.selector.select(self._timeout()):
                    if key.fd == self.proc.master:
                        self._on_master(mask)
                    else:
                        key.data()
                self._run_due()
                if self.backlog and self.exit_code is None:
                    self._parse(PARSE_BUDGET)
                self._flush_stdout()
                self._watch_master()
            self._final_flush(wake_r)
            return self.exit_code
        finally:
            try:
                os.set_blocking(1, True)
            except OSError:
                pass  # stdout is already closed: nothing left to restore
            signal.set_wakeup_fd(-1)
            self.selector.close()
            os.close(wake_r)
            os.close(wake_w)

    def _timeout(self) -> float | None:
        if self.backlog:
            return 0.0  # output waits for the screen model: just poll
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
        """Write what stdout takes without blocking; keep the rest, and watch stdout for
        room while anything is kept."""
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            if not self.stdout_broken:
                self.unsent.append(memoryview(data))
                self.unsent_bytes += len(data)
        try:
            while self.unsent:
                head = self.unsent[0]
                written = os.write(1, head)
                self.unsent_bytes -= written
                if written < len(head):
                    self.unsent[0] = head[written:]
                    break
                self.unsent.popleft()
        except BlockingIOError:
            pass  # the pipe is full: the rest waits for fd 1 to be writable
        except OSError as exc:  # EPIPE: the broker is gone
            self.stdout_broken = True
            self.unsent.clear()
            self.unsent_bytes = 0
            log(f"stdout is closed ({exc.strerror}): the broker is gone; dropping frames")
        want = bool(self.unsent)
        if want != self.stdout_watched:
            self.stdout_watched = want
            if want:
                self.selector.register(1, selectors.EVENT_WRITE, self._flush_stdout)
            else:
                self.selector.unregister(1)

    def _final_flush(self, wake_r: int) -> None:
        """After the end was reported: give the broker a while to take the last frames (a
        signal ends the wait)."""
        self._flush_stdout()
        if not self.unsent:
            return
        grace = FINAL_FLUSH_STOPPING_SECONDS if self.stopping else FINAL_FLUSH_SECONDS
        end = self.clock() + grace
        with selectors.DefaultSelector() as sel:
            sel.register(1, selectors.EVENT_WRITE)
            sel.register(wake_r, selectors.EVENT_READ)
            while self.unsent:
                left = end - self.clock()
                if left <= 0:
                    break
                if any(key.fd == wake_r for key, _ in sel.select(left)):
                    break
                self._flush_stdout()
        if self.unsent:
            log(f"the broker did not read the last {self.unsent_bytes} bytes of frames; dropped")

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
            self.bad_frames += 1
            log(
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
        self.bad_frames += 1
        log(f"bad frame ({self.bad_frames} so far): {exc}: {line[:200]!r}")
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
                log(
                    f"mode {frame.set}"
                    + (f"; {released} held deliveries queued" if released else "")
                )
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

        current = self.book.current
        if current is not None and current.state == "typing":
            self.user_held.append((data, done))  # not between the chunks of a message
            return
        self.queue_input(data, done)

    def _release_user_input(self) -> None:
        """Write the input held back while a delivery was typed (fail it if the terminal
        is closed)."""
        held, self.user_held = self.user_held, []
        for data, done in held:
            if self.master_open:
                self.queue_input(data, done)
            else:
                done(OSError(errno.EIO, "the terminal is closed"))

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
        held, self.user_held = self.user_held, []
        for _, done in held:
            done(error)

    def _watch_master(self) -> None:
        """Watch the master for room while input waits, and for output unless too much waits
        for the broker (stdout) or for the screen model."""
        if not self.master_open:
            return
        events = (selectors.EVENT_WRITE if self.input else 0) | (
            selectors.EVENT_READ if self._may_read() else 0
        )
        if events == self.master_events:
            return
        if not events:
            self.selector.unregister(self.proc.master)
        elif not self.master_events:
            self.selector.register(self.proc.master, events, self._on_master)
        else:
            self.selector.modify(self.proc.master, events, self._on_master)
        self.master_events = events

    def _may_read(self) -> bool:
        return self.unsent_bytes < STDOUT_HIGH_WATER and self.backlog_chars < PARSE_BACKLOG

    def _on_master(self, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read_master()
        if mask & selectors.EVENT_WRITE and self.master_open:
            self._write_input()

    def _read_master(self) -> None:
        for _ in range(16):
            if not self._may_read():
                return
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
        if self.master_events:
            self.selector.unregister(self.proc.master)
            self.master_events = 0
        self._fail_input(OSError(errno.EIO, "the terminal is closed"))
        if self.proc.returncode is not None:
            self._finish()
        else:
            log("every process closed the terminal; waiting for the program to exit")

    def _on_output(self, data: bytes) -> None:
        """Output read from the master: into the next output frame now, and into the backlog
        of the screen model (see :meth:`_parse`)."""
        now = self.clock()
        self.fed += len(data)
        self._add_output(self.decoder.decode(data), now)
        if self.batch_bytes >= COALESCE_BYTES:
            self._flush_output()
        if not self.ready:
            self.deadlines["settle"] = now + self.opts.settle
        else:
            self._arm_idle(now)

    def _add_output(self, text: str, now: float) -> None:
        if not text:
            return
        size = len(text.encode())
        if self.batch and self.batch_bytes + size > COALESCE_BYTES:
            self._flush_output()
        # A frame goes out once the output has been quiet for COALESCE_QUIET (an echo, a
        # prompt), or COALESCE_SECONDS after its first text (a flood).
        if not self.batch:
            self.batch_started = now
        self.deadlines["coalesce"] = min(
            self.batch_started + COALESCE_SECONDS, now + COALESCE_QUIET
        )
        self.batch.append(text)
        self.batch_bytes += size
        self.backlog.append(text)
        self.backlog_chars += len(text)

    def _parse(self, budget: float | None) -> None:
        """Feed the backlog to the screen model, in slices, until it is empty or ``budget``
        seconds were spent (None: all of it)."""
        start = self.clock()
        while self.backlog:
            text = self.backlog.popleft()
            if len(text) > PARSE_SLICE:
                self.backlog.appendleft(text[PARSE_SLICE:])
                text = text[:PARSE_SLICE]
            self.backlog_chars -= len(text)
            self.parsed += len(text.encode())
            self._apply(text)
            if budget is not None and self.clock() - start >= budget:
                return

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
    def screen_offset(self) -> int:
        """Byte offset of the output the screen reflects (held-back query text is ASCII). It
        can be behind the output frames sent: the screen model catches up within ms unless
        the program floods the terminal."""
        return self.parsed - self.screen.held

    def _flush_output(self) -> None:
        self.deadlines.pop("coalesce", None)
        data = "".join(self.batch)
        size = self.batch_bytes
        self.batch.clear()
        self.batch_bytes = 0
        if data:
            self.send(Output(offset=self.emitted, data=data))
            self.emitted += size

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
        if self.proc.refused:
            log(
                f"not allowed to signal {len(self.proc.refused)} process(es) in the program's"
                f" session (pids {', '.join(map(str, self.proc.refused))}); left running"
            )
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
        self._add_output(self.decoder.decode(b"", final=True), self.clock())
        self._parse(None)
        self.screen.finish()
        self._flush_output()
        current = self.book.current
        if (
            current is not None
            and current.state == "verifying"
            and self.matcher is not None
            and self.matcher.check_text(self.screen.text())
        ):
            self._settle(Settled("echo"))  # it did reach the program before it exited
        # Anything else is left unreported: the exit makes the broker requeue it for the
        # next run of the program (or fail it naming the exit, if there is none).
        current = self.book.current
        if current is not None:
            log(
                f"delivery {current.delivery_id} not reported: the program exited while it"
                f" was {current.state}"
            )
        for delivery in (*self.book.queue, *self.book.held):
            log(f"delivery {delivery.delivery_id} was not typed: the program exited")
        returncode = self.proc.returncode
        assert returncode is not None
        code, sig = (None, -returncode) if returncode < 0 else (returncode, None)
        snapshot = self.screen.snapshot()
        snapshot["offset"] = self.screen_offset
        self.send(Exited(code=code, signal=sig, snapshot=snapshot))
        log(f"the program {f'was killed by signal {sig}' if sig else f'exited with code {code}'}")
        self.exit_code = code if code is not None else 128 + (sig or 0)

    # ------------------------------------------------------------ deliveries

    def _on_deliver(self, frame: Deliver) -> None:
        did = frame.delivery_id
        previous = self.book.settled(did)
        if previous is not None and previous.verification == "failed":
            log(f"delivery {did} failed before ({previous.reason}); trying again")
            self.book.forget(did)  # only what was typed is never typed again
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
        paste = self.screen.bracketed_paste
        text = format_message(delivery.sender, delivery.delivery_id, delivery.body, paste)
        self.matcher = EchoMatcher(text)
        self.screen.on_draw = self.matcher.feed
        size = self.opts.chunk
        # Whole characters per chunk: a chunk is never cut inside a UTF-8 sequence.
        pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
        if paste:
            pieces[0] = BRACKETED_PASTE[0] + pieces[0]
            pieces[-1] += BRACKETED_PASTE[1]
        self.paste_open = paste  # until the chunk with the end marker is written
        self.typing.clear()
        self.typing.extend((self.opts.key_delay, piece.encode()) for piece in pieces)
        self.typing.append((self.opts.enter_delay, b"\r"))
        self.typed_bytes = 0
        self.typing_bytes = sum(len(data) for _, data in self.typing)
        # The typing deadline is a stall timeout: re-armed whenever a chunk was written, so a
        # long message has as long as it needs while the program keeps reading.
        self.deadlines["typing"] = self.clock() + self.opts.verify_timeout
        self._type_next()

    def _type_next(self) -> None:
        current = self.book.current
        if current is None or not self.typing:
            return
        _, data = self.typing.popleft()
        self.queue_input(data, self._typed, owner=current.delivery_id)

    def _program_gone(self) -> bool:
        """CMD exited, or closed the terminal: what is in flight is left to the exit."""
        return not self.master_open or self.proc.poll() is not None

    def _typed(self, error: OSError | None) -> None:
        current = self.book.current
        if current is None or current.state != "typing":
            return
        if error is not None:
            if self._program_gone():
                log(f"delivery {current.delivery_id}: the terminal closed while it was typed")
                return
            self._settle(Settled("failed", f"cannot write to the terminal: {error}"))
            return
        self.typed_bytes = self.typing_bytes - sum(len(data) for _, data in self.typing)
        if len(self.typing) <= 1:
            self.paste_open = False  # only the Enter is left (or nothing)
        if self.typing:
            now = self.clock()
            self.deadlines["key"] = now + self.typing[0][0]
            self.deadlines["typing"] = now + self.opts.verify_timeout
            return
        self.deadlines.pop("typing", None)
        current.state = "verifying"
        self._release_user_input()
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
        if current is None or current.state != "typing" or self._program_gone():
            return
        # Abort cleanly: finish a chunk the terminal took part of (never half a character),
        # drop the chunks not started, close a bracketed paste, and Ctrl-U to clear the
        # line; the Enter is never typed, so the half message is not submitted.
        started = self.typed_bytes > 0
        for item in [item for item in self.input if item.owner == current.delivery_id]:
            if item.data.nbytes < len(item.data.obj):
                started = True
                item.owner = None
            else:
                self.input.remove(item)
        if started:
            close = BRACKETED_PASTE[1].encode() if self.paste_open else b""
            self.queue_input(close + b"\x15")
        self.paste_open = False
        self._watch_master()
        self._settle(
            Settled(
                "failed",
                f"could not type the message: the program took none of its input for "
                f"{self.opts.verify_timeout:g} s ({self.typed_bytes} of {self.typing_bytes} "
                "bytes typed; the rest was dropped and the line cleared with Ctrl-U)",
            )
        )

    def _on_verify_timeout(self) -> None:
        current = self.book.current
        if current is None or current.state != "verifying" or self.matcher is None:
            return
        if self._program_gone():
            return  # CMD exited meanwhile: its exit decides (see _finish)
        if self.matcher.check_text(self.screen.text()):
            self._settle(Settled("echo"))
            return
        what = self.matcher.describe_miss()
        self._settle(
            Settled(
                "timeout_fallback",
                f"the message text did not appear on screen within "
                f"{self.opts.verify_timeout:g} s ({what})",
            )
        )

    def _settle(self, settled: Settled) -> None:
        delivery = self.book.settle(settled)
        self._release_user_input()
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
    "--settle": (
        "settle",
        _positive,
        "ready once the output was quiet this long, in seconds (default 0.25)",
    ),
    "--prompt": ("prompt", _pattern, "ready as soon as this regular expression matches the screen"),
    "--ready-timeout": (
        "ready_timeout",
        _positive,
        "ready after this many seconds even if never quiet (default 15)",
    ),
    "--idle": (
        "idle",
        _positive,
        "idle after this many seconds of silence with nothing pending (default 2)",
    ),
    "--mode": ("mode", _mode, "injection mode at start: auto_inject (default) or hold"),
    "--verify-timeout": (
        "verify_timeout",
        _positive,
        "seconds to wait for a typed message to appear (default 5)",
    ),
    "--chunk": ("chunk", _count, "characters typed per write when injecting (default 128)"),
    "--key-delay": (
        "key_delay",
        _non_negative,
        "pause between typed chunks, in seconds (default 0.005)",
    ),
    "--enter-delay": (
        "enter_delay",
        _non_negative,
        "pause before the Enter that ends a message, in seconds (default 0.03)",
    ),
    "--kill-grace": (
        "kill_grace",
        _positive,
        "seconds between SIGHUP and SIGKILL when stopping CMD (default 1)",
    ),
}

USAGE = "usage: python -m trio_relay.worker.pty [options] -- CMD [ARGS...]"


def help_text() -> str:
    lines = [
        USAGE,
        "",
        "Run CMD in a pseudo-terminal as a trio-relay agent (the worker protocol on",
        "stdin/stdout, a log on stderr).",
        "",
        "options:",
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
