"""The ``trio-relay`` command line (click): parse, call the broker, print.

Exit codes: 0 success; 1 the operation failed (``Agent error: ...`` when it reached the
agent); 2 usage; 3 no broker reachable.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import string
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import click
import msgspec
import trio

from trio_relay import __version__
from trio_relay.linux.sweep import process_alive
from trio_relay.wire import (
    AgentSummary,
    BrokerStatus,
    DeliveryRecord,
    PendingDeliveries,
    SendReceipt,
)
from trio_relay.wire.vocabulary import INJECT_MODES, RESTART_MODES

T = TypeVar("T")

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
AGENT_ERROR_CODES = frozenset({"worker_error", "worker_exited", "timeout"})


# ---------------------------------------------------------------- plumbing


def client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every client command shares: where the broker is, and --json."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(fn)
    fn = click.option(
        "--token",
        envvar="TRIO_RELAY_TOKEN",
        help="The broker's token (default: from the state directory).",
    )(fn)
    fn = click.option(
        "--url",
        envvar="TRIO_RELAY_URL",
        help="The broker's URL (default: from the state directory).",
    )(fn)
    fn = click.option(
        "--state-dir",
        type=click.Path(file_okay=False),
        help="The state directory (default: ./.trio-relay).",
    )(fn)
    return fn


def call_broker(kwargs: dict[str, Any], action: Callable[[Any], Awaitable[T]]) -> T:
    """Connect with the shared options in ``kwargs``, run ``action(client)``, and turn the
    errors into the documented messages and exit codes."""
    from trio_relay.client import open_client
    from trio_relay.errors import BadAddress, BrokerUnreachable, RemoteError

    async def run() -> T:
        async with open_client(
            kwargs.get("url"), kwargs.get("token"), kwargs.get("state_dir")
        ) as client:
            return await action(client)

    try:
        return trio.run(run)
    except BrokerUnreachable as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    except BadAddress as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except RemoteError as exc:
        if exc.code == "bad_request":
            click.echo(f"Error: {exc.message}", err=True)
            sys.exit(EXIT_USAGE)
        prefix = "Agent error" if exc.code in AGENT_ERROR_CODES else "Error"
        click.echo(f"{prefix}: {exc.message}", err=True)
        sys.exit(EXIT_FAILED)


def emit(result: Any, as_json: bool, human: Callable[[Any], None] | None = None) -> None:
    if as_json:
        click.echo(msgspec.json.encode(result).decode())
    elif human is not None:
        human(result)
    elif result is not None:
        click.echo(json.dumps(result, indent=2))


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo(
            "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        )


def _age(started: float | None) -> str:
    if not started:
        return "-"
    seconds = int(time.time() - started)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


# ---------------------------------------------------------------- commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trio-relay")
def main() -> None:
    """trio-relay: supervise terminal programs and AI agent CLIs, and relay messages to them.

    Start a broker with `trio-relay up`; the other commands talk to it. They find it through
    the state directory (./.trio-relay, or --state-dir), or TRIO_RELAY_URL and
    TRIO_RELAY_TOKEN.

    Exit codes: 0 success, 1 the operation failed, 2 usage, 3 no broker reachable.
    """


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


@main.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="The state directory (default: ./.trio-relay).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=0, show_default=True, help="Port to listen on (0: a free one).")
@click.option(
    "--allow-origin",
    "origins",
    multiple=True,
    metavar="ORIGIN",
    help="A browser Origin allowed to connect (none by default). Repeatable.",
)
@click.option(
    "--event-buffer",
    default=4096,
    show_default=True,
    type=click.IntRange(min=16),
    help="Events kept for replay (`events --since`); a subscriber further behind gets a gap.",
)
@click.option(
    "--retention",
    default="7d",
    show_default=True,
    type=Duration(),
    help="Prune ended deliveries and released agents unchanged this long (off: keep all).",
)
@click.option(
    "--history",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="Ended agents listed by `ps` (and their logs) before the oldest are forgotten.",
)
@click.option(
    "--log-max-mb",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Rotate broker.log at this size; 3 older files are kept.",
)
@click.option("--detach", is_flag=True, help="Run in the background; return once it is ready.")
@click.option(
    "--detached", is_flag=True, hidden=True, help="Started by --detach: log to broker.log only."
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
def up(
    state_dir: str | None,
    host: str,
    port: int,
    origins: tuple[str, ...],
    event_buffer: int,
    retention: float | None,
    history: int,
    log_max_mb: float,
    detach: bool,
    detached: bool,
    verbose: bool,
) -> None:
    """Start the broker (foreground unless --detach) until SIGINT, SIGTERM or `down`.

    It logs to stderr and to broker.log in the state directory, writes its URL to
    connection.json, listens on control.sock there too, and keeps its token in `token`
    (mode 0600). One broker per state directory. On the way out every agent is released.
    """
    from trio_relay.errors import BrokerAlreadyRunning, StateDirError, StoreError
    from trio_relay.state import StateDir

    try:
        state = StateDir.open(state_dir)
    except StateDirError as exc:
        raise click.BadParameter(str(exc), param_hint="--state-dir") from None
    if detach:
        forwarded = [
            "--host",
            host,
            "--port",
            str(port),
            "--event-buffer",
            str(event_buffer),
            "--retention",
            "off" if retention is None else f"{retention}s",
            "--history",
            str(history),
            "--log-max-mb",
            str(log_max_mb),
        ]
        forwarded += [f"--allow-origin={o}" for o in origins] + (["-v"] if verbose else [])
        _detach(state, forwarded)
        return
    from trio_relay.daemon import configure_logging, run_daemon

    configure_logging(state, verbose, to_stderr=not detached, max_bytes=int(log_max_mb * 1e6))
    try:
        trio.run(
            functools.partial(
                run_daemon,
                state,
                host=host,
                port=port,
                allowed_origins=origins,
                event_buffer=event_buffer,
                retention=retention,
                history=history,
            )
        )
    except (BrokerAlreadyRunning, StoreError) as exc:
        click.echo(f"Error: {_up_error(exc, state)}", err=True)
        sys.exit(EXIT_FAILED)
    except BaseExceptionGroup as group:  # binding the port fails inside the broker's nurseries
        bind = group.subgroup(OSError)
        if bind is None:
            raise
        while isinstance(bind, BaseExceptionGroup):
            bind = bind.exceptions[0]
        click.echo(f"Error: cannot listen on {host}:{port}: {bind}", err=True)
        sys.exit(EXIT_FAILED)


def _up_error(exc: Exception, state: Any) -> str:
    from trio_relay.errors import StoreError

    if isinstance(exc, StoreError) and ("not a database" in exc.error or "malformed" in exc.error):
        return (
            f"the store {state.db_path} is corrupt ({exc.error}); move it aside to start"
            " with an empty store (its deliveries and agents are then forgotten)"
        )
    return str(exc)


def _detach(state: Any, forwarded: list[str]) -> None:
    """Start `up` in its own session, not as our child, and wait until it is ready."""
    holder = state.lock_holder()
    if holder is not None:  # the lock, not a connection file a dead broker left, decides
        who = f"pid {holder}" if holder else "another process"
        click.echo(f"Error: a broker ({who}) is already running on {state.path}", err=True)
        sys.exit(EXIT_FAILED)
    argv = [
        sys.executable,
        "-m",
        "trio_relay",
        "up",
        "--state-dir",
        str(state.path),
        "--detached",
        *forwarded,
    ]
    output = state.path / "up.out"
    if output.exists():  # what the last detached broker printed, kept once
        output.replace(output.with_suffix(".out.1"))
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the intermediate: start the daemon in a new session, report its pid, go
        try:
            os.close(read_end)
            os.setsid()
            with open(output, "ab") as out:
                pid = os.posix_spawn(
                    sys.executable,
                    argv,
                    os.environ,
                    file_actions=[
                        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                        (os.POSIX_SPAWN_DUP2, out.fileno(), 2),
                    ],
                )
            os.write(write_end, str(pid).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end) as pipe:
        pid = int(pipe.read() or 0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        connection = state.read_connection()
        if connection is not None and connection.pid == pid:
            click.echo(f"broker running: pid {pid}, {connection.url}, state in {state.path}")
            return
        if not pid or not process_alive(pid):
            break
        time.sleep(0.05)
    tail = output.read_text(errors="replace").splitlines()[-10:] if output.exists() else []
    click.echo("Error: the broker did not start:\n  " + "\n  ".join(tail), err=True)
    sys.exit(EXIT_FAILED)


@main.command()
@client_options
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to wait for it to stop.",
)
def down(timeout: float, **kwargs: Any) -> None:
    """Stop the broker: release every agent, then exit."""
    status = call_broker(kwargs, lambda c: c.status())
    call_broker(kwargs, lambda c: c.shutdown())
    deadline = time.monotonic() + timeout
    while process_alive(status.pid):
        if time.monotonic() > deadline:
            click.echo(
                f"Error: the broker (pid {status.pid}) did not stop in {timeout:g} s", err=True
            )
            sys.exit(EXIT_FAILED)
        time.sleep(0.05)
    emit(
        {"stopped": status.pid},
        kwargs["as_json"],
        lambda r: click.echo(f"broker {r['stopped']} stopped"),
    )


@main.command()
@client_options
def status(**kwargs: Any) -> None:
    """Show the broker's pid, URL, uptime and agents."""

    def human(s: BrokerStatus) -> None:
        agents = ", ".join(f"{n} {state}" for state, n in sorted(s.agents.items())) or "none"
        click.echo(f"broker {s.version}  pid {s.pid}  {s.url}  up {_age(time.time() - s.uptime)}")
        click.echo(f"agents: {agents}")
        r = s.requests
        click.echo(
            f"requests: {r['pending']} pending, {r['completed']} completed, {r['timed_out']} timed out, "
            f"{r['failed']} failed, {r['late_dropped']} late answers dropped"
        )

    emit(call_broker(kwargs, lambda c: c.status()), kwargs["as_json"], human)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--native", is_flag=True, help="COMMAND speaks the worker protocol itself (no PTY).")
