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
  echo matching in :mod:`trio_relay.worker.pty.echo`), paced by an adaptive throttle
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
small next to the program it wraps (see the README for the measured figures). Everything it
decides is in the sans-IO :class:`~trio_relay.worker.pty.core.PtyCore`; this module is the
loop around it (:class:`Loop`: read the fds, tell the core with the time, carry out what it
returns, sleep until its next deadline) and :func:`main`.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import signal
import sys
import time
from collections import deque
from collections.abc import Callable

from trio_relay.linux.procfs import reads_terminal
from trio_relay.worker.pty.core import PtyCore
from trio_relay.worker.pty.options import USAGE, UsageError, help_text, parse_args
from trio_relay.worker.pty.priority import StepAside
from trio_relay.worker.pty.process import PtyProcess

READ_SIZE = 4096
READS_PER_PASS = 16
# Frames waiting for the broker to read stdout: above this the worker stops reading CMD's
# output (so CMD is slowed down) but goes on serving stdin, signals and deadlines.
STDOUT_HIGH_WATER = 128 * 1024
# After the end is reported: how long to wait for the broker to take the last frames (shorter
# once the worker was told to stop, or the broker is gone).
FINAL_FLUSH_SECONDS = 5.0
FINAL_FLUSH_STOPPING_SECONDS = 1.0
# The screen model is fed in slices within this time budget per pass of the loop, so that
# input, requests and deadlines are served between slices. A pass also ends early, after a
# slice, once a frame from the broker waits on stdin (a snapshot is not kept waiting).
PARSE_BUDGET = 0.010


def _note_signal(signum: int, frame: object) -> None:
    """Signal handler: nothing to do here; the wakeup fd tells the loop which signal."""


