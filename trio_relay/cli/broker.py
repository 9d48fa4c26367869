"""The broker's own commands: ``up`` (foreground or --detach), ``down``, ``status``,
``prune`` and ``events``."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from trio_relay.broker_process import become_broker, host_port
from trio_relay.cli import render
from trio_relay.cli.context import (
    Settings,
    command,
    die,
    fail,
    option_with_default,
    pass_settings,
)
from trio_relay.cli.dashboard import HostPort
from trio_relay.errors import BrokerAlreadyRunning, StateDirError
from trio_relay.linux.procfs import process_alive
from trio_relay.state import StateDir

READY_TIMEOUT = 30.0  # seconds `up --detach` waits for the broker to be ready


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``12h`` or ``7d`` in seconds. Raises ValueError."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    value = float(number) * units[unit]
    if not 0 <= value < float("inf"):
        raise ValueError(f"{text!r} is not a duration")
    return value


class Duration(click.ParamType):
    """A duration on the command line (see :func:`parse_duration`); ``off`` is None."""

    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> float | None:
        if value is None or isinstance(value, float):
            return value
        if str(value).lower() in ("off", "never", "none"):
            return None
        try:
            return parse_duration(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a duration such as 90s, 30m, 12h or 7d", param, ctx)


@command(shared=["state_dir"])
@option_with_default("--host", default="127.0.0.1", help="Interface to listen on.")
@option_with_default("--port", default=0, help="Port to listen on (0: a free one).")
@click.option(
    "--allow-origin",
    "allowed_origins",
    multiple=True,
    metavar="ORIGIN",
    help="A browser Origin allowed to connect (none by default). Repeatable.",
)
@option_with_default(
    "--event-buffer",
    default=4096,
    type=click.IntRange(min=16),
    help="Events kept for replay (`events --since`), their agent output taking at most"
    " 4 MiB of memory (older output is kept compressed); a subscriber further behind gets"
    " a gap.",
)
@option_with_default(
    "--retention",
    default="7d",
    type=Duration(),
    help="Prune ended deliveries and released agents unchanged this long (off: keep all).",
)
@option_with_default(
    "--history",
    default=256,
    type=click.IntRange(min=1),
    help="Ended agents listed by `ps` (and their logs) before the oldest are forgotten.",
)
@option_with_default(
    "--log-max-mb",
    default=10.0,
    type=click.FloatRange(min=0.001),
    help="Rotate broker.log at this size; 3 older files are kept.",
)
@click.option(
    "--on-attention",
    metavar="CMD",
    help="Run CMD (with /bin/sh) whenever an agent waits for a person; it gets"
    " TRIO_RELAY_AGENT and TRIO_RELAY_ATTENTION (what the agent asks) in its environment.",
)
@click.option(
    "--http",
    type=HostPort(),
    metavar="[HOST:]PORT",
    help="Also serve HTTP on this port (host 127.0.0.1 unless given): agent-relay's API"
    " and /ws, the control protocol at /control, and the dashboard (`trio-relay dashboard`)."
    " Off by default.",
)
@click.option(
    "--api-key-env",
    metavar="VAR",
    help="The HTTP port also takes the key in environment variable VAR as the owner's"
    " (agent-relay's RELAY_BROKER_API_KEY, say), besides the token.",
)
@click.option(
    "--cluster",
    metavar="POSTGRESQL_URL",
    envvar="TRIO_RELAY_CLUSTER",
    help="Join the cluster whose PostgreSQL this libpq URL names (or $TRIO_RELAY_CLUSTER):"
    " agents of every broker in it are seen and messaged from any of them. Off by default.",
)
@click.option(
    "--broker-name",
    metavar="NAME",
    help="This broker's name in the cluster (default: the host name). Unique in it.",
)
@option_with_default(
    "--cluster-lease",
    default=10.0,
    type=click.FloatRange(min=0.5),
    metavar="SECONDS",
    help="Seconds this broker's cluster lease lasts without a heartbeat (renewed every"
    " third of it); past it, its agents show as unreachable and may be taken over.",
)
@click.option(
    "--shared-pty",
    is_flag=True,
    envvar="TRIO_RELAY_SHARED_PTY",
    help="Run every terminal agent's PTY worker in one shared host process instead of a"
    " wrapper process each (under half the memory per agent; their screens share one"
    " core). If the host dies, each of its agents gets its own agent_exited and restart"
    " policy. Off by default"
    " (or $TRIO_RELAY_SHARED_PTY=1).",
)
@click.option("--detach", is_flag=True, help="Run in the background; return once it is ready.")
@click.option(
    "--detached", is_flag=True, hidden=True, help="Started by --detach: log to broker.log only."
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
@pass_settings
def up(
    settings: Settings,
    detach: bool,
    detached: bool,
    verbose: bool,
    log_max_mb: float,
    **options: Any,
) -> None:
    """Start the broker (foreground unless --detach) until SIGINT, SIGTERM or `down`.

    It logs to stderr and to broker.log in the state directory, writes its URL to
    connection.json, listens on control.sock there too, and keeps its token in `token`
    (mode 0600). One broker per state directory. On the way out every agent is released.
    """
    try:
        state = StateDir.open(settings.state_dir)
    except StateDirError as exc:
        raise click.BadParameter(str(exc), param_hint="--state-dir") from None
    if detach:
        retention = options["retention"]
        forwarded = [
            f"--host={options['host']}",
            f"--port={options['port']}",
            f"--event-buffer={options['event_buffer']}",
            f"--retention={'off' if retention is None else f'{retention}s'}",
            f"--history={options['history']}",
            f"--log-max-mb={log_max_mb}",
            *(f"--allow-origin={o}" for o in options["allowed_origins"]),
            *([f"--http={host_port(options['http'])}"] if options["http"] else []),
            *([f"--api-key-env={options['api_key_env']}"] if options["api_key_env"] else []),
            *([f"--on-attention={options['on_attention']}"] if options["on_attention"] else []),
            *([f"--broker-name={options['broker_name']}"] if options["broker_name"] else []),
            f"--cluster-lease={options['cluster_lease']}",
            *(["--shared-pty"] if options["shared_pty"] else []),
            *(["-v"] if verbose else []),
        ]
        if options["cluster"]:  # by the environment: a password in it stays out of `ps`
            os.environ["TRIO_RELAY_CLUSTER"] = options["cluster"]
        _start_detached(state, forwarded)
        return
    variable = options.pop("api_key_env")
    if variable is not None:
        key = os.environ.pop(variable, "")  # not passed on to the agents
        if not key:
            raise click.BadParameter(f"${variable} is not set", param_hint="--api-key-env")
        options["api_keys"] = [key]

    os.environ.pop("TRIO_RELAY_CLUSTER", None)  # not passed on to the agents
    os.environ.pop("TRIO_RELAY_SHARED_PTY", None)
    if options["broker_name"] is not None and not options["cluster"]:
        raise click.BadParameter("a broker name is for a cluster: give --cluster too")
    process = {
        "verbose": verbose,
        "to_stderr": not detached,
        "log_max_bytes": int(log_max_mb * 1e6),
    }
    try:
        become_broker(str(state.path), {**process, "run": options})
    except (OSError, ValueError) as exc:
        die(f"cannot start the broker's program ({sys.executable}): {exc}")


def _start_detached(state: StateDir, forwarded: list[str]) -> None:
    """Start `up` as a daemon (see trio_relay.daemonize) and wait until it is ready; exit 1
    if one already runs there or it does not get ready."""
    from trio_relay.daemonize import spawn_detached

    holder = state.lock_holder()
    if holder is not None:  # the lock, not a connection file a dead broker left, decides
        fail(BrokerAlreadyRunning(state.path, holder))
    output = state.path / "up.out"
    if output.exists():  # what the last detached broker printed, kept once
        output.replace(output.with_suffix(".out.1"))
    argv = [sys.executable, "-m", "trio_relay", "up", "--state-dir", str(state.path)]
    pid = spawn_detached([*argv, "--detached", *forwarded], output)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        connection = state.read_connection()
        if connection is not None and connection.pid == pid:
            http = f", HTTP on {connection.http}" if connection.http else ""
            click.echo(f"broker running: pid {pid}, {connection.url}{http}, state in {state.path}")
            return
        if not pid or not process_alive(pid):
            break
        time.sleep(0.05)
    tail = output.read_text(errors="replace").splitlines()[-10:] if output.exists() else []
    die("the broker did not start:\n  " + "\n  ".join(tail))


@command()
@option_with_default(
    "--timeout",
    default=30.0,
    type=click.FloatRange(min=0),
    help="Seconds to wait for it to stop.",
)
@pass_settings
def down(settings: Settings, timeout: float) -> None:
    """Stop the broker: release every agent, then exit."""
    status = settings.call(lambda c: c.status())
    settings.call(lambda c: c.shutdown())
    deadline = time.monotonic() + timeout
    while process_alive(status.pid):
        if time.monotonic() > deadline:
            die(f"the broker (pid {status.pid}) did not stop in {timeout:g} s")
        time.sleep(0.05)
    settings.emit({"stopped": status.pid}, lambda r: click.echo(f"broker {r['stopped']} stopped"))


@command()
@pass_settings
def status(settings: Settings) -> None:
    """Show the broker's pid, URL, uptime and agents."""
    settings.show(lambda c: c.status(), render.broker_status)


