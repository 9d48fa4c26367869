"""The commands on messages: ``send``, ``deliveries``, ``dead-letters``, ``redeliver``, and
an agent's queue: ``mode``, ``pending``, ``flush``."""

from __future__ import annotations

import functools

import click

from trio_relay.cli.context import Settings, command, die, option_with_default, pass_settings
from trio_relay.cli.render import delivery_table
from trio_relay.wire import PendingDeliveries, SendReceipt
from trio_relay.wire.vocabulary import INJECT_MODES


@command()
@click.argument("to")
@click.argument("message")
@click.option(
    "--from", "sender", help="Who it is from (default: user; an agent's token sends as itself)."
)
@click.option("--thread", help="A thread id to group related messages.")
@click.option("--wait", is_flag=True, help="Wait until it is verified or has failed.")
@option_with_default(
    "--timeout", default=30.0, type=click.FloatRange(min=0), help="Seconds --wait waits."
)
@pass_settings
def send(
    settings: Settings,
    to: str,
    message: str,
    sender: str | None,
    thread: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Send MESSAGE to agent TO. It is on disk once this says `queued`.

    With --wait, exit 0 only if the agent's screen echoed it (verified); a message typed
    but never seen (timeout_fallback), failed, dropped or dead-lettered exits 1.
    """
    result = settings.call(
        lambda c: c.send(to, message, sender=sender, thread=thread, wait=wait, timeout=timeout),
    )

    def human(r: SendReceipt) -> None:
        click.echo(f"{r.delivery_id} {r.describe()}")
        for gone in r.evicted:
            click.echo(f"note: the queue was full; {gone} was dropped to make room", err=True)

    settings.emit(result, human)
    if wait and result.state != "verified":
        die(f"{result.delivery_id} {result.describe()}", agent=True)


@command()
@click.argument("agent", required=False)
@click.option("--state", "states", multiple=True, help="Only deliveries in this state. Repeatable.")
@option_with_default("--limit", default=100, help="At most this many.")
@pass_settings
def deliveries(settings: Settings, agent: str | None, states: tuple[str, ...], limit: int) -> None:
    """List deliveries (for AGENT, if given) and their states."""
    settings.show(
        lambda c: c.deliveries(agent, states=list(states) or None, limit=limit),
        functools.partial(delivery_table, empty="no deliveries"),
    )


@command("dead-letters")
@click.argument("agent", required=False)
@pass_settings
def dead_letters(settings: Settings, agent: str | None) -> None:
    """List the deliveries that were given up on, with their last error."""
    settings.show(
        lambda c: c.dead_letters(agent),
        functools.partial(delivery_table, empty="no dead letters"),
    )


@command()
@click.argument("delivery_id")
@pass_settings
def redeliver(settings: Settings, delivery_id: str) -> None:
    """Queue a dead letter (or failed delivery) again, with a fresh retry budget."""
    settings.show(
        lambda c: c.redeliver(delivery_id), lambda r: click.echo(f"{r.delivery_id} {r.state}")
    )


@command()
@click.argument("name")
@click.argument("new_mode", required=False, type=click.Choice(INJECT_MODES))
@pass_settings
def mode(settings: Settings, name: str, new_mode: str | None) -> None:
    """Show, or set, agent NAME's delivery mode: auto_inject (deliver as they come) or
    hold (keep them queued until `flush` or auto_inject)."""
    settings.show(lambda c: c.mode(name, new_mode), lambda r: click.echo(r.mode))


@command()
@click.argument("name")
@pass_settings
def pending(settings: Settings, name: str) -> None:
    """List the deliveries queued for agent NAME, oldest first."""

    def human(r: PendingDeliveries) -> None:
        click.echo(f"mode: {r.mode}")
        delivery_table(r.deliveries, empty="nothing pending")

    settings.show(lambda c: c.pending(name), human)


@command()
@click.argument("name")
@pass_settings
def flush(settings: Settings, name: str) -> None:
    """Hand what is held for agent NAME to it now (hold mode stays on)."""
    settings.show(lambda c: c.flush(name), lambda r: click.echo(f"{r.count} released for delivery"))