@click.option("--cwd", type=click.Path(file_okay=False), help="Working directory of COMMAND.")
@click.option(
    "--env",
    "env",
    multiple=True,
    metavar="K=V",
    help="Environment variable for COMMAND. Repeatable.",
)
@click.option("--rows", default=24, show_default=True, help="Terminal rows.")
@click.option("--cols", default=80, show_default=True, help="Terminal columns.")
@click.option(
    "--restart",
    type=click.Choice(RESTART_MODES),
    default="never",
    show_default=True,
    help="Restart policy.",
)
@client_options
def spawn(
    name: str,
    command: tuple[str, ...],
    native: bool,
    cwd: str | None,
    env: tuple[str, ...],
    rows: int,
    cols: int,
    restart: str,
    **kwargs: Any,
) -> None:
    """Start COMMAND as agent NAME: `trio-relay spawn alice -- claude`.

    COMMAND runs in a pseudo-terminal under the PTY worker, unless --native.
    """
    variables = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected K=V, got {item!r}", param_hint="--env")
        variables[key] = value
    result = call_broker(
        kwargs,
        lambda c: c.spawn(
            name,
            list(command),
            cwd=os.path.abspath(cwd) if cwd else None,
            env=variables,
            native=native,
            rows=rows,
            cols=cols,
            restart=restart,
        ),
    )
    emit(result, kwargs["as_json"], lambda a: click.echo(f"{a.name} running, pid {a.pid}"))


