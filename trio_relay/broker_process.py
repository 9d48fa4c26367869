"""The broker's own program: ``trio-relay up`` checks its options, then becomes this
program in the same process (:func:`become_broker`, an ``execv``: the same pid, signals,
terminal and exit status), which imports the broker and not the command line. click and
the commands' modules would be 1.5 MB of the broker's RSS for nothing
(``tools/bench_imports.py``).

The options travel as JSON in a memory file the new program inherits, not in its argv,
where ``ps`` shows them to anyone: an API key or a cluster URL's password may be among
them. Its command line, ``python -OO -P -m trio_relay.broker_process --state-dir DIR
--options-fd N`` (``-OO``: no docstrings loaded; ``-P``: the working directory is not on
its ``sys.path``), says which broker it is. Run by hand, it refuses with a usage error.

This module imports only the standard library at the top: :func:`main` imports the
broker after :func:`trio_relay.lean_imports.install`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, NoReturn

from trio_relay import lean_imports

USAGE = (
    "usage: this is the broker's own program, started by `trio-relay up`"
    " (python -P -m trio_relay.broker_process --state-dir DIR --options-fd N); run that instead"
)


def become_broker(state_path: str, options: dict[str, Any]) -> NoReturn:
    """Replace this process with the broker's program, which runs :func:`main` with
    ``options``: ``run`` (the keyword arguments of :func:`trio_relay.daemon.run_daemon`,
    JSON-serializable, with ``host`` and ``port``), and optionally ``verbose``,
    ``to_stderr`` and ``log_max_bytes`` (see :func:`trio_relay.daemon.configure_logging`)
    and ``announce``, lines printed to stdout once the broker listens (``str.format`` with
    ``url``, ``http`` and ``state``: the SDK of ``trio-relay-agent-relay`` waits for them).
    Raises OSError (or ValueError, with no ``sys.executable``) if the program cannot be
    started; this process then goes on."""
    options_fd = os.memfd_create("trio-relay-options", 0)  # inheritable: no MFD_CLOEXEC
    try:
        os.write(options_fd, json.dumps(options).encode())  # a memory file: any size, no block
        os.lseek(options_fd, 0, os.SEEK_SET)
        # -P: the working directory is not put on sys.path, where a trio.py of the user's
        # would be imported instead of Trio (the console scripts put their bin/ there).
        # -OO: no docstrings (nor asserts) loaded with the modules, 1.3 MB of RSS; the
        # broker reads none (tools/dev.py compiles their .opt-2.pyc files).
        argv = [sys.executable, "-OO", "-P", "-m", __name__, "--state-dir", state_path]
        os.execv(sys.executable, [*argv, "--options-fd", str(options_fd)])
    finally:
        os.close(options_fd)  # reached only if execv failed


def main(argv: list[str]) -> None:
    """Run the broker with the options read from ``--options-fd`` until it stops; exit 1
    with ``Error: ...`` on stderr if it cannot start (its state directory is held, its
    store is unreadable, a port cannot be bound, the cluster cannot be joined), 2 if it
    was not started by :func:`become_broker`."""
    if len(argv) != 4 or argv[0] != "--state-dir" or argv[2] != "--options-fd":
        _exit(USAGE, 2)
    try:
        with os.fdopen(int(argv[3])) as options_file:
            options = json.load(options_file)
    except (OSError, ValueError) as exc:
        _exit(f"{USAGE}: cannot read the options: {exc}", 2)
    lean_imports.install()  # before the broker's imports
    from trio_relay.linux.malloc_arenas import one_malloc_arena

    one_malloc_arena()  # before any thread starts

    import trio

    from trio_relay.daemon import configure_logging, run_daemon
    from trio_relay.errors import (
        BrokerAlreadyRunning,
        ClusterUnavailable,
        StateDirError,
        StoreError,
    )
    from trio_relay.state import StateDir

    try:
        state = StateDir.open(argv[1])
    except StateDirError as exc:
        _exit(f"Error: {exc}", 2)
    run = options["run"]
    if run.get("http") is not None:
        run["http"] = tuple(run["http"])
    logging_options = {"to_stderr": options.get("to_stderr", True)}
    if "log_max_bytes" in options:
        logging_options["max_bytes"] = options["log_max_bytes"]
    configure_logging(state, options.get("verbose", False), **logging_options)
    announce = options.get("announce")
    if announce is not None:  # run_daemon's task_status: no nursery, so its errors come bare
        run["task_status"] = _Announcer(announce, state)
    try:
        trio.run(functools.partial(run_daemon, state, **run))
    except StoreError as exc:
        _exit(f"Error: {store_problem(exc, state.db_path)}")
    except ClusterUnavailable as exc:
        _exit(f"Error: cannot join the cluster: {exc}")
    except BrokerAlreadyRunning as exc:
        _exit(f"Error: {exc}")
    except BaseExceptionGroup as group:  # binding the port fails inside the broker's nurseries
        joining = group.subgroup(ClusterUnavailable)
        while isinstance(joining, BaseExceptionGroup):
            joining = joining.exceptions[0]
        if joining is not None:
            _exit(f"Error: cannot join the cluster: {joining}")
        bind = group.subgroup(OSError)
        if bind is None:
            raise
        while isinstance(bind, BaseExceptionGroup):
            bind = bind.exceptions[0]
        http = f" or {host_port(run['http'])}" if run.get("http") else ""
        _exit(f"Error: cannot listen on {run['host']}:{run['port']}{http}: {bind}")


class _Announcer:
    """Prints ``announce`` once the broker listens (what ``task_status.started`` is told)."""

    def __init__(self, announce: str, state: Any) -> None:
        self._announce, self._state = announce, state

    def started(self, url: str) -> None:
        connection = self._state.read_connection()
        http = connection.http if connection is not None else None
        print(self._announce.format(url=url, http=http, state=self._state.path), flush=True)


def store_problem(exc: Any, db_path: os.PathLike[str]) -> str:
    """What a StoreError at start means to the user."""
    if "not a database" in exc.error or "malformed" in exc.error:
        return (
            f"the store {db_path} is corrupt ({exc.error}); move it aside to start"
            " with an empty store (its deliveries and agents are then forgotten)"
        )
    return str(exc)


def host_port(address: tuple[str, int]) -> str:
    """``host:port``, an IPv6 host in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _exit(message: str, code: int = 1) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
