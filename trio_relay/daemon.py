"""The broker as a service: the state directory's lock, the control server, the connection
file, the log file, and a graceful stop on SIGINT, SIGTERM or the ``shutdown`` operation."""

from __future__ import annotations

import functools
import logging
import logging.handlers
import os
import signal
from collections.abc import Iterable, Sequence
from typing import Any

import trio

from trio_relay.broker.attention import run_attention_hook
from trio_relay.broker.broker import DEFAULT_RETENTION, Broker, open_broker
from trio_relay.broker.supervisor import DEFAULT_HISTORY
from trio_relay.client import UNIX_SCHEME
from trio_relay.control.server import ControlServer
from trio_relay.profiles.catalog import Catalog, user_profile_dirs
from trio_relay.state import StateDir

log = logging.getLogger("trio_relay")


def configure_logging(
    state: StateDir, verbose: bool, *, to_stderr: bool = True, max_bytes: int = 10_000_000
) -> None:
    """Log to the state directory's ``broker.log`` (rotated at ``max_bytes``, 3 older files
    kept) and, unless ``to_stderr`` is false (a detached broker, whose stderr is up.out),
    to stderr."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(state.log_path, maxBytes=max_bytes, backupCount=3)
    ]
    if to_stderr:
        handlers.append(logging.StreamHandler())
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    logging.getLogger("trio-websocket").setLevel(logging.WARNING)


async def run_daemon(
    state: StateDir,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allowed_origins: Iterable[str] = (),
    event_buffer: int = 4096,
    retention: float | None = DEFAULT_RETENTION,
    history: int = DEFAULT_HISTORY,
    on_attention: str | None = None,
    http: tuple[str, int] | None = None,
    api_keys: Sequence[str] = (),
    cluster: str | None = None,
    broker_name: str | None = None,
    cluster_lease: float = 10.0,
    shared_pty: bool = False,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the broker until SIGINT, SIGTERM or a ``shutdown`` request; ``started`` gives the
    url once it accepts connections. ``on_attention``: a shell command run each time an
    agent turns to ``attention`` (see :mod:`trio_relay.broker.attention`). ``http``: the
    host and port of the HTTP port (agent-relay's API, ``/control`` and the dashboard;
    see :mod:`trio_relay.http`), whose url goes in the connection file; ``api_keys``: keys
    the HTTP port takes as the owner's besides the token. ``cluster``: the libpq URL of
    the cluster's PostgreSQL to join as ``broker_name`` (default: the host name; see
    :mod:`trio_relay.cluster`). ``shared_pty``: every PTY agent's worker runs in one
    shared host process (see :mod:`trio_relay.broker.pty_host`).

    Raises BrokerAlreadyRunning if another broker holds the state directory, OSError if a
    port cannot be bound, ClusterUnavailable if the cluster cannot be joined. Every agent is released before this returns.
    """
    state.acquire_lock()
    try:
        token = state.token()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_broker(
                state,
                respawn=False,
                event_capacity=event_buffer,
                retention=retention,
                history=history,
                shared_pty=shared_pty,
            ) as broker:
                server = ControlServer(
                    broker,
                    token,
                    allowed_origins=allowed_origins,
                    retention=retention,
                    profiles=Catalog(user_profile_dirs(state.path)),
                    overlays=state.path / "mcp",
                )
                socket = _socket_path(state)
                async with trio.open_nursery() as nursery:
                    url = await nursery.start(
                        functools.partial(server.serve, host, port, socket_path=socket)
                    )
                    site = None
                    if http is not None:
                        site = await _serve_http(
                            nursery, server, token, http, allowed_origins, api_keys
                        )
                    _tell_agents_where(
                        broker, server, f"{UNIX_SCHEME}://{socket}" if socket else url
                    )
                    member = None
                    if cluster is not None:
                        member = await _join_cluster(
                            nursery, server, cluster, broker_name, url, cluster_lease
                        )
                    for info in await broker.respawn():
                        log.info("respawned %s (pid %s)", info.name, info.pid)
                    if member is not None:
                        await member.after_respawn()
                    state.write_connection(url, socket, http=site.url if site else None)
                    log.info(
                        "broker %s listening on %s (state in %s)", os.getpid(), url, state.path
                    )
                    task_status.started(url)
                    nursery.start_soon(_stop_on_signal, signals, server)
                    if on_attention:
                        nursery.start_soon(run_attention_hook, broker.events, on_attention)
                    await server.shutdown_requested.wait()
                    log.info("shutting down: releasing %d agent(s)", len(broker.agents()))
                    await broker.shutdown()  # the server still answers meanwhile
                    if site is not None:
                        site.closing.set()
                    await server.close_all("the broker is shutting down")
                    nursery.cancel_scope.cancel()
    finally:
        state.release_lock()
    log.info("broker stopped")


async def _serve_http(
    nursery: trio.Nursery,
    server: ControlServer,
    token: str,
    address: tuple[str, int],
    allowed_origins: Iterable[str],
    api_keys: Sequence[str],
) -> Any:
    """Start the HTTP port in ``nursery`` (its libraries are imported only now) and let
    ``login`` mint dashboard URLs; returns the site."""
    from trio_relay.http.site import Site

    host, port = address
    site = Site(server, token, host=host, allowed_origins=allowed_origins, api_keys=api_keys)
    await nursery.start(functools.partial(site.serve, host, port))
    server.operations.login_url = site.login_url
    log.info("HTTP on %s (agent-relay's API, /control, the dashboard)", site.url)
    return site


async def _join_cluster(
    nursery: trio.Nursery,
    server: ControlServer,
    dsn: str,
    name: str | None,
    url: str,
    lease: float,
) -> Any:
    """Join the cluster (its client is imported only now) before the agents are respawned,
    so their names are claimed there; returns the membership."""
    from trio_relay.cluster.member import ClusterMember, default_broker_name

    member = ClusterMember(
        server.operations.broker, dsn, name or default_broker_name(), lease=lease
    )
    member.control_url = url
    server.also_owner = (member.credential,)  # other brokers forward snapshot and input
    await nursery.start(member.run)
    server.operations.cluster = member
    log.info("joined the cluster as broker %r", member.name)
    return member


def _socket_path(state: StateDir) -> str | None:
    """Where the Unix socket endpoint goes, or None (with a warning) if the path is too long."""
    if state.socket_usable():
        return str(state.socket_path.absolute())
    log.warning("%s is too long a path for a Unix socket; serving TCP only", state.socket_path)
    return None


def _tell_agents_where(broker: Broker, server: ControlServer, agent_url: str) -> None:
    """Every agent gets the broker's address and its own scoped token in its environment.
    Agents connect on the Unix socket when there is one: it says who they are."""
    broker.agent_environment = lambda name: {
        "TRIO_RELAY_URL": agent_url,
        "TRIO_RELAY_TOKEN": server.agent_token(name),
    }


async def _stop_on_signal(signals: trio.abc.ReceiveChannel[int], server: ControlServer) -> None:
    async for signum in signals:
        log.info("%s received", signal.Signals(signum).name)
        server.shutdown_requested.set()
