"""One worker child process: spawn, write frames, drain stderr, watch for exit, stop, reap.

Linux only: the child is forked from the Trio thread with ``PR_SET_PDEATHSIG`` (the death
signal follows the *thread* that forked, which is why this does not use ``trio.to_thread``,
whose threads exit when idle), its exit is watched through a pidfd, and it runs in its own
session, so its process group can be signalled as one.

Start a child with :func:`spawn_process`, run its background tasks with
:meth:`WorkerProcess.start_tasks`, stop it with :meth:`WorkerProcess.stop` (shutdown frame,
SIGTERM to its group after a grace period, then SIGKILL) and release its pipes with
:meth:`WorkerProcess.close`.
"""

from __future__ import annotations

import ctypes
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

from trio_relay.errors import ChannelClosed, InputQueueFull, SpawnFailed, signal_name
from trio_relay.linux.sweep import AGENT_ENV, RUN_ENV, kill_session, kill_tagged
from trio_relay.wire import Shutdown, encode

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: How long to wait for a SIGKILLed child before reporting it as stuck in the kernel.
UNKILLABLE_AFTER = 10.0
#: Bytes of frames that may wait for a worker that does not read its stdin; beyond this a
#: send fails with InputQueueFull instead of growing the broker.
DEFAULT_MAX_QUEUED = 8 * 1024 * 1024
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: SIGKILL this child when the broker (the forking thread) dies."""

    def setup() -> None:
        if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:  # the broker died before prctl took effect
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


class _Batch:
    __slots__ = ("frames", "done", "error")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.done = trio.Event()
        self.error: BaseException | None = None


class FrameWriter:
    """Writes whole frames to a pipe, in order, never interleaved or cut.

    :meth:`send` writes at once when the pipe has room and nothing is queued (the common
    case, no task switch); otherwise the frame joins a batch that :meth:`run` (a task of the
    worker's nursery, the only other writer of the pipe) writes when the pipe drains. At
    most ``max_queued`` bytes wait: a worker that does not read cannot grow the broker.
    """

    def __init__(self, fd: int, name: str = "worker", max_queued: int = DEFAULT_MAX_QUEUED) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._name = name
        self._open = _Batch()
        self._busy = False
        self._error: BaseException | None = None
        self._lot = trio.lowlevel.ParkingLot()
        self.max_queued = max_queued
        #: Bytes of frames not yet written (queued, or in the batch being written).
        self.queued = 0

    async def send(self, frame: bytes) -> None:
        """Write one encoded frame; return once it is written.

        Raises ChannelClosed if the pipe is broken or closed before the frame is written,
        InputQueueFull if ``max_queued`` bytes already wait. Cancellation: a cancel point.
        If cancelled while its frame waits for the pipe, the frame is dropped unless its
        writing has begun; then it is still written whole, never cut.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._error is not None:
            raise self._closed(self._error)
        if not self._busy and not self._open.frames:
            try:
                written = os.write(self._fd, frame)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                self._fail(exc)
                raise self._closed(exc) from exc
            if written == len(frame):
                return
            frame = frame[written:]
            # Begun: it must be finished whole, so it is queued whatever the bound says.
        elif self.queued + len(frame) > self.max_queued:
            raise self._full(len(frame))
        batch = self._enqueue(frame)
        try:
            await batch.done.wait()
        except BaseException:
            if batch is self._open:  # not taken for writing yet: it never reaches the worker
                self._dequeue(batch, frame)
            raise
        if batch.error is not None:
            raise self._closed(batch.error) from batch.error

    def send_nowait(self, frame: bytes) -> None:
        """Queue one frame without waiting for it to be written (best effort).

        Raises ChannelClosed if the writer is already closed or broken, InputQueueFull if
        ``max_queued`` bytes already wait.
        """
        if self._error is not None:
            raise self._closed(self._error)
        if self.queued + len(frame) > self.max_queued:
            raise self._full(len(frame))
        self._enqueue(frame)

    def _enqueue(self, frame: bytes) -> _Batch:
        batch = self._open
        batch.frames.append(frame)
        self.queued += len(frame)
        self._lot.unpark_all()
        return batch

    def _dequeue(self, batch: _Batch, frame: bytes) -> None:
        for i, queued in enumerate(batch.frames):
            if queued is frame:
                del batch.frames[i]
                self.queued -= len(frame)
                return

    async def run(self) -> None:
        """Write queued batches until closed. Never raises on a broken pipe: the pipe's
        error is handed to the batch's senders (as ChannelClosed) instead."""
        try:
            while self._error is None:
                if not self._open.frames:
                    await self._lot.park()
                    continue
                batch, self._open = self._open, _Batch()
                data = b"".join(batch.frames)
                self._busy = True
                try:
                    await self._write_all(data)
                except (OSError, trio.ClosedResourceError) as exc:
                    batch.error = exc
                    self._fail(exc)
                finally:
                    self._busy = False
                    self.queued -= len(data)
                    batch.done.set()
        finally:
            self._fail(ChannelClosed("writer stopped"))

    async def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._fd)
            else:
                view = view[written:]

    def _closed(self, cause: BaseException) -> ChannelClosed:
        return ChannelClosed(
            f"cannot write to agent {self._name!r} ({cause}): it has exited or closed its "
            f"stdin; see `trio-relay ps` and `trio-relay logs {self._name}`"
        )

    def _full(self, size: int) -> InputQueueFull:
        return InputQueueFull(self._name, self.queued, self.max_queued)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        batch, self._open = self._open, _Batch()
        self.queued -= sum(len(frame) for frame in batch.frames)
        batch.error = self._error
        batch.done.set()
        self._lot.unpark_all()

    def close(self) -> None:
        """Fail what is queued with ChannelClosed and close the pipe. Idempotent."""
        self._fail(ChannelClosed("worker stdin closed"))
        if self._fd >= 0:
            trio.lowlevel.notify_closing(self._fd)
            os.close(self._fd)
            self._fd = -1