@main.command()
@client_options
def ps(**kwargs: Any) -> None:
    """List the agents: state, pid, uptime, restarts, pending deliveries, last activity,
    last exit."""

    def human(agents: list[AgentSummary]) -> None:
        if not agents:
            click.echo("no agents")
            return
        table(
            [
                [
                    a.name,
                    a.state,
                    str(a.pid or "-"),
                    _age(a.started_at) if a.state == "running" else "-",
                    str(a.restarts),
                    str(a.pending_deliveries),
                    f"{_age(a.last_activity)} ago" if a.last_activity else "-",
                    a.last_exit or "-",
                ]
                for a in agents
            ],
            ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "PENDING", "LAST ACTIVITY", "LAST EXIT"],
        )

    emit(call_broker(kwargs, lambda c: c.agents()), kwargs["as_json"], human)


@main.command()
@click.argument("name")
@client_options
def release(name: str, **kwargs: Any) -> None:
    """Stop agent NAME for good (shutdown, then SIGTERM, then SIGKILL)."""
    result = call_broker(kwargs, lambda c: c.release(name))
    emit(result, kwargs["as_json"], lambda a: click.echo(f"{a.name} released ({a.last_exit})"))


@main.command("input")
@click.argument("name")
@click.argument("text")
@click.option("--enter", is_flag=True, help="Press Enter after TEXT.")
@click.option("--raw", is_flag=True, help="Send TEXT as it is: no escapes.")
@client_options
def input_(name: str, text: str, enter: bool, raw: bool, **kwargs: Any) -> None:
    """Type TEXT into agent NAME's terminal.

    Escapes are honoured unless --raw: \\r (Enter), \\n, \\t, \\e (Esc), \\xHH,
    \\uHHHH, \\UHHHHHHHH, \\\\ (a backslash); for example \\x03 is Ctrl-C. Put -- before a
    TEXT that starts with a dash: `trio-relay input NAME -- -R`.
    """
    try:
        data = text if raw else unescape(text)
    except ValueError as exc:
        raise click.BadParameter(
            f"{exc}; write \\\\ for a backslash, or pass --raw", param_hint="TEXT"
        ) from None
    data += "\r" if enter else ""
    call_broker(kwargs, lambda c: c.input(name, data))
    emit({"ok": True}, kwargs["as_json"], lambda r: None)


