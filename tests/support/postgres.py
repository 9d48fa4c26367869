"""A real PostgreSQL server for the tests, and a TCP proxy whose connections can be cut.

:class:`PostgresServer` runs ``initdb`` and ``pg_ctl`` (PostgreSQL 15 here, Debian's
``/usr/lib/postgresql/*/bin``) in a fresh temporary directory, as the ``postgres`` OS user
when we are root, listening on a Unix socket in a directory of its own (and on TCP too if
asked). fsync stays on: the tests check durability. :func:`postgres_missing_reason` says
why no server can be started here. :class:`CuttableProxy` forwards TCP connections to the
server's socket and can drop them all at once, as a broken network would.

Plain Python (threads and subprocesses, no Trio). Every subprocess has a timeout; a failed
or timed-out command raises :class:`PostgresError` with what it printed.
"""

from __future__ import annotations

import errno
import functools
import glob
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

#: Settings appended to postgresql.conf: a small, fast server that still fsyncs.
SETTINGS = {
    "shared_buffers": "16MB",
    "max_connections": "200",
    "huge_pages": "off",
    "dynamic_shared_memory_type": "posix",
    "max_wal_size": "256MB",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %d '",
    "timezone": "'UTC'",
}
STOP_MODES = ("smart", "fast", "immediate")
#: The programs a server needs, all from one bin directory.
PROGRAMS = ("initdb", "pg_ctl", "postgres", "psql")
#: PG* variables would redirect psql or pg_ctl elsewhere; our commands never inherit them.
_CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path, less the final NUL


class PostgresError(RuntimeError):
    """A PostgreSQL command failed, timed out or could not be run."""


def _is_bin_dir(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in PROGRAMS)


def _version_key(directory: str) -> tuple[int, ...]:
    version = Path(directory).parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)


