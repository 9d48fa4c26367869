"""The shared PTY host: one process running the PTY worker for many agents.

    python -m trio_relay.worker.pty --shared-host --control-fd N

An opt-in of the broker (``trio-relay up --shared-pty``): instead of one wrapper process per
agent (a Python interpreter each), one host runs every PTY agent's :class:`~.worker.Loop`
on one selector. Each agent keeps what a wrapper would have: its own stdin, stdout and stderr
pipes to the broker (so frames, requests and logs travel exactly as from a wrapper), its
program in its own session on its own PTY, and its own exit code.

The broker speaks to the host on a ``SOCK_SEQPACKET`` Unix socket (fd ``N``), one JSON
object per message:

- ``{"op": "start", "key": K, "args": [...], "env": {...}, "cwd": ...}`` with three fds
  attached (the agent's stdin to read, stdout and stderr to write): run the PTY worker with
  the command line ``args``; answered by ``{"op": "ended", "key": K, "code": C}`` once the
  agent's worker is done (C is the exit code its wrapper would have had: 127 if the program
  cannot start, 2 for a bad command line, 70 for a fault of the host's own);
- ``{"op": "signal", "key": K, "signal": S}``: what a signal to its wrapper would do
  (SIGTERM, SIGHUP, SIGINT: stop the program; SIGKILL: kill its session and end now, code
  -9; others are ignored).

When the control socket ends (the broker is gone), or on SIGTERM/SIGHUP/SIGINT, every agent
is stopped and the host exits once they are reported. Every program gets SIGKILL if the
host dies (``PR_SET_PDEATHSIG``), and the host if the broker dies. A fault in one agent's
loop ends that agent (code 70, logged on its stderr) and no other.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable

from trio_relay.worker.pty.core import PtyCore
from trio_relay.worker.pty.options import UsageError, parse_args
from trio_relay.worker.pty.process import PtyProcess
from trio_relay.worker.pty.worker import (
    FINAL_FLUSH_SECONDS,
    FINAL_FLUSH_STOPPING_SECONDS,
    PARSE_BUDGET,
    Loop,
    _note_signal,
)

#: Exit code for an agent whose loop failed in the host (EX_SOFTWARE).
FAULT_CODE = 70
MAX_MESSAGE = 1 << 20
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class HostedAgent:
    """One agent in the host: its pipes, and its loop once its program runs."""

    def __init__(self, key: int, stdin: int, stdout: int, stderr: int) -> None:
        self.key = key
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.loop: Loop | None = None
        self.flush_until: float | None = None  # set once the end is reported
        self.scheduled: float | None = None  # the earliest deadline in the host's heap

    def log(self, message: str) -> None:
        """One line on this agent's stderr (the broker keeps the last lines)."""
        try:
            os.write(self.stderr, f"pty_worker: {message}\n".encode("utf-8", "replace"))
        except OSError:
            pass  # its stderr is gone with the broker; there is nowhere left to report to

    def close(self) -> None:
        for fd in (self.stdin, self.stdout, self.stderr):
            os.close(fd)
        if self.loop is not None:
            self.loop.proc.close()


