"""The ``trio-relay`` command group: the shared options, the context object, the commands.

The commands live by concern in :mod:`~trio_relay.cli.broker`, :mod:`~trio_relay.cli.agents`
and :mod:`~trio_relay.cli.deliveries`; :mod:`~trio_relay.cli.context` turns errors into the
exit codes below.
"""

from __future__ import annotations

from typing import Any

import click

from trio_relay import __version__
from trio_relay.cli import activity, agents, broker, dashboard, deliveries, tools
from trio_relay.cli.context import SHARED_OPTIONS, Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, params=list(SHARED_OPTIONS))
@click.version_option(__version__, prog_name="trio-relay")
@click.pass_context
def main(ctx: click.Context, **shared: Any) -> None:
    """trio-relay: supervise terminal programs and AI agent CLIs, and relay messages to them.

    Start a broker with `trio-relay up`; the other commands talk to it. They find it through
    the state directory (./.trio-relay, or --state-dir), or TRIO_RELAY_URL and
    TRIO_RELAY_TOKEN. The options below may also follow the command's name.

    Exit codes: 0 success, 1 the operation failed, 2 usage, 3 no broker reachable.
    """
    ctx.obj = Settings(**shared)


for command in (
    *(broker.up, broker.down, broker.status, broker.prune, broker.events),
    *(agents.spawn, agents.release, agents.ps, agents.logs, agents.snapshot),
    *(agents.input_, agents.resize, agents.attach, activity.wait, activity.profiles),
    *(deliveries.send, deliveries.deliveries, deliveries.dead_letters, deliveries.redeliver),
    *(deliveries.mode, deliveries.pending, deliveries.flush, tools.mcp),
    dashboard.dashboard,
):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