@command()
@click.option(
    "--older-than",
    type=Duration(),
    metavar="DURATION",
    help="Delete what has not changed for this long (default: the broker's --retention).",
)
@pass_settings
def prune(settings: Settings, older_than: float | None) -> None:
    """Delete ended deliveries (dead letters too) and released agents from the store.

    The broker also does this on its own, hourly, for what is older than `up --retention`.
    """
    settings.show(
        lambda c: c.prune(older_than),
        lambda r: click.echo(f"pruned {r.deliveries} deliveries and {r.agents} agents"),
    )


@command()
@option_with_default("--since", default=0, type=int, help="Events numbered above SEQ.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until interrupted.")
@click.option("--agent", help="Only this agent's events.")
@click.option(
    "--cluster",
    "cluster",
    is_flag=True,
    help="Every broker's events in the broker's cluster, each line naming its broker"
    " (no agent output; not kept across restarts of this broker).",
)
@pass_settings
def events(settings: Settings, since: int, follow: bool, agent: str | None, cluster: bool) -> None:
    """Print broker events (one per line; --json for JSON lines)."""

    async def stream(client: Any) -> None:
        async with client.subscribe(since, agent=agent, cluster=cluster) as subscription:
            # Without --follow: up to the newest event the filters pass (the broker says
            # which), whoever the very newest event belongs to.
            if not follow and subscription.replay_end <= since:
                return
            async for event in subscription:
                render.event_line(event, settings.as_json)
                if not follow and event.seq >= subscription.replay_end:
                    return

    try:
        settings.call(stream)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends --follow: the normal way out
