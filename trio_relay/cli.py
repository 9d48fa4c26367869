"""The ``trio-relay`` command line (click). Parses, calls the broker, prints."""

from __future__ import annotations

import logging
import shlex
import signal
import sys

import click
import trio

from . import __version__
from .broker import Broker, open_broker
from .errors import RelayError
from .protocol import Event, Gap, encode
from .supervisor import RestartPolicy

REFERENCE_WORKER = [sys.executable, "-m", "trio_relay.reference_worker"]


def _parse_agent(value: str) -> tuple[str, list[str]]:
    name, sep, command = value.partition("=")
    argv = shlex.split(command)
    if not sep or not name or not argv:
        raise click.BadParameter(f"expected NAME=COMMAND, got {value!r}")
    return name, argv


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trio-relay")
def main() -> None:
    """trio-relay: supervise terminal programs and AI agent CLIs, and relay messages to them."""


@main.command()
@click.option(
    "--agent",
    "agents",
    multiple=True,
    metavar="NAME=COMMAND",
    help="Spawn COMMAND (a program that speaks the worker protocol) as agent NAME. Repeatable.",
)
@click.option(
    "--demo/--no-demo",
    default=True,
    show_default=True,
    help="Spawn the reference native worker as agent 'demo'.",
)
@click.option(
    "--restart",
    type=click.Choice(["never", "on-failure", "always"]),
    default="on-failure",
    show_default=True,
    help="Restart policy of the agents spawned here.",
)
@click.option("--events-json", is_flag=True, help="Print each broker event as a JSON line on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail to stderr.")
def up(agents: tuple[str, ...], demo: bool, restart: str, events_json: bool, verbose: bool) -> None:
    """Run the broker in the foreground until SIGINT or SIGTERM.

    Every agent is released on the way out (shutdown frame, then SIGTERM, then SIGKILL);
    if the broker itself is killed, its workers die with it.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    wanted = [_parse_agent(a) for a in agents]
    if demo:
        wanted.insert(0, ("demo", REFERENCE_WORKER))
    try:
        trio.run(_serve, wanted, RestartPolicy(mode=restart), events_json)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        pass  # SIGINT before the signal receiver was installed: nothing was started yet


async def _serve(
    agents: list[tuple[str, list[str]]], restart: RestartPolicy, events_json: bool
) -> None:
    log = logging.getLogger("trio_relay")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_broker() as broker:
            printer = _EventPrinter(events_json)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(printer.follow, broker)
                for name, argv in agents:
                    try:
                        info = await broker.spawn(name, argv, restart=restart)
                    except (RelayError, ValueError) as exc:
                        log.error("%s", exc)
                    else:
                        log.info("agent %s running, pid %s", info.name, info.pid)
                log.info("broker running with %d agent(s); Ctrl-C to stop", len(broker.agents()))
                async for signum in signals:
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    break
                await broker.shutdown()
                nursery.cancel_scope.cancel()
            printer.print_since(broker)  # the last events, emitted during the shutdown
    log.info("broker stopped")


class _EventPrinter:
    """Prints broker events to stdout (JSON lines) or to the log, each exactly once."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.seq = 0
        self.log = logging.getLogger("trio_relay.events")

    async def follow(self, broker: Broker) -> None:
        async for event in broker.events.subscribe(since=self.seq):
            self.show(event)

    def print_since(self, broker: Broker) -> None:
        for event in broker.events.since(self.seq):
            self.show(event)

    def show(self, event: Event) -> None:
        if isinstance(event, Gap):
            self.log.warning("missed events %d..%d", event.first, event.last)
        else:
            self.seq = event.seq
        if self.as_json:
            sys.stdout.buffer.write(encode(event))
            sys.stdout.flush()
        else:
            self.log.info("%r", event)
