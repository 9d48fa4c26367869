"""The state directory: one broker per directory, its lock, token, connection file and store.

``.trio-relay/`` under the working directory unless told otherwise. The lock is an
``flock`` on ``broker.lock``: the kernel drops it when the broker dies, however it dies, so a
stale lock left by a dead broker is simply taken over.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trio_relay.errors import BrokerAlreadyRunning, StateDirError
from trio_relay.linux.procfs import process_alive
from trio_relay.linux.sweep import kill_run

__all__ = ["BrokerAlreadyRunning", "Connection", "StateDir", "StateDirError", "process_alive"]

DEFAULT_DIR_NAME = ".trio-relay"
LOCK_ATTEMPTS = 5


@dataclass(frozen=True)
class Connection:
    """What a client needs to reach a running broker: its TCP url, its pid, its Unix
    socket (None if it has none) and its HTTP port's url (None unless ``up --http``)."""

    url: str
    pid: int
    socket: str | None = None
    http: str | None = None


class _Entry:
    """A file of the state directory, read as an attribute: ``state.path / name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, state: StateDir | None, owner: object = None) -> Any:
        if state is None:  # read on the class: the descriptor itself
            return self
        return state.path / self.name


class StateDir:
    """Paths and files of one state directory. Create it with :meth:`open`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> StateDir:
        """The state directory at ``path`` (default ``./.trio-relay``), created mode 0700.
        Raises StateDirError if it cannot be."""
        state = cls(Path(path) if path is not None else Path.cwd() / DEFAULT_DIR_NAME)
        state.check()
        try:
            state.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirError(state.path, exc.strerror or str(exc)) from None
        return state

    def check(self) -> None:
        """Raise StateDirError if the path cannot be a state directory: it, or a directory
        above it, is something else than a directory."""
        for part in (self.path, *self.path.parents):
            if part.exists():
                if not part.is_dir():
                    what = "it" if part == self.path else str(part)
                    raise StateDirError(self.path, f"{what} is not a directory")
                return

    lock_path = _Entry("broker.lock")
    token_path = _Entry("token")
    connection_path = _Entry("connection.json")
    db_path = _Entry("relay.db")
    #: The broker's Unix socket (see :meth:`socket_usable`).
    socket_path = _Entry("control.sock")
    log_path = _Entry("broker.log")
    #: The id of the broker run that last owned this directory (see sweep.py).
    run_path = _Entry("run")

    def socket_usable(self) -> bool:
        """Whether the socket's path fits a Unix socket address (107 bytes on Linux)."""
        return len(os.fsencode(self.socket_path.absolute())) <= 107

    def kill_previous_run(self) -> None:
        """Kill what the broker run that last owned this directory left running (it died
        without shutting down, or its workers' programs escaped them). See sweep.py."""
        try:
            previous = self.run_path.read_text().strip()
        except FileNotFoundError:
            return
        if previous:
            kill_run(previous)

    # -- the lock

    def acquire_lock(self) -> None:
        """Take the one-broker lock and record our pid in it.

        Raises BrokerAlreadyRunning (naming the holder's pid) if a live broker has it.
        """
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            for attempt in range(LOCK_ATTEMPTS):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    # A client asking who holds it (lock_holder) has it for a moment.
                    if attempt == LOCK_ATTEMPTS - 1:
                        holder = os.read(fd, 32).decode(errors="replace").strip()
                        raise BrokerAlreadyRunning(
                            self.path, int(holder) if holder.isdigit() else None
                        ) from None
                    time.sleep(0.01)
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except BaseException:
            os.close(fd)  # drops the lock too
            raise
        self._lock_fd = fd

    def release_lock(self) -> None:
        """Drop the lock (also dropped by the kernel when the process dies). Idempotent."""
        if self._lock_fd is not None:
            self.connection_path.unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the token and the connection file

    def token(self) -> str:
        """The broker's token, generated at first use and kept mode 0600. An empty token
        file (a first start that died mid-write) is replaced, never used as a key."""
        try:
            token = self.token_path.read_text().strip()
        except FileNotFoundError:
            token = ""
        if token:
            return token
        token = secrets.token_urlsafe(32)
        tmp = self.token_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        tmp.replace(self.token_path)  # whole or not at all
        return token

    def write_connection(
        self, url: str, socket: str | None = None, *, http: str | None = None
    ) -> None:
        tmp = self.connection_path.with_suffix(".tmp")
        entry = {"url": url, "pid": os.getpid(), "socket": socket, "http": http}
        tmp.write_text(json.dumps(entry))
        tmp.replace(self.connection_path)

    def read_connection(self) -> Connection | None:
        """The broker's url, pid and socket as its connection file says, or None if there
        is no connection file. The file may be stale (left by a broker that was killed):
        :meth:`lock_holder` tells whether a broker runs."""
        try:
            data = json.loads(self.connection_path.read_text())
            socket, http = data.get("socket"), data.get("http")
            return Connection(
                url=str(data["url"]),
                pid=int(data["pid"]),
                socket=str(socket) if socket else None,
                http=str(http) if http else None,
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def lock_holder(self) -> int | None:
        """The pid of the broker that holds this directory's lock (0 if it cannot be read),
        or None if no broker holds it: the lock, not a connection file a dead broker left,
        says whether one runs."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                return int(holder) if holder.isdigit() else 0
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
