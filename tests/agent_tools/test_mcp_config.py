"""What `spawn --mcp` writes for each CLI, and that it is all removed: never the user's own
files, only the broker's overlay."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import Relay, wait_for

from trio_relay.profiles.mcp_config import (
    SERVER_NAME,
    directory_of,
    insert_args,
    prepare,
    remove,
)

SERVER = {"command": sys.executable, "args": ["-P", "-m", "trio_relay", "mcp"]}


def test_claude_gets_a_plugin_directory(tmp_path: Path) -> None:
    setup = prepare("claude", tmp_path / "agent", tmp_path / "home")
    assert setup.env == {} and setup.args[0] == "--plugin-dir"
    plugin = Path(setup.args[1])
    assert (
        json.loads((plugin / ".claude-plugin" / "plugin.json").read_text())["name"] == "trio-relay"
    )
    servers = json.loads((plugin / ".mcp.json").read_text())["mcpServers"]
    assert servers == {SERVER_NAME: {"type": "stdio", **SERVER}}
    assert not (tmp_path / "home").exists()  # nothing in the agent's HOME


def test_codex_gets_overrides_and_no_file(tmp_path: Path) -> None:
    setup = prepare("codex", tmp_path / "agent", tmp_path / "home")
    pairs = dict(zip(setup.args[::2], setup.args[1::2], strict=True))
    assert list(pairs) == ["-c"]  # every one is a -c
    values = dict(arg.split("=", 1) for arg in setup.args[1::2])
    assert json.loads(values["mcp_servers.trio-relay.command"]) == sys.executable
    assert json.loads(values["mcp_servers.trio-relay.args"]) == SERVER["args"]
    assert "TRIO_RELAY_TOKEN" in json.loads(values["mcp_servers.trio-relay.env_vars"])
    assert list((tmp_path / "agent").iterdir()) == []


def test_gemini_gets_an_overlay_of_the_users_gemini_home(tmp_path: Path) -> None:
    real = tmp_path / "home" / ".gemini"
    real.mkdir(parents=True)
    mine = {"theme": "dark", "mcpServers": {"mine": {"command": "my-server"}}}
    (real / "settings.json").write_text(json.dumps(mine))
    (real / "oauth_creds.json").write_text("secret")
    setup = prepare("gemini", tmp_path / "agent", tmp_path / "home")
    overlay = Path(setup.env["GEMINI_CLI_HOME"]) / ".gemini"
    settings = json.loads((overlay / "settings.json").read_text())
    assert settings["theme"] == "dark" and settings["mcpServers"]["mine"] == {
        "command": "my-server"
    }
    ours = settings["mcpServers"][SERVER_NAME]
    assert ours["env"]["TRIO_RELAY_TOKEN"] == "$TRIO_RELAY_TOKEN"  # Gemini drops *TOKEN* names
    assert (overlay / "oauth_creds.json").resolve() == real / "oauth_creds.json"
    (overlay / "oauth_creds.json").write_text("refreshed")  # the CLI writes through the link
    assert json.loads((real / "settings.json").read_text()) == mine  # the user's untouched
    remove(tmp_path / "agent")
    assert not (tmp_path / "agent").exists()
    assert (real / "oauth_creds.json").read_text() == "refreshed"  # links removed, not followed
    assert json.loads((real / "settings.json").read_text()) == mine


def test_names_and_arguments(tmp_path: Path) -> None:
    dirs = {directory_of(tmp_path, name) for name in ("a", "../a", "a/b", ".", "..", "a b")}
    assert len(dirs) == 6 and all(d.parent == tmp_path for d in dirs)
    assert insert_args(["env", "X=1", "claude", "-p"], 2, ["--plugin-dir", "D"]) == [
        *("env", "X=1", "claude", "--plugin-dir", "D", "-p")
    ]


@pytest.mark.timeout(60)
def test_release_removes_the_overlay_of_a_running_or_an_ended_agent(
    daemon: Relay, tmp_path: Path
) -> None:
    overlays = Path(daemon.state) / "mcp"
    cli = tmp_path / "fake-claude"  # takes --plugin-dir DIR as Claude Code would, and waits
    cli.write_text("#!/bin/sh\nexec sleep 30\n")
    cli.chmod(0o755)
    spawned = daemon.invoke(
        "spawn", "runs", "--mcp", "--profile", "claude", "--cwd", str(tmp_path), "--", str(cli)
    )
    assert spawned.exit_code == 0, spawned.output
    ended = daemon.invoke(
        "spawn", "ends", "--mcp", "--profile", "claude", "--cwd", str(tmp_path), "--", "true"
    )
    assert ended.exit_code == 0, ended.output
    assert sorted(p.name for p in overlays.iterdir()) == ["agent-ends", "agent-runs"]
    plugin = overlays / "agent-runs" / "claude-plugin" / ".mcp.json"
    assert json.loads(plugin.read_text())["mcpServers"][SERVER_NAME]["command"] == sys.executable
    wait_for(lambda: "exited" in daemon.invoke("ps").output.split("ends", 1)[1].split("\n")[0])
    released = daemon.invoke("release", "runs")
    assert released.exit_code == 0, released.output
    daemon.invoke("release", "ends")  # it had ended on its own: whatever release says of it
    assert list(overlays.iterdir()) == []
