"""The broker's side of the shared PTY host (``trio-relay up --shared-pty``).

With it, an agent whose command runs the PTY worker (``python -m trio_relay.worker.pty
...``, as every terminal program's does) does not get a wrapper process of its own: its
worker runs in one host process (:mod:`trio_relay.worker.pty.host`) with the other PTY
agents' workers. Each such agent is a :class:`HostedWorker`: it has its own stdin, stdout
and stderr pipes, made here and handed to the host with ``SCM_RIGHTS``, so everything the
supervisor does with a worker (frames, requests, logs, the stop escalation, the terminal
event) is unchanged. What differs is how its end is seen: the host reports each worker's
exit code; if the host itself dies, every agent still in it ends with the host's exit status,
each with its own terminal event, and the next hosted spawn (or restart) starts a new host.

The host is the broker's child, in its own session, with ``PR_SET_PDEATHSIG``; its
programs get SIGKILL when it dies. It runs in the supervisor's nursery; leaving that
nursery closes its control socket (it stops what it still runs and exits) and, after
:data:`HOST_STOP_GRACE` seconds, kills it.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence

import trio

from trio_relay.broker.process import (
    UNKILLABLE_AFTER,
    ExitStatus,
    WorkerProcess,
    _die_with_parent,
    worker_pipes,
)
from trio_relay.errors import SpawnFailed
from trio_relay.linux.sweep import kill_session

log = logging.getLogger(__name__)

WORKER_MODULE = "trio_relay.worker.pty"
#: How long the host has to stop its agents and exit once its control socket is closed.
HOST_STOP_GRACE = 3.0
#: How long a start message may wait for room on the host's socket.
START_TIMEOUT = 5.0
_MAX_MESSAGE = 65536


def hosted_args(argv: Sequence[str]) -> list[str] | None:
    """The PTY worker's own arguments if ``argv`` runs it with the broker's Python
    (``PYTHON [-P] -m trio_relay.worker.pty ARGS...``), else None."""
    if len(argv) < 2 or argv[0] != sys.executable:  # another Python's runs as its own child
        return None
    rest = list(argv[2:] if argv[1] == "-P" else argv[1:])
    if rest[:2] == ["-m", WORKER_MODULE] and rest[2:3] != ["--shared-host"] and rest[2:]:
        return rest[2:]
    return None


class HostedWorker(WorkerProcess):
    """An agent's PTY worker inside the shared host. Its :attr:`pid` is the host's (shared
    with the other hosted agents, so it does not mark the agent's processes: its program's
    session does)."""

    leads_session = False

    def __init__(
        self,
        host: HostProcess,
        key: int,
        name: str,
        pipes: tuple[int, int, int],
        env: Mapping[str, str] | None,
    ) -> None:
        super().__init__(name, host.pid, *pipes, env)
        self.key = key
        self._host = host
        self._end: ExitStatus | None = None
        self._ended = trio.Event()

    def ended(self, status: ExitStatus, note: str = "") -> None:
        """The host says this worker is done (or the host is gone). Idempotent."""
        if self._end is None:
            self._end = status
            self.ending_note = note
            self._ended.set()

    async def _exit_seen(self) -> None:
        await self._ended.wait()

    def _reap(self) -> ExitStatus | None:
        return self._end

    def _send_signal(self, sig: int) -> None:
        self._host.signal(self.key, sig)

    def _not_reaped(self) -> None:
        # The host did not end it after SIGKILL: its program must not outlive the agent.
        log.error(
            "%s: the shared PTY host did not end it; killing its program's session", self.name
        )
        if self.program_session is not None:
            self.unkillable += kill_session(self.program_session)
        self.status = ExitStatus(None, signal.SIGKILL)


class HostProcess:
    """One running host: the child, its control socket, and the workers in it."""

    def __init__(self, popen: subprocess.Popen[bytes], control: socket.socket) -> None:
        self.pid = popen.pid
        self._popen = popen
        self._control = control
        self._pidfd = os.pidfd_open(popen.pid)
        self.workers: dict[int, HostedWorker] = {}
        self.status: ExitStatus | None = None
        self._outbox_send, self._outbox = trio.open_memory_channel[bytes](float("inf"))
        self._sending = trio.Lock()  # one task at a time waits for room on the socket

    @property
    def alive(self) -> bool:
        """Not known to have exited (a host whose death ``serve`` has not seen yet is not
        alive either: the next spawn starts a new one)."""
        return self.status is None and self._popen.poll() is None

    async def send(self, message: bytes, fds: Sequence[int] = ()) -> None:
        """Send one message (with ``fds`` attached), waiting for room in turn with the
        other senders. Raises OSError if the host is gone."""
        async with self._sending:
            while True:
                try:
                    if fds:
                        socket.send_fds(self._control, [message], list(fds))
                    else:
                        self._control.send(message)
                    return
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._control)

    def signal(self, key: int, sig: int) -> None:
        """Ask the host to signal a worker (queued: the sender task sends it)."""
        if self.alive:
            self._outbox_send.send_nowait(
                json.dumps({"op": "signal", "key": key, "signal": sig}).encode()
            )

    async def serve(self) -> None:
        """Read the host's reports and watch for its exit; when it has exited, end every
        worker still in it. Cancellation: stops the host (closing its control socket, then
        SIGKILL after HOST_STOP_GRACE), shielded, before it returns."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_reports)
                nursery.start_soon(self._send_signals)
                await trio.lowlevel.wait_readable(self._pidfd)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._finish()

    async def _read_reports(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self._control)
            if not self._take_reports():
                return

    def _take_reports(self) -> bool:
        """Take every report waiting on the socket; False at its end."""
        while True:
            try:
                data = self._control.recv(_MAX_MESSAGE)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            try:
                report = json.loads(data)
                worker = self.workers.pop(report["key"], None)
                code = int(report["code"])
            except (ValueError, KeyError, TypeError):
                log.error("the shared PTY host sent a report we cannot read: %r", data[:200])
                continue
            if worker is not None:
                worker.ended(ExitStatus.from_returncode(code))

    async def _send_signals(self) -> None:
        async for message in self._outbox:
            try:
                await self.send(message)
            except OSError:
                return  # the host is gone: its exit is seen and reported

    async def _finish(self) -> None:
        """Stop the host if it runs (taking its reports meanwhile, so that it is never
        blocked writing them), reap it, and end what was left in it."""
        if self._popen.poll() is None:
            self._control.shutdown(socket.SHUT_WR)  # the host stops its agents and exits
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_reports)
                with trio.move_on_after(HOST_STOP_GRACE):
                    await trio.lowlevel.wait_readable(self._pidfd)
                if self._popen.poll() is None:
                    log.warning("the shared PTY host did not exit; sending SIGKILL")
                    try:
                        os.killpg(self.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass  # it exited meanwhile
                    with trio.move_on_after(UNKILLABLE_AFTER):
                        await trio.lowlevel.wait_readable(self._pidfd)
                nursery.cancel_scope.cancel()
        self._take_reports()  # what it reported before it died
        returncode = self._popen.poll()
        if returncode is None:  # stuck in the kernel: its agents end all the same
            log.error("the shared PTY host (pid %d) survived SIGKILL; giving up on it", self.pid)
            self.status = ExitStatus(None, signal.SIGKILL)
        else:
            self.status = ExitStatus.from_returncode(returncode)
        if self.workers:
            note = f"in the shared PTY host (pid {self.pid}), which ended: "
            log.error(
                "the shared PTY host (pid %d) %s; %d agent(s) in it end with it",
                self.pid,
                self.status.describe(),
                len(self.workers),
            )
            for worker in self.workers.values():
                worker.ended(self.status, note)
            self.workers.clear()
        trio.lowlevel.notify_closing(self._control)
        self._control.close()
        trio.lowlevel.notify_closing(self._pidfd)
        os.close(self._pidfd)


class PtyHost:
    """The shared PTY host of one broker, started at the first hosted spawn and again at
    the next one after it died. Its tasks live in ``nursery``."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._process: HostProcess | None = None
        self._keys = itertools.count(1)

    @property
    def pid(self) -> int | None:
        """The running host's pid, if one runs."""
        return self._process.pid if self._process is not None and self._process.alive else None

    async def start_worker(
        self,
        name: str,
        args: list[str],
        *,
        cwd: str | None,
        env: Mapping[str, str] | None,
    ) -> HostedWorker:
        """Start ``name``'s PTY worker (its arguments ``args``) in the host. Raises
        SpawnFailed for a bad working directory, or when the host cannot be started or
        reached. Cancellation: the worker is either handed over whole or not at all."""
        _check_directory(name, cwd)
        host = self._running_host(name)
        key = next(self._keys)
        ours, theirs = worker_pipes(name)
        worker = HostedWorker(host, key, name, ours, env)
        message = {
            "op": "start",
            "key": key,
            "args": args,
            "env": dict(env or os.environ),
            "cwd": cwd,
        }
        host.workers[key] = worker
        try:
            with trio.CancelScope(shield=True):
                with trio.fail_after(START_TIMEOUT):
                    await host.send(json.dumps(message).encode(), theirs)
        except BaseException as exc:
            host.workers.pop(key, None)
            worker.ended(ExitStatus(None, None))
            with trio.CancelScope(shield=True):
                await worker.close()
            if isinstance(exc, OSError):
                why = exc.strerror or str(exc)
            elif isinstance(exc, trio.TooSlowError):
                why = f"it took no new agent for {START_TIMEOUT:g} s"
            else:
                raise
            raise SpawnFailed(name, f"cannot reach the shared PTY host: {why}") from exc
        finally:
            for fd in theirs:
                os.close(fd)
        return worker

    def _running_host(self, name: str) -> HostProcess:
        if self._process is not None and self._process.alive:
            return self._process
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-P",  # not the working directory on sys.path (it is / here anyway)
                    "-m",
                    WORKER_MODULE,
                    "--shared-host",
                    "--control-fd",
                    str(theirs.fileno()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                cwd="/",
                pass_fds=[theirs.fileno()],
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except OSError as exc:
            ours.close()
            raise SpawnFailed(
                name, f"cannot start the shared PTY host: {exc.strerror}", exc.errno
            ) from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        self._process = HostProcess(popen, ours)
        self._nursery.start_soon(self._process.serve)
        log.info("started the shared PTY host (pid %d)", popen.pid)
        return self._process


def _check_directory(name: str, cwd: str | None) -> None:
    """What spawning a child in ``cwd`` would find wrong with it, as SpawnFailed."""
    if cwd is None:
        return
    try:
        mode = os.stat(cwd).st_mode
    except OSError as exc:
        raise SpawnFailed(name, f"working directory {cwd!r}: {exc.strerror}", exc.errno) from exc
    if not stat.S_ISDIR(mode):
        raise SpawnFailed(name, f"working directory {cwd!r}: Not a directory", errno.ENOTDIR)
    if not os.access(cwd, os.X_OK):
        raise SpawnFailed(name, f"working directory {cwd!r}: Permission denied", errno.EACCES)
