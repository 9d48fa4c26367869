"""The PTY worker's sans-IO core: everything it decides, nothing it reads or writes itself.

:class:`PtyCore` is told what happened, with the time: bytes from the broker
(:meth:`~PtyCore.receive`), bytes the program wrote (:meth:`~PtyCore.output`), how much
terminal input was written (:meth:`~PtyCore.input_written`), that a deadline passed
(:meth:`~PtyCore.timer`), that the program exited or a signal came. It answers through its
:class:`~trio_relay.worker.pty.outbox.Outbox` (frames, log lines, signals and sizes for the
program), :meth:`~PtyCore.pending_input` (bytes for the terminal) and
:meth:`~PtyCore.next_deadline`. The screen model catches up in slices
(:meth:`~PtyCore.parse_slice`), which the loop calls within its time budget.

The lifecycle lives here: ``hello``; the agent's activity, read off the screen with its
profile (:mod:`.activity`) at most every ``CLASSIFY_DELAY`` seconds while the screen changes
and once the output was quiet for ``--settle`` seconds, each change an ``activity`` frame;
``ready`` the first time it is idle (with a profile that knows a prompt: its prompt is
visible), when ``--prompt`` matched the screen, or (the generic profile only, with
something drawn) after ``--ready-timeout``; never before the program drew something unless
its profile says a program blocked reading its terminal is idle (``idle_when_reading``: the
loop looks, when asked by :attr:`~PtyCore.probe_wanted`, and tells :meth:`~PtyCore.probed`);
``idle`` after ``--idle`` seconds of
silence with nothing queued or in flight; deliveries typed only while the activity allows
(idle; busy too if the profile says so) and the input line holds no draft; stopping (SIGHUP and SIGCONT to
the session, SIGKILL after ``--kill-grace``); and the end: the rest of the output, the
delivery in flight, ``exited`` with the final screen, and :attr:`~PtyCore.exit_code`.
"""

from __future__ import annotations

import errno
import signal

from trio_relay.wire import PROTOCOL_VERSION, ActivityChanged, Exited, Idle, Ready, WorkerHello
from trio_relay.wire.lines import LineSplitter
from trio_relay.worker.pty.activity import NO_INPUT, InputLine, classify, input_line
from trio_relay.worker.pty.deadlines import Deadlines
from trio_relay.worker.pty.injector import Injector
from trio_relay.worker.pty.input_queue import InputQueue
from trio_relay.worker.pty.options import Options
from trio_relay.worker.pty.outbox import Outbox
from trio_relay.worker.pty.output import OutputStream
from trio_relay.worker.pty.requests import TERMINAL_CLOSED, BrokerFrames
from trio_relay.worker.pty.screen import TerminalScreen

DRAIN_SECONDS = 1.0  # after CMD exited: how long to wait for the rest of its output
CLASSIFY_DELAY = 0.05  # while the screen changes, its activity is read at most this often
PROBE_INTERVAL = 0.25  # how often to look whether a program that drew nothing reads input
MAX_PARSE_ERRORS_LOGGED = 20