class WorkerProcess:
    """A running worker child. Created by :func:`spawn_process`."""

    def __init__(
        self,
        name: str,
        popen: subprocess.Popen[bytes],
        stdin: int,
        stdout: int,
        stderr: int,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.pid = popen.pid
        self.pgid = popen.pid  # start_new_session: the child leads its own group
        self._popen = popen
        self.writer = FrameWriter(stdin, name)
        self._stdout_fd = stdout
        self.stdout = trio.lowlevel.FdStream(stdout)
        self._stderr = trio.lowlevel.FdStream(stderr)
        self.stderr_ring = StderrRing()
        self._pidfd = os.pidfd_open(self.pid)
        self.status: ExitStatus | None = None
        #: The session of the program a wrapper runs (from its hello, once checked): killed
        #: with it.
        self.program_session: int | None = None
        #: Called once, synchronously, when the exit is seen (before anyone is woken).
        self.on_exit: Callable[[], None] | None = None
        #: Processes it left that the broker was not allowed to kill ("pid N: reason").
        self.unkillable: list[str] = []
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
        await trio.lowlevel.wait_readable(self._pidfd)
        # The leader is a zombie until reaped, so its group id cannot be reused yet:
        # kill whatever it left behind in its group (and in its program's session), then
        # reap it. Whatever goes wrong killing them, the exit is recorded.
        try:
            self.signal_group(signal.SIGKILL)
            if self.program_session is not None:
                self.unkillable += kill_session(self.program_session)
        finally:
            returncode = self._popen.poll()
            assert returncode is not None, "pidfd readable but the child is not reapable"
            self.status = ExitStatus.from_returncode(returncode)
            if self.on_exit is not None:
                self.on_exit()
            self.poke()

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
        """Send ``sig`` to the worker's process group, if anything is left in it."""
        if self.status is not None:
            return
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
                returncode = self._popen.poll()
                if returncode is not None:
                    self.status = ExitStatus.from_returncode(returncode)
                    break
                await trio.sleep(0.01)
            else:
                log.error("%s: pid %d is still not reaped after SIGKILL", self.name, self.pid)
        self.writer.close()
        await self.stdout.aclose()
        await self._stderr.aclose()
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
) -> WorkerProcess:
    """Start the child now (synchronously: a fork takes about 2 ms on the Trio thread).

    Raises SpawnFailed with the OS error for a missing binary, one that is not executable,
    or a bad working directory.
    """
    if not argv:
        raise SpawnFailed(name, "empty command")
    fds: list[int] = []
    try:
        for _ in range(3):
            fds.extend(os.pipe())
    except OSError as exc:
        _close_all(fds)
        raise SpawnFailed(name, f"cannot create its pipes: {exc.strerror}", exc.errno) from exc
    stdin_r, stdin_w, stdout_r, stdout_w, stderr_r, stderr_w = fds
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
        return WorkerProcess(name, popen, stdin_w, stdout_r, stderr_r, env)
    except BaseException as exc:
        # It runs, but cannot be watched (no pidfd here, say): it must not outlive us.
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()  # prompt after SIGKILL
        _close_all([stdin_w, stdout_r, stderr_r])
        if isinstance(exc, OSError):
            raise SpawnFailed(name, f"cannot watch the child: {exc.strerror}", exc.errno) from exc
        raise


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
