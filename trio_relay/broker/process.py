"""One worker child process: spawn, write frames, drain stderr, watch for exit, stop, reap.

Linux only: the child is forked from the Trio thread with ``PR_SET_PDEATHSIG`` (the death
signal follows the *thread* that forked, which is why this does not use ``trio.to_thread``,
whose threads exit when idle), its exit is watched through a pidfd, and it runs in its own
session, so its process group can be signalled as one.

Start a child with :func:`spawn_process`, run its background tasks with
:meth:`WorkerProcess.start_tasks`, stop it with :meth:`WorkerProcess.stop` (shutdown frame,
SIGTERM to its group after a grace period, then SIGKILL) and release its pipes with
:meth:`WorkerProcess.close`. Frames to the worker go through its
:class:`~trio_relay.broker.writer.FrameWriter` (``proc.writer``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import struct
import subprocess
import termios
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from trio_relay.broker.writer import FrameWriter
from trio_relay.errors import ChannelClosed, InputQueueFull, SpawnFailed, signal_name
from trio_relay.linux.deathsig import death_signal
from trio_relay.linux.sweep import AGENT_ENV, RUN_ENV, kill_session, kill_tagged
from trio_relay.wire import Shutdown, encode

log = logging.getLogger(__name__)

#: How long to wait for a SIGKILLed child before reporting it as stuck in the kernel.
UNKILLABLE_AFTER = 10.0


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: SIGKILL this child when the broker (the forking thread) dies."""
    arm = death_signal(parent_pid)

    def setup() -> None:
        if not arm():  # the broker died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended: an exit ``code``, or the ``signal`` that killed it."""

    code: int | None
    signal: int | None

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        if returncode < 0:
            return cls(None, -returncode)
        return cls(returncode, None)

    @property
    def failed(self) -> bool:
        return self.signal is not None or self.code != 0

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by {signal_name(self.signal)}"
        return f"exited with code {self.code}"


class StderrRing:
    """The last lines a worker wrote to stderr, bounded in lines and in line length."""

    def __init__(self, max_lines: int = 500, max_line: int = 4096) -> None:
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._partial = bytearray()
        self._max_line = max_line

    def feed(self, chunk: bytes) -> None:
        self._partial += chunk
        *complete, rest = self._partial.split(b"\n")
        for line in complete:
            self._lines.append(line[: self._max_line].decode("utf-8", "replace"))
        if len(rest) > self._max_line:
            self._lines.append(rest[: self._max_line].decode("utf-8", "replace") + "...")
            rest = b""
        self._partial = bytearray(rest)

    def lines(self) -> list[str]:
        tail = [self._partial.decode("utf-8", "replace")] if self._partial else []
        return [*self._lines, *tail]