class PtyCore:
    """The worker's state for one program; every method is told the time ``now``."""

    def __init__(self, options: Options) -> None:
        self.opts = options
        self.profile = options.agent_profile
        self.outbox = Outbox()
        self.deadlines = Deadlines()
        self.screen = TerminalScreen(options.rows, options.cols)
        self.keys = InputQueue()
        self.output_stream = OutputStream(self.deadlines, self.outbox)
        self.injector = Injector(
            options, self.screen, self.keys, self.deadlines, self.outbox, host=self
        )
        self.frames = BrokerFrames(self)
        self.splitter = LineSplitter()
        self.parse_errors_logged = 0
        self.ready = False
        self.activity = "starting"
        self.activity_text = "nothing drawn yet"
        self.dialog = ""  # in attention: the dialog on screen
        self.waiting: str | None = None
        self.input: InputLine = NO_INPUT
        self.was_idle = False
        self.ready_by_timeout = False  # the generic profile became ready after --ready-timeout
        self.reading = False  # the program was seen blocked reading its terminal
        self.probe_wanted = False  # the loop should look whether it is (see probed)
        self.last_output_at = 0.0
        self.idle_sent = False
        self.stopping = False
        self.terminal_open = True
        self.returncode: int | None = None  # the program's, once it exited
        self.exit_code: int | None = None  # the worker's, once the end was reported
        self._handlers = {
            "settle": self.classify,
            "classify": self.classify,
            "ready_timeout": self._on_ready_timeout,
            "idle": self._on_idle,
            "coalesce": lambda now: self.output_stream.flush(),
            "throttle": self.injector.pump,
            "key": lambda now: self.injector.type_next(),
            "typing": self.injector.on_typing_timeout,
            "enter": self.injector.press_enter,
            "verify": self.injector.on_verify_timeout,
            "clear": self.injector.on_clear_check,
            "person": self.injector.on_person_quiet,
            "probe": self._want_probe,
            "kill": self._on_kill_grace,
            "drain": self._on_drain_timeout,
        }

    # ------------------------------------------------------------ what the loop asks

    def next_deadline(self) -> float | None:
        """When :meth:`timer` is next due (None: not before something happens)."""
        return self.deadlines.next()

    @property
    def backlogged(self) -> bool:
        """Output waits for the screen model: the loop should call :meth:`parse_slice`."""
        return bool(self.output_stream.backlog) and self.exit_code is None

    @property
    def may_read(self) -> bool:
        """Whether to read the program's output (not while the screen model lags behind)."""
        return self.terminal_open and self.output_stream.may_read

    def pending_input(self) -> memoryview | None:
        """The bytes to write to the terminal next (None: nothing, or it is closed)."""
        return self.keys.head() if self.terminal_open else None

    @property
    def alive(self) -> bool:
        """The program runs and nobody asked it to stop."""
        return not self.stopping and self.returncode is None

    @property
    def screen_offset(self) -> int:
        """Byte offset of the output the screen reflects (held-back query text is ASCII). It
        can be behind the output frames sent: the screen model catches up within ms unless
        the program floods the terminal."""
        return self.output_stream.parsed - self.screen.held

    # the injector's host
    def may_inject(self) -> bool:
        return self.ready and self.alive and self.terminal_open and self._typing_blocker() is None

    def _typing_blocker(self) -> str | None:
        """Why a delivery may not be typed now (None: it may)."""
        activity, text = self.activity, self.activity_text
        if activity == "attention":
            return f"the agent waits for a person: {text}"
        if activity == "busy" and not (self.profile.typing.while_busy or self.ready_by_timeout):
            return f"the agent is busy: {text}"
        if activity == "starting" and not self.ready:
            return f"the agent is starting: {text}"
        if self.injector.clears:
            return "the input line is being cleared of a message that was not submitted"
        if self.injector.person_typing:
            return "a person is typing (their keys reached the terminal just now)"
        # The screen now, not as last classified: a draft drawn a moment ago counts.
        draft = self.input_line().text if self.profile.prompt is not None else ""
        if draft:
            return f"a draft is in the input line: {draft[:60]!r}"
        return None

    def program_gone(self) -> bool:
        return not self.terminal_open or self.returncode is not None

    def after_settle(self, now: float) -> None:
        self._arm_idle(now)
        self._report_activity(False)

    def waiting_changed(self) -> None:
        self._report_activity(False)

    def input_line(self) -> InputLine:
        """The input line on screen now."""
        return input_line(self.profile, self.screen.lines(), self.screen.cursor[0])

    # ------------------------------------------------------------ what happened

    def start(self, pid: int, program_pid: int, now: float) -> None:
        """Say hello; the settle and ready timeouts start now."""
        self.outbox.send(
            WorkerHello(protocol=PROTOCOL_VERSION, worker="pty", pid=pid, program_pid=program_pid)
        )
        self.last_output_at = now
        self.deadlines.set("settle", now + self.opts.settle)
        self.deadlines.set("ready_timeout", now + self.opts.ready_timeout)

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from the broker (stdin); ``b""`` is end of file: the broker is gone."""
        if data:
            lines = self.splitter.feed(data)
        else:
            lines = self.splitter.feed(b"\n") if self.splitter.buffered else []
        for line in lines:
            self.frames.handle(line, now)
        if lines:
            self._report_activity(False)
        if not data:
            self.begin_stop("stdin closed: the broker is gone", now)

    def output(self, data: bytes, now: float) -> None:
        """Bytes the program wrote to the terminal; ``b""`` is end of file (EIO on the
        master: every process closed the terminal)."""
        if not data:
            self._terminal_closed(now)
            return
        self.output_stream.feed(data, now)
        self.last_output_at = now
        self.deadlines.set("settle", now + self.opts.settle)
        if self.ready:
            self._arm_idle(now)

    def input_written(self, count: int, now: float) -> None:
        """The terminal took ``count`` bytes of :meth:`pending_input`."""
        self.keys.wrote(count, now)

    def input_failed(self, error: OSError, now: float) -> None:
        """Writing to the terminal failed: everything queued for it fails."""
        if self.keys:
            self.outbox.log(f"cannot write to the terminal: {error}")
        self.keys.fail(error, now)
        self.injector.release_user_input(now, error)

    def timer(self, now: float) -> None:
        """Run the deadlines due at ``now``."""
        for name in self.deadlines.due(now):
            self._handlers[name](now)

    def parse_slice(self, now: float) -> None:
        """Feed the screen model one slice of the output backlog; answer the terminal queries
        in it, look for the echo of a delivery and for the prompt."""
        text = self.output_stream.next_slice()
        if text is not None:
            self._apply(text, now)

    def _apply(self, text: str, now: float) -> None:
        screen = self.screen
        for answer in screen.feed(text):
            self.keys.add(answer.encode())
        if screen.parse_errors > self.parse_errors_logged:
            if self.parse_errors_logged < MAX_PARSE_ERRORS_LOGGED:
                self.outbox.log(f"screen model skipped a sequence: {screen.last_parse_error}")
            self.parse_errors_logged = screen.parse_errors
        self.injector.check_echo(now)
        if self.deadlines.at("classify") is None:
            self.deadlines.set("classify", now + CLASSIFY_DELAY)
        if not self.ready and self.opts.prompt is not None:
            if self.opts.prompt.search(screen.text()):
                self._become_ready("--prompt matched", now)

    def classify(self, now: float) -> None:
        """Read the agent's activity off the screen; report a change (and a change of why
        deliveries wait); become ready the first time it is idle; go on typing."""
        if self.exit_code is not None or self.returncode is not None:
            return
        screen = self.screen
        verdict = classify(
            self.profile,
            screen.lines(),
            screen.cursor[0],
            screen.title,
            quiet=now - self.last_output_at >= self.opts.settle,
            reading=self.reading,
            was_idle=self.was_idle,
            settle=self.opts.settle,
        )
        self.input = verdict.input
        if not verdict.drawn and self.profile.idle_when_reading:
            self._want_probe(now)  # is it blocked reading its terminal? (asked again later)
        # One dialog after another (Codex: sign-in, then API key) is a change too: the text
        # tells a person what is asked now.
        changed = verdict.activity != self.activity or verdict.dialog != self.dialog
        if changed:
            self.outbox.log(f"activity: {self.activity} -> {verdict.activity} ({verdict.text})")
            self.activity, self.activity_text = verdict.activity, verdict.text
            self.dialog = verdict.dialog
            self.injector.on_activity(verdict.activity, now)
        if verdict.activity == "idle":
            self.was_idle = True
            self._become_ready(verdict.text, now, announce=False)
        self._report_activity(changed)
        self.injector.check_echo(now)
        self.injector.pump(now)

    def _want_probe(self, now: float) -> None:
        self.probe_wanted = True
        self.deadlines.set("probe", now + PROBE_INTERVAL)

    def probed(self, reading: bool, now: float) -> None:
        """The loop looked: the program is (or is not) blocked reading its terminal."""
        self.probe_wanted = False
        if reading != self.reading:
            self.reading = reading
            self.classify(now)

    def _report_activity(self, changed: bool) -> None:
        """Send an ``activity`` frame if the activity or why deliveries wait changed."""
        book = self.injector.book
        waiting = self._typing_blocker() if book.queue and book.current is None else None
        if changed or waiting != self.waiting:
            self.waiting = waiting
            self.outbox.send(
                ActivityChanged(activity=self.activity, text=self.activity_text, waiting=waiting)
            )

    def begin_stop(self, reason: str, now: float) -> None:
        """Stop the program: SIGHUP (and SIGCONT) to its session now, SIGKILL after the kill
        grace. Idempotent."""
        if self.stopping:
            return
        self.stopping = True
        self.deadlines.cancel("idle")
        if self.returncode is not None:
            return
        self.outbox.log(f"stopping the program: {reason}")
        self.outbox.program += (signal.SIGHUP, signal.SIGCONT)
        self.deadlines.set("kill", now + self.opts.kill_grace)

    def program_exited(self, returncode: int, now: float) -> None:
        """The program exited (negative: killed by that signal). The loop has killed what it
        left in its session; the end is reported once the terminal closed (or after
        DRAIN_SECONDS)."""
        self.returncode = returncode
        self.deadlines.cancel("kill", "idle")
        if not self.terminal_open:
            self._finish(now)
        else:
            self.deadlines.set("drain", now + DRAIN_SECONDS)

    # ------------------------------------------------------------ lifecycle

    def _become_ready(self, why: str, now: float, announce: bool = True) -> None:
        if self.ready:
            return
        self.ready = True
        self.deadlines.cancel("ready_timeout", "probe")
        self.outbox.log(f"ready: {why}")
        self.outbox.send(Ready())
        self._arm_idle(now)
        if announce:
            self._report_activity(False)
            self.injector.pump(now)

    def _on_ready_timeout(self, now: float) -> None:
        """``--ready-timeout`` passed: a program the generic profile knows nothing of is
        ready if it drew something (it never went quiet); with a prompt in the profile,
        deliveries go on waiting for it."""
        waited = self.opts.ready_timeout
        if self.profile.prompt is not None:
            self.outbox.log(f"not at its prompt after {waited:g} s ({self.activity_text})")
        elif self.activity != "starting":
            self.ready_by_timeout = True
            self._become_ready(f"still not quiet after {waited:g} s", now)

    def _arm_idle(self, now: float) -> None:
        if self.ready and self.alive:
            self.idle_sent = False
            self.deadlines.set("idle", now + self.opts.idle)

    def _on_idle(self, now: float) -> None:
        if self.injector.book.busy:
            return  # re-armed when the delivery in flight settles
        if not self.idle_sent:
            self.idle_sent = True
            self.outbox.send(Idle())

    def _on_kill_grace(self, now: float) -> None:
        if self.returncode is None:
            grace = self.opts.kill_grace
            self.outbox.log(f"the program outlived SIGHUP by {grace:g} s; sending SIGKILL")
            self.outbox.program.append(signal.SIGKILL)

    def _terminal_closed(self, now: float) -> None:
        self.terminal_open = False
        self.input_failed(OSError(errno.EIO, TERMINAL_CLOSED), now)
        if self.returncode is not None:
            self._finish(now)
        else:
            self.outbox.log("every process closed the terminal; waiting for the program to exit")

    def _on_drain_timeout(self, now: float) -> None:
        self.outbox.log(f"the terminal stayed open {DRAIN_SECONDS:g} s after the program exited")
        self._finish(now)

    def _finish(self, now: float) -> None:
        """Report the end: remaining output, the delivery in flight, ``exited``."""
        self.deadlines.clear()
        self.output_stream.finish(now)
        while self.output_stream.backlog:
            self.parse_slice(now)
        self.screen.finish()
        self.output_stream.flush()
        self.injector.report_exit(now)
        returncode = self.returncode
        assert returncode is not None
        code, sig = (None, -returncode) if returncode < 0 else (returncode, None)
        snapshot = self.screen.snapshot()
        snapshot["offset"] = self.screen_offset
        self.outbox.send(Exited(code=code, signal=sig, snapshot=snapshot))
        what = f"was killed by signal {sig}" if sig else f"exited with code {code}"
        self.outbox.log(f"the program {what}")
        self.exit_code = code if code is not None else 128 + (sig or 0)