def log(message: str) -> None:
    """One line to stderr, the worker's log (the broker keeps the last lines)."""
    try:
        sys.stderr.write(f"pty_worker: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass  # stderr is gone with the broker; there is nowhere left to report to


class Loop:
    """The selector loop around one :class:`PtyCore` and its :class:`PtyProcess`.

    Standalone (:meth:`run`) it owns its selector and speaks on fds 0 and 1. In the shared
    PTY host (:mod:`trio_relay.worker.pty.host`) many loops share one ``selector``, each
    with its own ``stdin``/``stdout`` pipes and ``log``; the host calls :meth:`start`,
    dispatches the selector's events (each key's data is ``(loop, callback)``), then
    :meth:`service` for the loops that had events or a due deadline."""

    def __init__(
        self,
        core: PtyCore,
        proc: PtyProcess,
        selector: selectors.BaseSelector | None = None,
        *,
        stdin: int = 0,
        stdout: int = 1,
        log: Callable[[str], None] = log,
    ) -> None:
        self.core, self.proc = core, proc
        self.selector = selector or selectors.DefaultSelector()
        self.stdin, self.stdout, self.log = stdin, stdout, log
        self.unsent: deque[memoryview] = deque()  # encoded frames stdout did not take yet
        self.unsent_bytes = 0
        self.stdout_watched = False
        self.stdout_broken = False
        self.stdin_watched = False
        self._stdin_poll: select.poll | None = None  # whether a frame waits, made once
        self.pidfd_watched = False
        self.master_events = 0  # what the selector watches the master for
        #: Seconds of screen-model catching up per :meth:`service` (the shared host
        #: divides one pass's budget among the agents that are behind).
        self.parse_budget = PARSE_BUDGET
        #: Whose loop this is, for the shared host (its record of the agent); else None.
        self.owner: object | None = None

    def start(self, pid: int) -> None:
        """Watch stdin, the terminal and CMD's exit, and say hello (as worker ``pid``)."""
        proc = self.proc
        self._register(self.stdin, selectors.EVENT_READ, self._on_stdin)
        self.stdin_watched = True
        self._register(proc.master, selectors.EVENT_READ, self._on_master)
        self.master_events = selectors.EVENT_READ
        self._register(proc.pidfd, selectors.EVENT_READ, self._on_program_exit)
        self.pidfd_watched = True
        self.core.start(pid, proc.pid, time.monotonic())
        os.set_blocking(self.stdout, False)  # a broker that does not read must not stop us

    def service(self) -> None:
        """After the selector's events: run what is due, carry out what the core asks,
        and feed the screen model a slice if output waits for it."""
        core = self.core
        self._run_due()
        if core.probe_wanted:
            core.probed(reads_terminal(self.proc.pid), time.monotonic())
        self._carry_out()
        if core.backlogged:
            self._parse()
            self._carry_out()

    def quiesce(self) -> None:
        """Once the end is reported: stop watching stdin, the terminal and CMD's exit
        (stdout stays watched while frames wait for the broker)."""
        if self.stdin_watched:
            self.selector.unregister(self.stdin)
            self.stdin_watched = False
        if self.master_events:
            self.selector.unregister(self.proc.master)
            self.master_events = 0
        if self.pidfd_watched:
            self.selector.unregister(self.proc.pidfd)
            self.pidfd_watched = False

    def forget(self) -> None:
        """Stop watching every fd of this loop (the host ends the agent)."""
        self.quiesce()
        if self.stdout_watched:
            self.selector.unregister(self.stdout)
            self.stdout_watched = False

    def _register(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        self.selector.register(fd, events, (self, callback))

    def run(self, aside: StepAside | None = None) -> int:
        """Serve until CMD has exited and been reported; return the worker's exit code.
        ``aside``: the worker's lowering of its priority, retried here while it waits."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, _note_signal)
        core = self.core
        try:
            on_signal = (self, lambda _: self._on_signal(wake_r))
            self.selector.register(wake_r, selectors.EVENT_READ, on_signal)
            self.start(os.getpid())
            while core.exit_code is None:
                timeout = self._timeout()
                if aside is not None and aside.next_try is not None:
                    wait = max(0.0, aside.next_try - time.monotonic())
                    timeout = wait if timeout is None else min(timeout, wait)
                for key, mask in self.selector.select(timeout):
                    key.data[1](mask)
                self.service()
                if aside is not None and aside.next_try is not None:
                    now = time.monotonic()
                    if now >= aside.next_try:
                        aside.retry(now)
            self._final_flush(wake_r)
            return core.exit_code
        finally:
            try:
                os.set_blocking(self.stdout, True)
            except OSError:
                pass  # stdout is already closed: nothing left to restore
            signal.set_wakeup_fd(-1)
            self.selector.close()
            os.close(wake_r)
            os.close(wake_w)

    def _timeout(self) -> float | None:
        if self.core.backlogged:
            return 0.0  # output waits for the screen model: just poll
        deadline = self.core.next_deadline()
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _run_due(self) -> None:
        deadline = self.core.next_deadline()
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self._check_exit()  # a deadline may depend on whether CMD is still there
            self.core.timer(now)

    def _parse(self) -> None:
        """Let the screen model catch up, in slices, for at most :attr:`parse_budget`
        seconds (at least one slice), or until a frame waits on stdin."""
        start = now = time.monotonic()
        while self.core.backlogged:
            self.core.parse_slice(now)
            now = time.monotonic()
            if now - start >= self.parse_budget or self._stdin_waits():
                return

    def _stdin_waits(self) -> bool:
        """Whether stdin (still watched) has a frame to read, asked without waiting."""
        if not self.stdin_watched:
            return False
        if self._stdin_poll is None:
            self._stdin_poll = select.poll()
            self._stdin_poll.register(self.stdin, select.POLLIN)
        return bool(self._stdin_poll.poll(0))

    def _carry_out(self) -> None:
        """Do what the core asked for: signals and sizes, input for the terminal, log lines,
        frames for stdout; then watch the master for what the core wants next."""
        outbox = self.core.outbox
        for action in outbox.program:
            if isinstance(action, int):
                self.proc.signal_session(action)
            else:
                self.proc.resize(*action)
        outbox.program.clear()
        self._write_input()
        for line in outbox.logs:
            self.log(line)
        outbox.logs.clear()
        self._flush_stdout()
        self._watch_master()

    # ------------------------------------------------------------ stdin, stdout, signals

    def _on_stdin(self, mask: int) -> None:
        chunk = os.read(self.stdin, 65536)
        if not chunk:
            self.selector.unregister(self.stdin)
            self.stdin_watched = False
        self.core.receive(chunk, time.monotonic())

    def _on_signal(self, fd: int) -> None:
        for signum in os.read(fd, 64):
            self.core.begin_stop(f"received {signal.Signals(signum).name}", time.monotonic())

    def _flush_stdout(self, mask: int = 0) -> None:
        """Write what stdout takes without blocking; keep the rest, and watch stdout for
        room while anything is kept."""
        frames = self.core.outbox.frames
        if frames:
            data = b"".join(frames)
            frames.clear()
            if not self.stdout_broken:
                self.unsent.append(memoryview(data))
                self.unsent_bytes += len(data)
        try:
            while self.unsent:
                head = self.unsent[0]
                written = os.write(self.stdout, head)
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
            self.log(f"stdout is closed ({exc.strerror}): the broker is gone; dropping frames")
        want = bool(self.unsent)
        if want != self.stdout_watched:
            self.stdout_watched = want
            if want:
                self._register(self.stdout, selectors.EVENT_WRITE, self._flush_stdout)
            else:
                self.selector.unregister(self.stdout)

    def _final_flush(self, wake_r: int) -> None:
        """After the end was reported: give the broker a while to take the last frames (a
        signal ends the wait)."""
        self._carry_out()
        if not self.unsent:
            return
        stopping = self.core.stopping
        end = time.monotonic() + (FINAL_FLUSH_STOPPING_SECONDS if stopping else FINAL_FLUSH_SECONDS)
        with selectors.DefaultSelector() as sel:
            sel.register(self.stdout, selectors.EVENT_WRITE)
            sel.register(wake_r, selectors.EVENT_READ)
            while self.unsent:
                left = end - time.monotonic()
                if left <= 0:
                    break
                if any(key.fd == wake_r for key, _ in sel.select(left)):
                    break
                self._flush_stdout()
        if self.unsent:
            self.log(
                f"the broker did not read the last {self.unsent_bytes} bytes of frames; dropped"
            )

    # ------------------------------------------------------------ the terminal and CMD

    def _write_input(self) -> None:
        core, master = self.core, self.proc.master
        while (data := core.pending_input()) is not None:
            try:
                written = os.write(master, data)
            except BlockingIOError:
                return
            except OSError as exc:
                self._check_exit()  # whether CMD is gone decides what the failure means
                core.input_failed(exc, time.monotonic())
                return
            core.input_written(written, time.monotonic())

    def _watch_master(self) -> None:
        """Watch the master for room while input waits, and for output unless too much waits
        for the broker (stdout) or for the screen model."""
        if not self.core.terminal_open:
            events = 0
        else:
            events = (selectors.EVENT_WRITE if self.core.pending_input() is not None else 0) | (
                selectors.EVENT_READ if self._may_read() else 0
            )
        if events == self.master_events:
            return
        if not events:
            self.selector.unregister(self.proc.master)
        elif not self.master_events:
            self._register(self.proc.master, events, self._on_master)
        else:
            self.selector.modify(self.proc.master, events, (self, self._on_master))
        self.master_events = events

    def _may_read(self) -> bool:
        return self.unsent_bytes < STDOUT_HIGH_WATER and self.core.may_read

    def _on_master(self, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read_master()
        if mask & selectors.EVENT_WRITE:
            self._write_input()

    def _read_master(self) -> None:
        for _ in range(READS_PER_PASS):
            if not self._may_read():
                return
            try:
                data = os.read(self.proc.master, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                data = b""  # EIO: every process closed the terminal
            self.core.output(data, time.monotonic())
            if not data:
                return

    def _on_program_exit(self, mask: int) -> None:
        self._check_exit()

    def _check_exit(self) -> None:
        """If CMD has exited: kill what it left in its session and tell the core."""
        if self.core.returncode is not None or self.proc.poll() is None:
            return  # told already, or pidfd readiness without a status: wait for the next one
        if self.pidfd_watched:
            self.selector.unregister(self.proc.pidfd)
            self.pidfd_watched = False
        left = self.proc.signal_session(signal.SIGKILL)
        if left:
            self.log(f"killed {left} process(es) the program left in its session")
        refused = self.proc.refused
        if refused:
            self.log(
                f"not allowed to signal {len(refused)} process(es) in the program's"
                f" session (pids {', '.join(map(str, refused))}); left running"
            )
        returncode = self.proc.returncode
        assert returncode is not None
        self.core.program_exited(returncode, time.monotonic())


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
    aside = StepAside(options.nice, log)
    aside.begin(time.monotonic())  # after the spawn: CMD keeps its priority
    try:
        return Loop(PtyCore(options), proc).run(aside)
    except BaseException:
        proc.signal_session(signal.SIGKILL)  # a fault of ours must not leave CMD behind
        raise
    finally:
        proc.close()


if __name__ == "__main__":  # the module, not the package: say which one to run
    sys.exit("run the PTY worker as: python -m trio_relay.worker.pty [options] -- CMD [ARGS...]")
