"""``trio-relay dashboard``: a one-time login URL for the broker's dashboard, printed and
opened in a browser where there is one; and ``HostPort``, the ``up --http`` address."""

from __future__ import annotations

import webbrowser
from typing import Any

import click

from trio_relay.cli.context import Settings, command, pass_settings

DEFAULT_HTTP_HOST = "127.0.0.1"


def parse_host_port(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` as (host, port); the host defaults to
    127.0.0.1. Raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = DEFAULT_HTTP_HOST, text
    host = host.strip("[]") or DEFAULT_HTTP_HOST
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} is out of range")
    return host, number


class HostPort(click.ParamType):
    """``[HOST:]PORT`` on the command line (see :func:`parse_host_port`)."""

    name = "[HOST:]PORT"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_host_port(str(value))
        except ValueError:
            self.fail(f"{value!r} is not [HOST:]PORT, such as 8377 or 127.0.0.1:8377", param, ctx)


@command()
@click.option("--no-open", is_flag=True, help="Print the URL only; do not open a browser.")
@pass_settings
def dashboard(settings: Settings, no_open: bool) -> None:
    """Print a one-time login URL for the dashboard, and open it in a browser if one can be
    started here.

    The broker must serve HTTP (`trio-relay up --http 127.0.0.1:8377`). The URL works once,
    within 5 minutes: it logs that browser in with a cookie (for 12 hours, or until the
    broker stops) and the dashboard then shows the agents, their terminals, deliveries
    and dialogs waiting for a person.
    """
    result = settings.call(lambda c: c.call("login"))

    def human(found: dict[str, Any]) -> None:
        click.echo(found["url"])
        if not no_open and not webbrowser.open(found["url"]):
            click.echo("(no browser could be started here: open the URL above)", err=True)

    settings.emit(result, human)