_ESCAPES = {
    "r": "\r",
    "n": "\n",
    "t": "\t",
    "e": "\x1b",
    "a": "\a",
    "b": "\b",
    "0": "\0",
    "\\": "\\",
}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


def unescape(text: str) -> str:
    """``text`` with its backslash escapes replaced (see ``input --help``); any other
    character, non-ASCII included, is kept as it is. Raises ValueError naming a bad escape."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        code = text[i + 1 : i + 2]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
        elif code in _HEX_DIGITS:
            digits = text[i + 2 : i + 2 + _HEX_DIGITS[code]]
            if len(digits) != _HEX_DIGITS[code] or not all(c in string.hexdigits for c in digits):
                raise ValueError(
                    f"\\{code} at position {i} needs {_HEX_DIGITS[code]} hex digits, got {digits!r}"
                )
            value = int(digits, 16)
            if value > sys.maxunicode:
                raise ValueError(f"\\{code}{digits} at position {i} is not a character")
            out.append(chr(value))
            i += 2 + len(digits)
        else:
            raise ValueError(f"unknown escape \\{code} at position {i}")
    return "".join(out)


@main.command()
@click.argument("name")
@click.argument("rows", type=int)
@click.argument("cols", type=int)
@client_options
def resize(name: str, rows: int, cols: int, **kwargs: Any) -> None:
    """Resize agent NAME's terminal to ROWS x COLS."""
    call_broker(kwargs, lambda c: c.resize(name, rows, cols))
    emit({"ok": True}, kwargs["as_json"], lambda r: None)


@main.command()
@click.argument("name")
@click.option("--ansi", is_flag=True, help="Keep colours and attributes (ANSI escapes).")
@client_options
def snapshot(name: str, ansi: bool, **kwargs: Any) -> None:
    """Print what agent NAME's screen shows now."""
    emit(
        call_broker(kwargs, lambda c: c.snapshot(name, ansi=ansi)),
        kwargs["as_json"],
        lambda s: click.echo(s.text),
    )


