"""``trio-relay-agent-relay``: trio-relay started the way agent-relay's SDKs start
``agent-relay-broker``, so ``AgentRelay()`` runs on trio-relay with
``AGENT_RELAY_BIN=$(command -v trio-relay-agent-relay)``.

The SDK runs ``BIN init --name NAME --channels LIST [ARGS]`` with ``RELAY_BROKER_API_KEY``
in the environment, reads ``[agent-relay] API listening on http://HOST:PORT`` from stdout,
then speaks the HTTP API (trio_relay.http) with that key, and stops the broker with
``POST /api/shutdown``. This runs ``trio-relay up --http`` in the foreground with the key as
an owner key, logging to stderr (the SDK forwards it) and to broker.log.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from trio_relay.broker_process import become_broker
from trio_relay.cli.dashboard import DEFAULT_HTTP_HOST
from trio_relay.errors import StateDirError
from trio_relay.state import StateDir

KEY_VARIABLE = "RELAY_BROKER_API_KEY"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """agent-relay-broker's command line, served by trio-relay (only `init`)."""


@main.command()
@click.option("--name", default="project", show_default=True, help="The broker's name.")
@click.option("--channels", default="general", show_default=True, help="Accepted; unused.")
@click.option("--api-port", default=0, show_default=True, help="HTTP port (0: a free one).")
@click.option("--api-bind", default=DEFAULT_HTTP_HOST, show_default=True, help="HTTP host.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="trio-relay's state directory (default: .agent-relay/trio-relay/ in the working"
    " directory; deliveries persist there).",
)
@click.option("--persist", is_flag=True, help="Accepted: trio-relay always persists.")
@click.option("--local-only", is_flag=True, help="Accepted: trio-relay is always local.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
def init(
    name: str,
    channels: str,
    api_port: int,
    api_bind: str,
    state_dir: Path | None,
    persist: bool,
    local_only: bool,
    verbose: bool,
) -> None:
    """Start trio-relay with agent-relay's HTTP API until POST /api/shutdown, SIGINT or
    SIGTERM; print the line the SDK waits for once it listens."""
    try:
        state = StateDir.open(state_dir or Path.cwd() / ".agent-relay" / "trio-relay")
    except StateDirError as exc:
        raise click.BadParameter(str(exc), param_hint="--state-dir") from None
    key = os.environ.pop(KEY_VARIABLE, "")  # an owner key: not passed on to the agents
    quoted = repr(name).replace("{", "{{").replace("}", "}}")  # announce is str.format'ed
    announce = (
        "[agent-relay] API listening on {http}\n"
        f"[agent-relay] broker {quoted} is trio-relay, state in {{state}}"
    )
    run = {"host": "127.0.0.1", "port": 0, "http": (api_bind, api_port)}
    run["api_keys"] = [key] if key else []
    options = {"verbose": verbose, "run": run, "announce": announce}
    try:
        become_broker(str(state.path), options)
    except (OSError, ValueError) as exc:
        click.echo(f"Error: cannot start the broker's program ({sys.executable}): {exc}", err=True)
        sys.exit(1)