@functools.cache
def find_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl, postgres and psql: where ``pg_ctl`` on PATH
    really lives, else the newest ``/usr/lib/postgresql/*/bin``; None if there is none.
    (Debian's ``/usr/bin/psql`` is a wrapper script; we use the real binaries.)"""
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        directory = Path(os.path.realpath(on_path)).parent
        if _is_bin_dir(directory):
            return directory
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for candidate in candidates:
        if _is_bin_dir(Path(candidate)):
            return Path(candidate)
    return None


def _as_postgres(argv: list[str]) -> list[str]:
    """``argv`` run as the ``postgres`` user if we are root (PostgreSQL refuses root),
    else as ourselves."""
    if os.geteuid() != 0:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *argv]
    return ["su", "-s", "/bin/sh", "postgres", "-c", shlex.join(argv)]


@functools.cache
def postgres_missing_reason() -> str | None:
    """Why no PostgreSQL server can be started here (no binaries; as root: no ``postgres``
    user, or no way to run a command as it), or None if one can."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return (
            "PostgreSQL is not installed: no initdb/pg_ctl/postgres/psql on PATH or in "
            "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)"
        )
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "running as root and there is no 'postgres' OS user to run the server as"
    if not (shutil.which("runuser") or shutil.which("su")):
        return "running as root and neither runuser nor su is there to become 'postgres'"
    try:
        probe = subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "--version"]),
            capture_output=True,
            text=True,
            timeout=10,
            cwd="/",
            env=_CLEAN_ENV,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not run pg_ctl as the 'postgres' user: {e}"
    if probe.returncode != 0:
        return f"could not run pg_ctl as the 'postgres' user: {probe.stderr.strip()}"
    return None


def _run(
    argv: list[str],
    *,
    timeout: float,
    cwd: Path | str = "/",
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run ``argv``; its stdout. Raises PostgresError if it cannot start, times out or
    exits non-zero."""
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            input=input,
            env=env if env is not None else _CLEAN_ENV,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise PostgresError(f"{shlex.join(argv)} timed out after {timeout} s") from e
    except OSError as e:
        raise PostgresError(f"{shlex.join(argv)} could not be run: {e}") from e
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-4000:]
        raise PostgresError(f"{shlex.join(argv)} exited with {done.returncode}: {output}")
    return done.stdout


def _process_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


class PostgresServer:
    """One PostgreSQL server in a fresh temporary directory (removed by :meth:`close`).

    ``tcp_address=(host, port)`` also listens on TCP there, trusting every client
    (``host all all 0.0.0.0/0 trust``); pick a free port, 0 is refused. The Unix socket is
    ``socket_path``; clients connect as the ``postgres`` role without a password. Usable as
    a context manager (start, then close). Raises PostgresError when a command fails (with
    the end of the server's log for start) and ValueError for bad arguments.
    """

    def __init__(
        self,
        *,
        tcp_address: tuple[str, int] | None = None,
        settings: dict[str, str] | None = None,
        base_dir: str | Path | None = None,
    ) -> None:
        """``settings`` are added to (or override) :data:`SETTINGS`, values as written in
        postgresql.conf. ``base_dir`` (default: the system's temp directory) must be
        reachable by the ``postgres`` user."""
        if tcp_address is not None and not (0 < tcp_address[1] < 65536):
            raise ValueError(f"tcp_address needs a real port, not {tcp_address[1]}")
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresError(postgres_missing_reason() or "PostgreSQL is not installed")
        self.bin_dir = bin_dir
        self.tcp_address = tcp_address
        self.port = tcp_address[1] if tcp_address else 5432
        self.settings = {**SETTINGS, **(settings or {})}
        self.root = Path(tempfile.mkdtemp(prefix="pg-", dir=base_dir))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_file = self.root / "server.log"
        self._initialized = False
        self._closed = False
        if len(str(self.socket_path)) > _SUN_PATH_MAX:
            shutil.rmtree(self.root, ignore_errors=True)
            raise ValueError(f"the socket path {self.socket_path} is too long for a socket")
        self.socket_dir.mkdir()
        os.chmod(self.root, 0o755)  # other users may reach the socket
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")

    # -- where to connect ---------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        """The server's Unix socket file (``<socket_dir>/.s.PGSQL.<port>``)."""
        return self.socket_dir / f".s.PGSQL.{self.port}"

    @property
    def dsn(self) -> str:
        """A libpq URI for the ``postgres`` database over the Unix socket."""
        return self.dsn_for("postgres")

    def dsn_for(self, db: str) -> str:
        """A libpq URI for database ``db`` over the Unix socket."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://postgres@/{quote(db, safe='')}?host={host}&port={self.port}"

    # -- lifecycle -----------------------------------------------------------------------

    def _program(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _as_server(self, argv: list[str], timeout: float) -> str:
        return _run(_as_postgres(argv), timeout=timeout, cwd=self.root)

    def _initdb(self) -> None:
        self._as_server(
            [
                self._program("initdb"),
                *("-D", str(self.data_dir), "-U", "postgres", "-A", "trust"),
                *("-E", "UTF8", "--no-locale", "--no-sync"),  # its own files only
            ],
            timeout=120,
        )
        lines = [f"{name} = {value}" for name, value in self.settings.items()]
        lines.append(f"unix_socket_directories = '{self.socket_dir}'")
        lines.append(f"port = {self.port}")
        if self.tcp_address is None:
            lines.append("listen_addresses = ''")
        else:
            lines.append(f"listen_addresses = '{self.tcp_address[0]}'")
            with (self.data_dir / "pg_hba.conf").open("a") as hba:
                hba.write("host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/support/postgres.py\n" + "\n".join(lines) + "\n")
        self._initialized = True

    @property
    def pid(self) -> int | None:
        """The postmaster's pid if it is running, else None."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (FileNotFoundError, ValueError):
            return None
        return pid if _process_alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 30) -> None:
        """Start the server (``initdb`` first, the first time); return once it accepts
        connections. Raises PostgresError with the log's end if it does not come up."""
        if self._closed:
            raise PostgresError("this server was closed")
        if not self._initialized:
            self._initdb()
        try:
            self._as_server(
                [
                    self._program("pg_ctl"),
                    *("-D", str(self.data_dir), "-l", str(self.log_file)),
                    *("-w", "-t", str(int(timeout)), "start"),
                ],
                timeout=timeout + 10,
            )
        except PostgresError as e:
            raise PostgresError(f"{e}\nserver log:\n{self.log_tail()}") from e

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """Stop the server with ``pg_ctl -m mode`` (smart, fast or immediate) and wait for
        it to exit; nothing if it is not running."""
        if mode not in STOP_MODES:
            raise ValueError(f"stop mode must be one of {STOP_MODES}, not {mode!r}")
        if not self.running:
            return
        self._as_server(
            [
                self._program("pg_ctl"),
                *("-D", str(self.data_dir), "-m", mode),
                *("-w", "-t", str(int(timeout)), "stop"),
            ],
            timeout=timeout + 10,
        )

    def restart(self, mode: str = "immediate") -> None:
        """Stop (``immediate``: no shutdown checkpoint, crash recovery at the next start)
        and start again on the same data directory."""
        self.stop(mode)
        self.start()

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL the postmaster and all its processes, as a crash would, and wait until
        they are gone (PostgresError if they are not within ``timeout``). ``start()`` then
        recovers from the WAL."""
        pid = self.pid
        if pid is None:
            return
        victims = [pid, *_children(pid)]
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while any(_process_alive(v) for v in victims):
            if time.monotonic() > deadline:
                raise PostgresError(f"server processes still alive after SIGKILL: {victims}")
            time.sleep(0.01)
        # The server would take over lock files naming a dead pid, but not an unreaped
        # (zombie) one, which still "exists": PID 1 here reaps orphans only now and then.
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the server (fast, or killed if that fails) and remove its directory.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.running:
                try:
                    self.stop("fast")
                except PostgresError:
                    self.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- using it ------------------------------------------------------------------------

    def psql(self, sql: str, db: str = "postgres", timeout: float = 30) -> str:
        """Run ``sql`` (one or more statements, stopping at the first error) with the
        ``psql`` binary in database ``db``; its output unaligned, tuples only (``|``
        between columns), without the final newline. Raises PostgresError on an error."""
        out = _run(
            [
                self._program("psql"),
                *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
                *("-d", self.dsn_for(db), "-f", "-"),
            ],
            timeout=timeout,
            input=sql,
            env={**_CLEAN_ENV, "PGCONNECT_TIMEOUT": str(max(1, int(timeout)))},
        )
        return out.removesuffix("\n")

    def create_database(self, name: str) -> str:
        """Create database ``name`` (letters, digits, ``_``; at most 63); its dsn. Raises
        ValueError for another name, PostgresError if it exists or the server is down."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, ending its sessions (``WITH (FORCE)``); nothing if it
        does not exist."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of the server's log ('' if it has none yet)."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


# -- the proxy ------------------------------------------------------------------------------

_BUFFER_LIMIT = 256 * 1024  # per direction: stop reading while this much waits to be sent
_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` at once, unsent data dropped (a reset for TCP)."""
    try:
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    except OSError:
        pass
    sock.close()


class _Side:
    """One socket of a forwarded connection, and what waits to be written to it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = bytearray()
        self.read_eof = False  # we read its end of stream
        self.shut = False  # we shut down writing to it (after its peer's end)


class _Link:
    def __init__(self, client: socket.socket, server: socket.socket, connected: bool) -> None:
        self.client = _Side(client)
        self.server = _Side(server)
        self.connected = connected

    def peer(self, side: _Side) -> _Side:
        return self.server if side is self.client else self.client


class CuttableProxy:
    """Forward TCP connections from ``listen`` (default 127.0.0.1, a free port) to
    ``target``: a Unix socket path (e.g. :attr:`PostgresServer.socket_path`) or a
    ``(host, port)``. One thread runs every connection (non-blocking sockets, a selector).

    :meth:`cut` drops every live connection at once (the client gets a reset) and, until
    :meth:`restore`, resets each new one as soon as it is accepted. A connection the
    target refuses is reset the same way. :meth:`close` ends it all; also a context manager.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | tuple[str, int],
        listen: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        if isinstance(target, tuple):
            family, _, _, _, address = socket.getaddrinfo(
                target[0], target[1], type=socket.SOCK_STREAM
            )[0]
            self._target: tuple[int, object] = (family, address)
        else:
            self._target = (socket.AF_UNIX, os.fspath(target))
        self._listener = socket.create_server(listen)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._links: set[_Link] = set()
        self._held: list[socket.socket] = []  # server sides kept open by cut(keep_server_side)
        self._masks: dict[socket.socket, int] = {}
        self._requests: list[tuple[str, threading.Event]] = []
        self._handled: dict[threading.Event, str] = {}
        self._lock = threading.Lock()
        self._cut = False
        self._closed = False
        self._failure: BaseException | None = None
        self._keep_server_side = False
        self.accepted = 0  # connections accepted so far (cut or not)
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name="CuttableProxy", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) that clients connect to."""
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def live_connections(self) -> int:
        """Connections being forwarded now."""
        return len(self._links)

    def cut(self, keep_server_side: bool = False, timeout: float = 10) -> None:
        """Drop every live connection and reset new ones until :meth:`restore`. Returns
        once they are closed. The server's sides are closed too (the server sees the
        connection end), unless ``keep_server_side``: then they stay open, unread, until
        restore() or close(), as a broken network leaves them (the server's sessions and
        their locks live on). Raises RuntimeError if the proxy is closed or failed."""
        self._ask("cut_keep" if keep_server_side else "cut", timeout)

    def restore(self, timeout: float = 10) -> None:
        """Forward new connections again (and close the server sides cut() kept)."""
        self._ask("restore", timeout)

    def close(self) -> None:
        """Close every connection and the listener; stop the thread. Idempotent. Raises
        RuntimeError if the thread had failed."""
        with self._lock:
            already, self._closed = self._closed, True
            if not already:
                self._wake()
        if not already:
            self._thread.join(timeout=10)
            self._wake_w.close()
        if self._failure is not None:
            raise RuntimeError("the proxy's thread failed") from self._failure

    def __enter__(self) -> CuttableProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # the thread has already ended
            pass

    def _ask(self, request: str, timeout: float) -> None:
        done = threading.Event()
        with self._lock:
            if self._closed or self._failure is not None:
                raise RuntimeError("the proxy is closed") from self._failure
            self._requests.append((request, done))
            self._wake()
        if not done.wait(timeout):
            raise RuntimeError(f"the proxy did not {request} within {timeout} s")
        if self._failure is not None or self._handled.pop(done, None) != request:
            raise RuntimeError(f"the proxy ended before it could {request}") from self._failure

    # -- the thread --------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._closed:
                for key, mask in self._selector.select():
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._handle_requests()
                    else:
                        link, side = key.data
                        if link in self._links:
                            self._service(link, side, mask)
        except BaseException as e:  # kept for close() to raise
            self._failure = e
        finally:
            self._shutdown()

    def _handle_requests(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            requests, self._requests = self._requests, []
        for request, done in requests:
            if request in ("cut", "cut_keep"):
                self._cut = True
                for link in list(self._links):
                    self._drop(link, keep_server_side=request == "cut_keep")
            elif request == "restore":
                self._cut = False
                for sock in self._held:
                    sock.close()
                self._held.clear()
            self._handled[done] = request
            done.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. EMFILE: leave it queued; try at the next event
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                raise
            self.accepted += 1
            if self._cut:
                _abort(client)
                continue
            client.setblocking(False)
            family, address = self._target
            server = socket.socket(family, socket.SOCK_STREAM)
            server.setblocking(False)
            result = server.connect_ex(address)  # type: ignore[arg-type]
            if result == 0:
                connected = True
            elif result == errno.EINPROGRESS and family != socket.AF_UNIX:
                connected = False
            else:  # refused, missing, or (Unix) backlog full
                server.close()
                _abort(client)
                continue
            for sock in (client, server):
                if sock.family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, server, connected)
            self._links.add(link)
            self._update(link)

    def _service(self, link: _Link, side: _Side, mask: int) -> None:
        try:
            if not link.connected:  # the server side's connect finished
                error = side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    self._drop(link)
                    return
                link.connected = True
            else:
                if mask & selectors.EVENT_READ:
                    self._read(link, side)
                if mask & selectors.EVENT_WRITE and link in self._links:
                    self._write(link, side)
        except OSError:  # a reset, a broken pipe: drop both ends
            self._drop(link)
            return
        if link in self._links:
            if all(s.read_eof and s.shut for s in (link.client, link.server)):
                self._forget(link)
                link.client.sock.close()
                link.server.sock.close()
            else:
                self._update(link)

    def _read(self, link: _Link, side: _Side) -> None:
        peer = link.peer(side)
        try:
            data = side.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            peer.out += data
            self._write(link, peer)
        else:
            side.read_eof = True
            self._finish(peer)

    def _write(self, link: _Link, side: _Side) -> None:
        if side.out:
            try:
                sent = side.sock.send(side.out)
            except (BlockingIOError, InterruptedError):
                return
            del side.out[:sent]
        if not side.out and link.peer(side).read_eof:
            self._finish(side)

    def _finish(self, side: _Side) -> None:
        """Pass the peer's end of stream on once everything before it is written."""
        if not side.out and not side.shut:
            side.shut = True
            try:
                side.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _update(self, link: _Link) -> None:
        for side in (link.client, link.server):
            peer = link.peer(side)
            if not link.connected:
                mask = selectors.EVENT_WRITE if side is link.server else 0
            else:
                mask = 0
                if not side.read_eof and len(peer.out) < _BUFFER_LIMIT:
                    mask |= selectors.EVENT_READ
                if side.out:
                    mask |= selectors.EVENT_WRITE
            old = self._masks.get(side.sock, 0)
            if mask == old:
                continue
            if old == 0:
                self._selector.register(side.sock, mask, (link, side))
            elif mask == 0:
                self._selector.unregister(side.sock)
            else:
                self._selector.modify(side.sock, mask, (link, side))
            if mask:
                self._masks[side.sock] = mask
            else:
                self._masks.pop(side.sock, None)

    def _forget(self, link: _Link) -> None:
        self._links.discard(link)
        for side in (link.client, link.server):
            if self._masks.pop(side.sock, 0):
                self._selector.unregister(side.sock)

    def _drop(self, link: _Link, keep_server_side: bool = False) -> None:
        self._forget(link)
        _abort(link.client.sock)
        if keep_server_side:
            self._held.append(link.server.sock)
        else:
            _abort(link.server.sock)

    def _shutdown(self) -> None:
        for link in list(self._links):
            self._drop(link)
        for sock in self._held:
            sock.close()
        self._held.clear()
        with self._lock:
            self._closed = True
            requests, self._requests = self._requests, []
        for _, done in requests:
            done.set()
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
