"""The commands on agents: ``spawn``, ``release``, ``ps``, ``logs``, ``snapshot``,
``input``, ``resize`` and ``attach``."""

from __future__ import annotations

import contextlib
import os
import string
import sys

import click

from trio_relay.cli import render
from trio_relay.cli.context import (
    EXIT_FAILED,
    Settings,
    command,
    option_with_default,
    pass_settings,
)
from trio_relay.wire.vocabulary import RESTART_MODES


def _ok(result: object) -> None:
    """Nothing to say on success (without --json)."""


@command(context_settings={"ignore_unknown_options": True})
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
@option_with_default("--rows", default=24, help="Terminal rows.")
@option_with_default("--cols", default=80, help="Terminal columns.")
@option_with_default(
    "--restart", default="never", type=click.Choice(RESTART_MODES), help="Restart policy."
)
@click.option(
    "--profile",
    metavar="NAME",
    help="How the agent looks and wants to be typed to: claude, codex, gemini, aider, shell,"
    " python, generic, or one of your own (default: chosen by COMMAND's name).",
)
@click.option(
    "--mcp",
    is_flag=True,
    help="Give the agent the relay tools (relay_peers, relay_send, ...) as an MCP server:"
    " for claude, codex and gemini, configured for this agent only, never in your own"
    " configuration.",
)
@pass_settings
def spawn(
    settings: Settings,
    name: str,
    command: tuple[str, ...],
    native: bool,
    cwd: str | None,
    env: tuple[str, ...],
    rows: int,
    cols: int,
    restart: str,
    profile: str | None,
    mcp: bool,
) -> None:
    """Start COMMAND as agent NAME: `trio-relay spawn alice -- claude`.

    COMMAND runs in a pseudo-terminal under the PTY worker, unless --native. Its profile
    says how to tell when it is idle, busy or waiting for a person, and how to type a
    message so that it is submitted; `trio-relay profiles` lists them. Your own profiles are
    TOML files in <state dir>/profiles/ or ~/.config/trio-relay/profiles/.

    With --mcp the agent CLI starts `trio-relay mcp` as its MCP server, acting as the
    agent: Claude Code through a plugin directory of the broker's (--plugin-dir), Codex
    through -c overrides, Gemini CLI through an overlay of ~/.gemini (GEMINI_CLI_HOME). It
    is removed when the agent is released. The first message each run gets says, in a
    sentence, that the relay tools reach its peers.
    """
    variables = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected K=V, got {item!r}", param_hint="--env")
        variables[key] = value
    settings.show(
        lambda c: c.spawn(
            name,
            list(command),
            cwd=os.path.abspath(cwd) if cwd else None,
            env=variables,
            native=native,
            rows=rows,
            cols=cols,
            restart=restart,
            profile=profile,
            mcp=mcp,
        ),
        lambda a: click.echo(f"{a.name} running, pid {a.pid}, profile {a.profile}"),
    )


@command()
@click.option(
    "--cluster",
    is_flag=True,
    help="Every broker's agents in the broker's cluster, with their broker; an agent whose"
    " broker lost its lease is `unreachable`.",
)
@pass_settings
def ps(settings: Settings, cluster: bool) -> None:
    """List the agents: state, pid, uptime, restarts, pending deliveries, last activity,
    last exit."""
    if cluster:
        settings.show(lambda c: c.cluster_agents(), render.cluster_agent_table)
    else:
        settings.show(lambda c: c.agents(), render.agent_table)


@command()
@click.argument("name")
@pass_settings
def release(settings: Settings, name: str) -> None:
    """Stop agent NAME for good (shutdown, then SIGTERM, then SIGKILL)."""
    settings.show(
        lambda c: c.release(name), lambda a: click.echo(f"{a.name} released ({a.last_exit})")
    )


@command()
@click.argument("name")
@option_with_default("-n", "--lines", default=100, help="How many lines.")
@pass_settings
def logs(settings: Settings, name: str, lines: int) -> None:
    """Print the last lines agent NAME's worker wrote to stderr."""
    settings.show(lambda c: c.logs(name, lines), lambda ls: [click.echo(line) for line in ls])


@command()
@click.argument("name")
@click.option("--ansi", is_flag=True, help="Keep colours and attributes (ANSI escapes).")
@pass_settings
def snapshot(settings: Settings, name: str, ansi: bool) -> None:
    """Print what agent NAME's screen shows now."""
    # color=True: click would strip the escapes when stdout is a pipe or a file.
    settings.show(lambda c: c.snapshot(name, ansi=ansi), lambda s: click.echo(s.text, color=ansi))


@command("input")
@click.argument("name")
@click.argument("text")
@click.option("--enter", is_flag=True, help="Press Enter after TEXT.")
@click.option("--raw", is_flag=True, help="Send TEXT as it is: no escapes.")
@pass_settings
def input_(settings: Settings, name: str, text: str, enter: bool, raw: bool) -> None:
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
    settings.call(lambda c: c.input(name, data))
    settings.emit({"ok": True}, _ok)


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


@command()
@click.argument("name")
@click.argument("rows", type=int)
@click.argument("cols", type=int)
@pass_settings
def resize(settings: Settings, name: str, rows: int, cols: int) -> None:
    """Resize agent NAME's terminal to ROWS x COLS."""
    settings.call(lambda c: c.resize(name, rows, cols))
    settings.emit({"ok": True}, _ok)


@command()
@click.argument("name")
@click.option("--drive", is_flag=True, help="Send your keystrokes to the agent (Ctrl-] detaches).")
@pass_settings
def attach(settings: Settings, name: str, drive: bool) -> None:
    """Mirror agent NAME's screen live in this terminal.

    With --drive, what you type goes to the agent; press Ctrl-] to detach (the agent keeps
    running). Without it, Ctrl-C stops watching. Exits 0 on detach or when the agent is
    released, 1 if it exits on its own.
    """
    from trio_relay.cli.attach import Attached, RawTerminal
    from trio_relay.cli.attach import attach as run_attach

    try:
        with RawTerminal(0) if drive else contextlib.nullcontext():
            attached = settings.call(lambda c: run_attach(c, name, drive=drive))
    except KeyboardInterrupt:  # Ctrl-C stops watching (without --drive it is not sent on)
        attached = Attached()
    if attached.notice:
        click.echo(f"[{attached.notice}]", err=True)
    exited = attached.exited
    if exited is None:
        click.echo(f"[detached from {name}; it keeps running]", err=True)
    else:
        click.echo(f"[{name} exited: {exited.reason}]", err=True)
        if not exited.intended:
            sys.exit(EXIT_FAILED)
