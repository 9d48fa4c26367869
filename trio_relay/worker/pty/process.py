"""A program in a pseudo-terminal: spawn it, resize its terminal, signal its session, reap it.

Linux only. The program runs in its own session with the PTY's slave side as its
controlling terminal (so ``tty``, job control and SIGWINCH work), gets SIGKILL if the
process that spawned it dies (``PR_SET_PDEATHSIG``), and is watched through a pidfd. The
caller reads and writes the non-blocking master side (:attr:`PtyProcess.master`); reading it
fails with EIO once every process has closed the slave side: that is end of file.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import termios
from collections.abc import Mapping, Sequence

from trio_relay.linux.deathsig import death_signal
from trio_relay.linux.procfs import session_members


def set_window_size(fd: int, rows: int, cols: int) -> None:
    """Set the terminal size of ``fd``; on a PTY master the kernel then sends SIGWINCH to
    the terminal's foreground process group. Raises OSError."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyProcess:
    """A running program on a PTY. Create with :meth:`spawn`; :meth:`close` when done."""

    def __init__(self, pid: int, master: int, argv: Sequence[str]) -> None:
        self.pid = pid  # also its session id and process group id: it leads both
        self.master = master
        self.argv = list(argv)
        self.pidfd = os.pidfd_open(pid)
        self.returncode: int | None = None
        #: Processes in its session that could not be signalled (not ours to signal).
        self.refused: list[int] = []

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        rows: int = 24,
        cols: int = 80,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> PtyProcess:
        """Start ``argv`` (searched on PATH) on a new ``rows`` x ``cols`` PTY.

        Raises OSError carrying the errno and file name when the program cannot be started
        (missing, not executable, bad ``cwd``), after reaping the failed child.
        """
        if not argv:
            raise ValueError("no command to run")
        environ = dict(os.environ if env is None else env)
        master, slave = os.openpty()
        try:
            set_window_size(slave, rows, cols)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _exec_child(argv, environ, cwd, master, slave, err_r, err_w, parent)
        os.close(slave)
        os.close(err_w)
        try:
            report = _read_all(err_r)
        finally:
            os.close(err_r)
        if report:
            os.close(master)
            os.waitpid(pid, 0)
            errno_text, _, message = report.decode("utf-8", "replace").partition(":")
            where = cwd if errno_text.startswith("cwd") else argv[0]
            raise OSError(int(errno_text.removeprefix("cwd") or 0), message, where)
        os.set_blocking(master, False)
        return cls(pid, master, argv)

    def resize(self, rows: int, cols: int) -> None:
        """Raises OSError if the terminal is gone."""
        set_window_size(self.master, rows, cols)

    def signal_session(self, sig: int) -> int:
        """Send ``sig`` to every process left in the program's session (its own process
        group, and the groups job control made). Returns how many processes were signalled;
        processes that vanish meanwhile are skipped, and those it may not signal (another
        user's, such as a ``sudo`` in the terminal) are left alone and listed in
        :attr:`refused`."""
        count = 0
        for pid in _session_members(self.pid):
            try:
                os.kill(pid, sig)
                count += 1
            except ProcessLookupError:
                pass  # it exited between the scan and the signal
            except PermissionError:
                if pid not in self.refused:
                    self.refused.append(pid)
        return count

    def poll(self) -> int | None:
        """Reap the program if it has exited. Returns its return code (negative: killed by
        that signal) or None while it runs."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def close(self) -> None:
        """Close the master and the pidfd. Idempotent; does not signal or reap."""
        for name in ("master", "pidfd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


def _session_members(sid: int) -> list[int]:
    """Pids whose session is ``sid`` (from /proc), the session leader first if alive."""
    return sorted(session_members(sid, zombies=True), key=lambda pid: pid != sid)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _exec_child(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: str | None,
    master: int,
    slave: int,
    err_r: int,
    err_w: int,
    parent: int,
) -> None:
    """In the forked child: become a session leader on the PTY and exec. Any failure is
    written to ``err_w`` as ``errno:message`` (``cwd`` prefixed for a bad directory)."""
    stage = ""
    try:
        os.close(master)
        os.close(err_r)
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if slave > 2:
            os.close(slave)
        if not death_signal(parent)():  # ctypes loaded here, in the child only
            os._exit(137)  # the worker died before the request took effect
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores some; programs expect defaults
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        if cwd is not None:
            stage = "cwd"
            os.chdir(cwd)
            stage = ""
        os.execvpe(argv[0], list(argv), env)
    except BaseException as exc:
        errno = getattr(exc, "errno", None) or 0
        message = getattr(exc, "strerror", None) or str(exc)
        try:
            os.write(err_w, f"{stage}{errno}:{message}".encode())
        finally:
            os._exit(127)
    os._exit(127)
