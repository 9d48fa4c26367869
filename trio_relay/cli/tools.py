"""``trio-relay mcp``: the relay tools, served over MCP to the agent CLI that starts it."""

from __future__ import annotations

import logging

import click
import trio

from trio_relay.cli.context import EXIT_USAGE, command, die


@command("mcp", shared=())
@click.option("--url", envvar="TRIO_RELAY_URL", help="The broker's URL (the agent's own).")
@click.option("--token", envvar="TRIO_RELAY_TOKEN", help="The agent's scoped token.")
def mcp(url: str | None, token: str | None) -> None:
    """Serve the relay tools to an agent CLI over MCP on stdin/stdout.

    An agent CLI starts this as its MCP server (`trio-relay spawn --mcp` configures Claude
    Code, Codex and Gemini CLI to): the agent then has relay_peers, relay_send,
    relay_delivery, relay_wait and relay_inbox. It acts as the agent whose TRIO_RELAY_URL
    and TRIO_RELAY_TOKEN it is given (every agent has them in its environment), never as
    the broker's owner, and never reads a state directory. It starts even while the broker
    is down and connects at the first tool call. Needs the MCP SDK (`pip install
    'trio-relay[mcp]'`). Exits 2 without a URL and token.
    """
    if not (url and token):
        die(
            "trio-relay mcp serves an agent's tools and needs the agent's TRIO_RELAY_URL and"
            " TRIO_RELAY_TOKEN (or --url and --token); an agent spawned by `trio-relay spawn"
            " --mcp` has them",
            exit_code=EXIT_USAGE,
        )
    try:
        from trio_relay.agent_tools import server
    except ImportError as exc:
        die(f"trio-relay mcp needs the MCP SDK ({exc}): pip install 'trio-relay[mcp]'")
    logging.basicConfig(level=logging.WARNING, format="trio-relay mcp: %(message)s")
    click.echo(f"trio-relay mcp: serving the relay tools for {url}", err=True)
    trio.run(server.serve, url, token)