class WorkerProcess:
    """A running worker: its pipes, its exit, and how to stop it. A worker child of the
    broker's own is a :class:`ChildProcess` (made by :func:`spawn_process`); an agent in
    the shared PTY host is a :class:`~trio_relay.broker.pty_host.HostedWorker`."""

    #: Whether :attr:`pid` is this worker's alone (and leads its own session): a process
    #: below it belongs to this agent.
    leads_session = True

    def __init__(
        self,
        name: str,
        pid: int,
        stdin: int,
        stdout: int,
        stderr: int,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.pid = pid
        self.writer = FrameWriter(stdin, name)
        self._stdout_fd = stdout
        self.stdout = trio.lowlevel.FdStream(stdout)
        self._stderr = trio.lowlevel.FdStream(stderr)
        self.stderr_ring = StderrRing()
        self.status: ExitStatus | None = None
        #: The session of the program a wrapper runs (from its hello, once checked): killed
        #: with it.
        self.program_session: int | None = None
        #: Called once, synchronously, when the exit is seen (before anyone is woken).
        self.on_exit: Callable[[], None] | None = None
        #: Processes it left that the broker was not allowed to kill ("pid N: reason").
        self.unkillable: list[str] = []
        #: What the reason of its end starts with, when more than its status tells it
        #: (an agent in the shared PTY host that died with the host).
        self.ending_note = ""
        env = env or {}
        #: The tags its descendants inherit (see sweep.py): what carries them dies with it.
        self._tags = (env.get(RUN_ENV), env.get(AGENT_ENV))
        self.stderr_closed = False
        self._lot = trio.lowlevel.ParkingLot()
        self._io_scopes: list[trio.CancelScope] = []

    # -- notifications

    def poke(self) -> None:
        """Wake every :meth:`wait_until` waiter to re-check its condition."""
        self._lot.unpark_all()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` is true, re-checking it at each :meth:`poke`."""
        while not predicate():
            await self._lot.park()
        await trio.lowlevel.checkpoint()

    @property
    def has_exited(self) -> bool:
        return self.status is not None

    # -- background tasks

    def start_tasks(self, nursery: trio.Nursery) -> None:
        """Start the exit watcher, the stdin writer and the stderr drain in ``nursery``.
        Reading stdout is the caller's job (``self.stdout``), best run with
        :meth:`start_io_task` too."""
        for task in (self._watch_exit, self.writer.run, self._drain_stderr):
            self.start_io_task(nursery, task)

    def start_io_task(
        self, nursery: trio.Nursery, task: Callable[..., Awaitable[object]], *args: object
    ) -> None:
        """Run ``task(*args)`` in ``nursery`` shielded from outside cancellation until
        :meth:`cancel_io_tasks`: stopping the child on the way out of a cancelled scope
        needs its writer and its exit watcher alive."""
        scope = trio.CancelScope(shield=True)
        self._io_scopes.append(scope)

        async def shielded() -> None:
            with scope:
                await task(*args)

        nursery.start_soon(shielded)

    def cancel_io_tasks(self) -> None:
        """End the tasks started by :meth:`start_io_task` (after the child is reaped)."""
        for scope in self._io_scopes:
            scope.cancel()

    async def _watch_exit(self) -> None:
        await self._exit_seen()
        # Kill whatever it left behind (in its group, in its program's session), then reap
        # it. Whatever goes wrong killing them, the exit is recorded.
        try:
            self._kill_leftovers()
            if self.program_session is not None:
                self.unkillable += kill_session(self.program_session)
        finally:
            status = self._reap()
            assert status is not None, "its exit was seen but it is not reapable"
            self._exited(status)

    def _exited(self, status: ExitStatus) -> None:
        self.status = status
        if self.on_exit is not None:
            self.on_exit()
        self.poke()

    # -- what a kind of worker provides

    async def _exit_seen(self) -> None:
        """Return once the worker has ended (before it is reaped)."""
        raise NotImplementedError

    def _kill_leftovers(self) -> None:
        """Kill what the ended worker left in its own group, if it has one."""

    def _reap(self) -> ExitStatus | None:
        """Its exit status if it has ended (reaping it), else None; never blocks."""
        raise NotImplementedError

    def _send_signal(self, sig: int) -> None:
        """Deliver ``sig`` to the worker (for a child: to its process group)."""
        raise NotImplementedError

    def _release(self) -> None:
        """Release what watching it took (a pidfd), once it is reaped or given up."""

    def stdout_pending(self) -> int:
        """Bytes written to the worker's stdout that the reader has not taken yet."""
        try:
            return struct.unpack("i", fcntl.ioctl(self._stdout_fd, termios.FIONREAD, b"\0" * 4))[0]
        except OSError:
            return 0  # closed meanwhile: nothing more to take

    async def kill_tagged(self) -> None:
        """Kill what still carries this worker's agent and run tags (its descendants that
        left its group and session, such as a daemon a program started), off the Trio
        thread. Those the broker may not signal are added to :attr:`unkillable`."""
        run, agent = self._tags
        if run and agent:
            self.unkillable += await trio.to_thread.run_sync(kill_tagged, run, agent)

    async def _drain_stderr(self) -> None:
        while chunk := await self._stderr.receive_some(65536):
            self.stderr_ring.feed(chunk)
        self.stderr_closed = True
        self.poke()

    # -- control

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the worker (a child: its process group), unless it has ended."""
        if self.status is None:
            self._send_signal(sig)

    async def stop(self, grace: float, kill_grace: float) -> ExitStatus:
        """Stop the worker and wait until it is reaped: a shutdown frame; after ``grace``
        seconds SIGTERM to its group; after ``kill_grace`` more, SIGKILL.

        Returns at once if it has already exited. Cancellation: not safe to cancel midway
        if the child must not outlive the call; callers shield it.
        """
        if self.status is None:
            try:
                self.writer.send_nowait(encode(Shutdown()))
            except (ChannelClosed, InputQueueFull):
                pass  # it cannot hear it (stdin gone, or not read); the signals below apply
            with trio.move_on_after(grace):
                await self.wait_until(lambda: self.has_exited)
        if self.status is None:
            log.info("%s: no exit %.1fs after shutdown; sending SIGTERM", self.name, grace)
            self.signal_group(signal.SIGTERM)
            with trio.move_on_after(kill_grace):
                await self.wait_until(lambda: self.has_exited)
        if self.status is None:
            log.warning("%s: ignored SIGTERM for %.1fs; sending SIGKILL", self.name, kill_grace)
            self.signal_group(signal.SIGKILL)
            with trio.move_on_after(max(kill_grace, UNKILLABLE_AFTER)):
                await self.wait_until(lambda: self.has_exited)
        if self.status is None:
            # Stuck in the kernel (uninterruptible sleep, a hung mount): we cannot wait for
            # ever in a shielded stop. Report it and let close() reap it if it ever dies.
            log.error(
                "%s: pid %d survived SIGKILL for %.0f s (uninterruptible?); giving up on it",
                self.name,
                self.pid,
                max(kill_grace, UNKILLABLE_AFTER),
            )
            return ExitStatus(None, signal.SIGKILL)
        return self.status

    async def close(self) -> None:
        """Release the pipes and the pidfd, killing the child first if it is somehow still
        there, and reaping it if it has died. Idempotent; never blocks for long. Run it
        shielded, after the background tasks ended."""
        if self.status is None:
            self.signal_group(signal.SIGKILL)
            for _ in range(100):  # SIGKILL is prompt unless the child is stuck in the kernel
                status = self._reap()
                if status is not None:
                    self.status = status
                    break
                await trio.sleep(0.01)
            else:
                self._not_reaped()
        self.writer.close()
        await self.stdout.aclose()
        await self._stderr.aclose()
        self._release()

    def _not_reaped(self) -> None:
        log.error("%s: pid %d is still not reaped after SIGKILL", self.name, self.pid)


class ChildProcess(WorkerProcess):
    """A worker that is the broker's own child, in its own session, watched by a pidfd."""

    def __init__(
        self,
        name: str,
        popen: subprocess.Popen[bytes],
        stdin: int,
        stdout: int,
        stderr: int,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._pidfd = os.pidfd_open(popen.pid)
        super().__init__(name, popen.pid, stdin, stdout, stderr, env)
        self.pgid = popen.pid  # start_new_session: the child leads its own group
        self._popen = popen

    async def _exit_seen(self) -> None:
        await trio.lowlevel.wait_readable(self._pidfd)

    def _kill_leftovers(self) -> None:
        # The leader is a zombie until reaped, so its group id cannot be reused yet.
        self.signal_group(signal.SIGKILL)

    def _reap(self) -> ExitStatus | None:
        returncode = self._popen.poll()
        return None if returncode is None else ExitStatus.from_returncode(returncode)

    def _send_signal(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass  # the group is already empty: nothing to signal
        except PermissionError:
            # Nothing left in it is ours to signal (a setuid program it started, say).
            log.warning(
                "%s: not allowed to send %s to its process group %d",
                self.name,
                signal_name(sig),
                self.pgid,
            )

    def _release(self) -> None:
        if self._pidfd >= 0:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


def spawn_process(
    name: str,
    argv: Sequence[str],
    *,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ChildProcess:
    """Start the child now (synchronously: a fork takes about 2 ms on the Trio thread).

    Raises SpawnFailed with the OS error for a missing binary, one that is not executable,
    or a bad working directory.
    """
    if not argv:
        raise SpawnFailed(name, "empty command")
    (stdin_w, stdout_r, stderr_r), (stdin_r, stdout_w, stderr_w) = worker_pipes(name)
    fds = [stdin_r, stdin_w, stdout_r, stdout_w, stderr_r, stderr_w]
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=stdin_r,
            stdout=stdout_w,
            stderr=stderr_w,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
        )
    except OSError as exc:
        _close_all(fds)
        where = "working directory" if cwd is not None and exc.filename == cwd else "command"
        raise SpawnFailed(
            name, f"{where} {exc.filename or argv[0]!r}: {exc.strerror}", exc.errno
        ) from exc
    except (subprocess.SubprocessError, ValueError) as exc:
        _close_all(fds)
        if isinstance(exc, ValueError):  # "embedded null byte"
            raise SpawnFailed(
                name, f"the command, cwd or environment is not valid: {exc}; remove NUL bytes"
            ) from exc
        raise SpawnFailed(name, f"child set-up failed: {exc}") from exc
    except BaseException:
        _close_all(fds)
        raise
    _close_all([stdin_r, stdout_w, stderr_w])
    try:
        return ChildProcess(name, popen, stdin_w, stdout_r, stderr_r, env)
    except BaseException as exc:
        # It runs, but cannot be watched (no pidfd here, say): it must not outlive us.
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()  # prompt after SIGKILL
        _close_all([stdin_w, stdout_r, stderr_r])
        if isinstance(exc, OSError):
            raise SpawnFailed(name, f"cannot watch the child: {exc.strerror}", exc.errno) from exc
        raise


def worker_pipes(name: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A worker's three pipes: (the broker's ends: stdin to write, stdout and stderr to
    read; the worker's ends). Raises SpawnFailed if they cannot be made (out of fds)."""
    fds: list[int] = []
    try:
        for _ in range(3):
            fds.extend(os.pipe())
    except OSError as exc:
        _close_all(fds)
        raise SpawnFailed(name, f"cannot create its pipes: {exc.strerror}", exc.errno) from exc
    stdin_r, stdin_w, stdout_r, stdout_w, stderr_r, stderr_w = fds
    return (stdin_w, stdout_r, stderr_r), (stdin_r, stdout_w, stderr_w)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
