"""Giving an agent CLI the ``trio-relay mcp`` server for one run, without writing into the
user's own configuration.

A profile's ``mcp`` says which way its CLI takes an extra MCP server; :func:`prepare` makes
what that way needs in a directory of the broker's (one per agent, removed with
:func:`remove` when the agent is released) and returns the arguments to add after the
program's name and the variables to add to its environment:

- ``claude`` (Claude Code): ``--plugin-dir DIR``, a plugin of ours whose ``.mcp.json`` has
  the server. It is shown by ``claude --plugin-dir DIR mcp list`` (as
  ``plugin:trio-relay:trio-relay``) and asks nothing (a project ``.mcp.json`` would ask for
  approval; ``--mcp-config`` is invisible to ``mcp list``). The server inherits the
  agent's environment.
- ``codex`` (Codex): ``-c mcp_servers.trio-relay.*`` overrides, no file at all. Codex
  passes its MCP servers only a few variables, so ``env_vars`` names the three it needs.
- ``gemini`` (Gemini CLI, which takes no flag for it): ``GEMINI_CLI_HOME``, an overlay of
  the user's ``~/.gemini`` whose entries are links to the user's own, but for a
  ``settings.json`` that is the user's plus the server. Gemini CLI drops variables whose
  name holds ``TOKEN`` from a server's environment, so the entry passes them as
  ``$TRIO_RELAY_...`` (which it expands). What Gemini CLI creates in ``~/.gemini`` during
  the run, where the user had no such file, stays in the overlay and goes with it.

Blocking file I/O: call it from a worker thread. Raises ValueError with what to do.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from trio_relay.profiles.profile import McpWay

#: The server's name in every CLI's configuration.
SERVER_NAME = "trio-relay"
#: What the server needs from the agent's environment.
VARIABLES = ("TRIO_RELAY_URL", "TRIO_RELAY_TOKEN", "TRIO_RELAY_AGENT")
#: Added after the first message each run of an agent with the relay tools is given.
PREAMBLE = (
    "(You can reach the other agents with your relay tools: relay_peers lists them,"
    " relay_send messages one, relay_inbox re-reads what they sent you.)"
)


def server_command() -> list[str]:
    """How the CLI starts the server: this Python, so the same installation, with ``-P``
    (the agent's working directory, where its CLI starts the server, not on sys.path)."""
    return [sys.executable, "-P", "-m", "trio_relay", "mcp"]


@dataclass
class McpSetup:
    """What to add to the agent's command and environment."""

    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def prepare(way: McpWay, directory: Path, home: Path) -> McpSetup:
    """Make ``way``'s configuration for an agent in ``directory`` (created, or emptied
    first); ``home`` is the agent's HOME. Raises ValueError (a user's settings file that
    cannot be read, a way not known), OSError."""
    remove(directory)
    directory.mkdir(parents=True, mode=0o700)
    command, *args = server_command()
    if way == "claude":
        plugin = directory / "claude-plugin"
        (plugin / ".claude-plugin").mkdir(parents=True)
        manifest = {
            "name": SERVER_NAME,
            "version": "1",
            "description": "trio-relay's relay tools (added by trio-relay spawn --mcp)",
        }
        _write_json(plugin / ".claude-plugin" / "plugin.json", manifest)
        server = {"type": "stdio", "command": command, "args": args}
        _write_json(plugin / ".mcp.json", {"mcpServers": {SERVER_NAME: server}})
        return McpSetup(args=["--plugin-dir", str(plugin)])
    if way == "codex":
        key = f"mcp_servers.{SERVER_NAME}"
        overrides = {
            "command": json.dumps(command),
            "args": json.dumps(args),
            "env_vars": json.dumps(list(VARIABLES)),
        }
        pairs = [["-c", f"{key}.{name}={value}"] for name, value in overrides.items()]
        return McpSetup(args=[arg for pair in pairs for arg in pair])
    if way == "gemini":
        overlay = directory / "gemini-home"
        _overlay_gemini_home(home / ".gemini", overlay / ".gemini", command, args)
        return McpSetup(env={"GEMINI_CLI_HOME": str(overlay)})
    raise ValueError(f"unknown way to configure MCP {way!r}: claude, codex or gemini")


def _overlay_gemini_home(real: Path, overlay: Path, command: str, args: list[str]) -> None:
    overlay.mkdir(parents=True)
    settings_path = real / "settings.json"
    try:
        settings = json.loads(settings_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        settings = {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(
            f"cannot read {settings_path} to add the trio-relay server to it ({exc}); spawn"
            " without --mcp, or make it plain JSON"
        ) from None
    if not isinstance(settings, dict):
        raise ValueError(f"{settings_path} is not a JSON object; spawn without --mcp")
    if real.is_dir():
        for entry in real.iterdir():
            if entry.name != "settings.json":
                (overlay / entry.name).symlink_to(entry)
    env = {name: f"${name}" for name in VARIABLES}
    servers = dict(settings.get("mcpServers") or {})
    servers[SERVER_NAME] = {"command": command, "args": args, "env": env}
    _write_json(overlay / "settings.json", {**settings, "mcpServers": servers})


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def remove(directory: Path) -> None:
    """Remove what :func:`prepare` made (links only, never what they point to)."""
    if directory.is_symlink():
        directory.unlink()
    elif directory.exists():
        shutil.rmtree(directory)


def directory_of(root: Path, agent: str) -> Path:
    """The agent's own directory under ``root`` (any agent name makes one safe file name)."""
    return root / f"agent-{quote(agent, safe='')}"


def insert_args(command: list[str], index: int, args: list[str]) -> list[str]:
    """``command`` with ``args`` right after its element ``index`` (the program's name)."""
    return [*command[: index + 1], *args, *command[index + 1 :]]


def home_of(env: dict[str, str]) -> Path:
    """The agent's HOME: its own, else the broker's."""
    return Path(env.get("HOME") or os.environ.get("HOME") or Path.home())