class Host:
    """The selector loop of the host: the control socket, signals, and every agent."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.selector = selectors.DefaultSelector()
        self.agents: dict[int, HostedAgent] = {}
        self.deadlines: list[tuple[float, int, int]] = []  # (when, order, agent key)
        self.unreaped: list[PtyProcess] = []  # programs killed before they exited
        self._order = itertools.count()
        self.closing = False  # the broker is gone, or we were told to stop
        self.touched: set[HostedAgent] = set()

    def run(self) -> int:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            signal.signal(sig, _note_signal)
        self.selector.register(self.control, selectors.EVENT_READ, (None, self._on_control))
        self.selector.register(
            wake_r, selectors.EVENT_READ, (None, lambda _: self._on_signal(wake_r))
        )
        while not (self.closing and not self.agents):
            timeout = self._timeout()
            if self.unreaped:  # SIGKILLed programs are reaped within a second
                self.unreaped = [p for p in self.unreaped if p.poll() is None]
                timeout = 1.0 if timeout is None else min(timeout, 1.0)
            for key, mask in self.selector.select(timeout):
                owner, callback = key.data
                if owner is None:
                    callback(mask)
                    continue
                agent = self._agent_of(owner)
                if agent is not None:
                    self._guarded(agent, callback, mask)
            self._service_due()
        return 0

    # ------------------------------------------------------------ scheduling

    def _agent_of(self, loop: Loop) -> HostedAgent | None:
        agent = loop.owner
        return agent if isinstance(agent, HostedAgent) and agent.key in self.agents else None

    def _guarded(self, agent: HostedAgent, call: Callable[..., object], *args: object) -> None:
        """Run one of the agent's callbacks; a fault ends that agent only."""
        try:
            call(*args)
        except Exception as exc:  # a fault of ours in this agent's loop: it alone ends
            agent.log(f"internal error in the shared PTY host: {exc!r}")
            self._end(agent, FAULT_CODE)
            return
        self.touched.add(agent)

    def _timeout(self) -> float | None:
        if any(a.loop is not None and a.loop.core.backlogged for a in self.touched):
            return 0.0
        if not self.deadlines:
            return None
        return max(0.0, self.deadlines[0][0] - time.monotonic())

    def _service_due(self) -> None:
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            when, _, key = heapq.heappop(self.deadlines)
            agent = self.agents.get(key)
            if agent is not None and agent.scheduled == when:
                agent.scheduled = None
                self.touched.add(agent)
        touched, self.touched = self.touched, set()
        # One pass parses for about PARSE_BUDGET in all, so that requests, input and
        # deadlines of every agent are served between slices however many are behind.
        behind = sum(1 for a in touched if a.loop is not None and a.loop.core.backlogged)
        budget = PARSE_BUDGET / max(1, behind)
        for agent in touched:
            if agent.key not in self.agents or agent.loop is None:
                continue
            agent.loop.parse_budget = budget
            self._guarded(agent, agent.loop.service)
            if agent.key in self.agents:
                self._guarded(agent, self._after_service, agent)
        # Loops whose screen model is behind stay touched: they get a slice each pass.
        self.touched = {a for a in self.touched if a.loop is not None and a.loop.core.backlogged}

    def _after_service(self, agent: HostedAgent) -> None:
        loop = agent.loop
        assert loop is not None
        now = time.monotonic()
        if loop.core.exit_code is not None:
            if agent.flush_until is None:
                loop.quiesce()
                stopping = loop.core.stopping or self.closing
                grace = FINAL_FLUSH_STOPPING_SECONDS if stopping else FINAL_FLUSH_SECONDS
                agent.flush_until = now + grace
            if not loop.unsent or now >= agent.flush_until:
                if loop.unsent:
                    loop.log(
                        f"the broker did not read the last {loop.unsent_bytes} bytes of"
                        " frames; dropped"
                    )
                self._end(agent, loop.core.exit_code)
                return
            self._schedule(agent, agent.flush_until)
            return
        self._schedule(agent, loop.core.next_deadline())

    def _schedule(self, agent: HostedAgent, when: float | None) -> None:
        if when is None or (agent.scheduled is not None and agent.scheduled <= when):
            return
        agent.scheduled = when
        heapq.heappush(self.deadlines, (when, next(self._order), agent.key))

    # ------------------------------------------------------------ the broker's messages

    def _on_control(self, mask: int) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.control, MAX_MESSAGE, 3, socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            self.selector.unregister(self.control)
            self._stop_all("the broker is gone")
            return
        try:
            message = json.loads(data)
            op, key = message["op"], message["key"]
        except (ValueError, KeyError, TypeError):
            message, op, key = None, None, None
        if op == "start" and isinstance(key, int) and len(fds) == 3:
            self._start(message, *fds)
            return
        for fd in fds:
            os.close(fd)
        if op == "signal":
            self._signal(key, message.get("signal"))
        elif op == "start" and isinstance(key, int):
            # Its pipes did not all arrive (out of fds here, say): it ends at once, so the
            # broker does not wait for a hello that cannot come.
            print(f"pty_host: start {key} came with {len(fds)} of its 3 fds", file=sys.stderr)
            self._send({"op": "ended", "key": key, "code": FAULT_CODE})
        else:
            print(f"pty_host: ignoring a message we cannot read: {data[:200]!r}", file=sys.stderr)

    def _start(self, message: dict[str, object], stdin: int, stdout: int, stderr: int) -> None:
        agent = HostedAgent(int(message["key"]), stdin, stdout, stderr)  # type: ignore[call-overload]
        self.agents[agent.key] = agent
        try:
            self._launch(agent, message)
        except Exception as exc:  # a fault of ours, or a message we cannot read: this agent ends
            agent.log(f"internal error in the shared PTY host: {exc!r}")
            self._end(agent, FAULT_CODE)

    def _launch(self, agent: HostedAgent, message: dict[str, object]) -> None:
        if self.closing:
            agent.log("the host is stopping; not started")
            self._end(agent, 1)
            return
        try:
            options = parse_args(list(message["args"]))  # type: ignore[call-overload]
        except UsageError as exc:
            agent.log(f"error: {exc}")
            self._end(agent, 2)
            return
        env = {
            k: v
            for k, v in dict(message["env"]).items()  # type: ignore[call-overload]
            if k not in ("COLUMNS", "LINES")
        }
        env["TERM"] = options.term
        base = message.get("cwd") or "/"  # where a wrapper would have run
        cwd = os.path.join(base, options.cwd) if options.cwd else base  # type: ignore[arg-type]
        try:
            proc = PtyProcess.spawn(
                options.argv, rows=options.rows, cols=options.cols, env=env, cwd=cwd
            )
        except OSError as exc:
            agent.log(f"cannot run {exc.filename!r}: {exc.strerror}")
            self._end(agent, 127)
            return
        loop = Loop(
            PtyCore(options),
            proc,
            self.selector,
            stdin=agent.stdin,
            stdout=agent.stdout,
            log=agent.log,
        )
        loop.owner = agent
        agent.loop = loop
        loop.start(os.getpid())
        self.touched.add(agent)

    def _signal(self, key: object, signum: object) -> None:
        agent = self.agents.get(key) if isinstance(key, int) else None
        if agent is None or agent.loop is None:
            return  # ended already: the broker hears of it in the "ended" message
        if signum == signal.SIGKILL:
            self._end(agent, -signal.SIGKILL)
        elif signum in STOP_SIGNALS:
            name = signal.Signals(signum).name  # type: ignore[arg-type]
            self._guarded(agent, agent.loop.core.begin_stop, f"received {name}", time.monotonic())

    def _on_signal(self, fd: int) -> None:
        for signum in os.read(fd, 64):
            self._stop_all(f"the shared PTY host received {signal.Signals(signum).name}")

    def _stop_all(self, reason: str) -> None:
        self.closing = True
        for agent in list(self.agents.values()):
            if agent.loop is not None and agent.loop.core.exit_code is None:
                self._guarded(agent, agent.loop.core.begin_stop, reason, time.monotonic())

    # ------------------------------------------------------------ ends

    def _end(self, agent: HostedAgent, code: int) -> None:
        """End the agent (as if its wrapper had exited with ``code``), SIGKILLing what is
        left of its program's session if the program has not exited."""
        if self.agents.pop(agent.key, None) is None:
            return
        self.touched.discard(agent)
        if agent.loop is not None:
            agent.loop.forget()
            if agent.loop.proc.poll() is None:  # ended before its program (SIGKILL, a fault)
                agent.loop.proc.signal_session(signal.SIGKILL)
                self.unreaped.append(agent.loop.proc)
        agent.close()
        agent.loop = None  # its screen and core go now
        self._send({"op": "ended", "key": agent.key, "code": code})

    def _send(self, message: dict[str, object]) -> None:
        try:
            self.control.send(json.dumps(message).encode())
        except OSError:
            pass  # the broker is gone: it learns nothing more from us, and needs nothing


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--control-fd" or not args[1].isdigit():
        print(
            "usage: python -m trio_relay.worker.pty --shared-host --control-fd N", file=sys.stderr
        )
        return 2
    control = socket.socket(fileno=int(args[1]))
    control.set_inheritable(False)
    # Five fds per agent (three pipes, the terminal, the pidfd): take all the kernel allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return Host(control).run()