@main.command()
@click.argument("name")
@click.argument("new_mode", required=False, type=click.Choice(INJECT_MODES))
@client_options
def mode(name: str, new_mode: str | None, **kwargs: Any) -> None:
    """Show, or set, agent NAME's delivery mode: auto_inject (deliver as they come) or
    hold (keep them queued until `flush` or auto_inject)."""
    emit(
        call_broker(kwargs, lambda c: c.mode(name, new_mode)),
        kwargs["as_json"],
        lambda r: click.echo(r.mode),
    )


@main.command()
@click.argument("name")
@client_options
def pending(name: str, **kwargs: Any) -> None:
    """List the deliveries queued for agent NAME, oldest first."""

    def human(r: PendingDeliveries) -> None:
        click.echo(f"mode: {r.mode}")
        if not r.deliveries:
            click.echo("nothing pending")
        else:
            _delivery_table(r.deliveries)

    emit(call_broker(kwargs, lambda c: c.pending(name)), kwargs["as_json"], human)


@main.command()
@click.argument("name")
@client_options
def flush(name: str, **kwargs: Any) -> None:
    """Hand what is held for agent NAME to it now (hold mode stays on)."""
    emit(
        call_broker(kwargs, lambda c: c.flush(name)),
        kwargs["as_json"],
        lambda r: click.echo(f"{r.count} released for delivery"),
    )


@main.command()
@click.argument("to")
@click.argument("message")
@click.option(
    "--from", "sender", help="Who it is from (default: user; an agent's token sends as itself)."
)
@click.option("--thread", help="A thread id to group related messages.")
@click.option("--wait", is_flag=True, help="Wait until it is verified or has failed.")
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds --wait waits.",
)
@client_options
def send(
    to: str,
    message: str,
    sender: str | None,
    thread: str | None,
    wait: bool,
    timeout: float,
    **kwargs: Any,
) -> None:
    """Send MESSAGE to agent TO. It is on disk once this says `queued`.

    With --wait, exit 0 only if the agent's screen echoed it (verified); a message typed
    but never seen (timeout_fallback), failed, dropped or dead-lettered exits 1.
    """
    result = call_broker(
        kwargs,
        lambda c: c.send(to, message, sender=sender, thread=thread, wait=wait, timeout=timeout),
    )

    def human(r: SendReceipt) -> None:
        click.echo(f"{r.delivery_id} {r.describe()}")
        for gone in r.evicted:
            click.echo(f"note: the queue was full; {gone} was dropped to make room", err=True)

    emit(result, kwargs["as_json"], human)
    if wait and result.state != "verified":
        click.echo(f"Agent error: {result.delivery_id} {result.describe()}", err=True)
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("agent", required=False)
@click.option("--state", "states", multiple=True, help="Only deliveries in this state. Repeatable.")
@click.option("--limit", default=100, show_default=True, help="At most this many.")
@client_options
def deliveries(agent: str | None, states: tuple[str, ...], limit: int, **kwargs: Any) -> None:
    """List deliveries (for AGENT, if given) and their states."""
    emit(
        call_broker(
            kwargs, lambda c: c.deliveries(agent, states=list(states) or None, limit=limit)
        ),
        kwargs["as_json"],
        lambda ds: _delivery_table(ds) if ds else click.echo("no deliveries"),
    )


@main.command("dead-letters")
@click.argument("agent", required=False)
@client_options
def dead_letters(agent: str | None, **kwargs: Any) -> None:
    """List the deliveries that were given up on, with their last error."""
    emit(
        call_broker(kwargs, lambda c: c.dead_letters(agent)),
        kwargs["as_json"],
        lambda ds: _delivery_table(ds) if ds else click.echo("no dead letters"),
    )


@main.command()
@click.argument("delivery_id")
@client_options
def redeliver(delivery_id: str, **kwargs: Any) -> None:
    """Queue a dead letter (or failed delivery) again, with a fresh retry budget."""
    emit(
        call_broker(kwargs, lambda c: c.redeliver(delivery_id)),
        kwargs["as_json"],
        lambda r: click.echo(f"{r.delivery_id} {r.state}"),
    )


