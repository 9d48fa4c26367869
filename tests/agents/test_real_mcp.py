"""`spawn --mcp` with the real CLIs (Claude Code, Codex, Gemini CLI at their pinned
versions): each CLI's own MCP listing command, run with the agent's environment and the
arguments the broker added, shows the trio-relay server configured (and, where the CLI
checks, connected); the first message carries the preamble and ends `submitted`; nothing
is written into the HOME the CLI was given but what the CLI writes itself; releasing the
agent removes what the broker added. Skipped like tests/agents/test_real_clis.py."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import trio
from real_cli import (
    CliSession,
    clean_environment,
    record_agent_screens,
    run_cli,
    skip_unless_installed,
)
from test_real_clis import CLAUDE, CODEX, GEMINI, Cli, answer_dialogs, submitted

from trio_relay.control.auth import Principal
from trio_relay.profiles.mcp_config import PREAMBLE, VARIABLES
from trio_relay.wire import ReleaseOp


def added_arguments(session: CliSession, binary: Path, cli: Cli) -> list[str]:
    """What the broker put between the CLI's binary and its own arguments."""
    argv = list(session.broker.supervisor.get(cli.name).spec.argv)
    command = argv[argv.index("--") + 1 :]
    after = command[command.index(str(binary)) + 1 :]
    own = record_agent_screens.argv_of(cli.name, binary)[1:]
    return after[: len(after) - len(own)] if own else after


async def listing(session: CliSession, binary: Path, cli: Cli) -> str:
    """The CLI's MCP listing, run in the agent's environment and project directory."""
    spec = session.broker.supervisor.get(cli.name).spec
    extra = added_arguments(session, binary, cli)
    command = {
        "claude": [str(binary), *extra, "mcp", "list"],
        "codex": [str(binary), *extra, "mcp", "list", "--json"],
        "gemini": [str(binary), "mcp", "list"],
    }[cli.name]
    prefix = record_agent_screens.no_network_prefix()
    with trio.fail_after(60):
        ran = await trio.run_process(
            [*prefix, *command],
            env=dict(spec.env or {}),
            cwd=str(session.project),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if cli.name == "codex":  # its JSON; warnings follow on stderr
        return ran.stdout.decode()
    return ran.stdout.decode() + ran.stderr.decode()


def check_listing(cli: Cli, shown: str) -> None:
    if cli.name == "claude":  # it starts the server and checks it answers
        assert re.search(r"plugin:trio-relay:trio-relay: .*trio_relay mcp - ✔ Connected", shown), (
            shown
        )
    elif cli.name == "codex":  # it lists, it does not start the server
        (entry,) = [s for s in json.loads(shown) if s["name"] == "trio-relay"]
        assert entry["enabled"], entry
        transport = entry["transport"]
        assert transport["command"] == sys.executable
        assert transport["args"] == ["-P", "-m", "trio_relay", "mcp"]
        assert transport["env_vars"] == list(VARIABLES)
    else:  # it starts the server once the folder is trusted
        assert re.search(r"✓ trio-relay: .*trio_relay mcp \(stdio\) - Connected", shown), shown


@pytest.fixture
def binary(cli: Cli) -> Path:
    """The CLI's binary; skips, naming what is missing and how to install it, before the
    test's Trio run (so the reason is reported)."""
    return skip_unless_installed(cli.name)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("cli", [CLAUDE, CODEX, GEMINI], ids=lambda cli: cli.name)
async def test_spawn_with_mcp(cli: Cli, binary: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean_environment(monkeypatch)
    async with run_cli(cli.name, binary, mcp=True) as session:
        spec = session.broker.supervisor.get(cli.name).spec
        env = dict(spec.env or {})
        home = Path(env["HOME"])
        first, sent = await session.send("the first message: it carries the preamble")
        await answer_dialogs(session, cli, first)
        await session.activity("idle", timeout=30)
        screen = await submitted(session, first, sent, "first, with the preamble")
        with trio.fail_after(10):  # the transcript shows the preamble after the message
            while "relay_peers" not in re.sub(r"\s+", " ", screen):
                await trio.sleep(0.1)
                screen = await session.screen()
        assert PREAMBLE[:40] in re.sub(r"\s+", " ", screen).replace("│ ", "")

        check_listing(cli, await listing(session, binary, cli))
        overlay = [Path(a) for a in added_arguments(session, binary, cli) if a.startswith("/")]
        if cli.name == "gemini":
            overlay = [Path(env["GEMINI_CLI_HOME"])]
            assert not (home / ".gemini" / "settings.json").exists()  # the user's untouched
        if cli.name == "claude":
            assert not (session.project / ".mcp.json").exists()
        for path in overlay:
            assert path.exists()
            assert home not in path.parents and session.project not in path.parents
        # Release (as `trio-relay release` does): what the broker added is gone.
        assert session.operations is not None
        await session.operations.perform(ReleaseOp(id=2, name=cli.name), Principal())
        for path in overlay:
            assert not path.exists(), path