def _delivery_table(ds: list[DeliveryRecord]) -> None:
    table(
        [
            [
                d.delivery_id,
                d.agent,
                d.sender,
                d.describe(),
                str(d.attempts),
                (d.body[:40] + "...") if len(d.body) > 43 else d.body,
            ]
            for d in ds
        ],
        ["ID", "TO", "FROM", "STATE", "ATTEMPTS", "BODY"],
    )


@main.command()
@click.option(
    "--older-than",
    type=Duration(),
    metavar="DURATION",
    help="Delete what has not changed for this long (default: the broker's --retention).",
)
@client_options
def prune(older_than: float | None, **kwargs: Any) -> None:
    """Delete ended deliveries (dead letters too) and released agents from the store.

    The broker also does this on its own, hourly, for what is older than `up --retention`.
    """
    emit(
        call_broker(kwargs, lambda c: c.prune(older_than)),
        kwargs["as_json"],
        lambda r: click.echo(f"pruned {r.deliveries} deliveries and {r.agents} agents"),
    )


@main.command()
@click.argument("name")
@click.option("-n", "--lines", default=100, show_default=True, help="How many lines.")
@client_options
def logs(name: str, lines: int, **kwargs: Any) -> None:
    """Print the last lines agent NAME's worker wrote to stderr."""
    emit(
        call_broker(kwargs, lambda c: c.logs(name, lines)),
        kwargs["as_json"],
        lambda ls: [click.echo(line) for line in ls],
    )


@main.command()
@click.argument("name")
@click.option("--drive", is_flag=True, help="Send your keystrokes to the agent (Ctrl-] detaches).")
@client_options
def attach(name: str, drive: bool, **kwargs: Any) -> None:
    """Mirror agent NAME's screen live in this terminal.

    With --drive, what you type goes to the agent; press Ctrl-] to detach (the agent keeps
    running). Without it, Ctrl-C stops watching. Exits 0 on detach or when the agent is
    released, 1 if it exits on its own.
    """
    from trio_relay.cli.attach import RawTerminal
    from trio_relay.cli.attach import attach as run_attach

    try:
        with RawTerminal(0) if drive else contextlib.nullcontext():
            exited = call_broker(kwargs, lambda c: run_attach(c, name, drive=drive))
    except KeyboardInterrupt:  # Ctrl-C stops watching (without --drive it is not sent on)
        exited = None
    if exited is None:
        click.echo(f"\r\n[detached from {name}; it keeps running]", err=True)
    else:
        click.echo(f"\r\n[{name} exited: {exited.reason}]", err=True)
        if not exited.intended:
            sys.exit(EXIT_FAILED)


@main.command()
@click.option("--since", type=int, default=0, show_default=True, help="Events numbered above SEQ.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until interrupted.")
@click.option("--agent", help="Only this agent's events.")
@client_options
def events(since: int, follow: bool, agent: str | None, **kwargs: Any) -> None:
    """Print broker events (one per line; --json for JSON lines)."""
    as_json = kwargs["as_json"]

    async def stream(client: Any) -> None:
        async with client.subscribe(since, agent=agent) as subscription:
            # Without --follow: up to the newest event the filters pass (the broker says
            # which), whoever the very newest event belongs to.
            if not follow and subscription.replay_end <= since:
                return
            async for event in subscription:
                _print_event(event, as_json)
                if not follow and event.seq >= subscription.replay_end:
                    return

    try:
        call_broker(kwargs, stream)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends --follow: the normal way out


def _print_event(event: Any, as_json: bool) -> None:
    if as_json:
        click.echo(msgspec.json.encode(event).decode())
        return
    fields = msgspec.structs.asdict(event)
    seq, stamp = fields.pop("seq"), fields.pop("time")
    kind = type(event).__struct_config__.tag
    agent = fields.pop("agent", "")
    details = " ".join(f"{k}={v!r}" for k, v in fields.items() if v is not None)
    when = datetime.fromtimestamp(stamp).strftime("%H:%M:%S.%f")[:-3] if stamp else "-"
    click.echo(f"{seq:>6} {when} {kind:<22} {agent:<12} {details}".rstrip())


if __name__ == "__main__":  # pragma: no cover
    main()
