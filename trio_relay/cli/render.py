"""How results are printed: JSON with --json, else tables and lines for people. Pure
formatting over click.echo; nothing here talks to the broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
import msgspec

from trio_relay.wire import (
    AgentSummary,
    BrokerStatus,
    ClusterAgentSummary,
    ClusterEvent,
    DeliveryRecord,
)


def emit(result: Any, as_json: bool, human: Callable[[Any], None] | None = None) -> None:
    """Print ``result`` as one line of JSON if ``as_json``, else with ``human`` (default:
    indented JSON; nothing for None)."""
    if as_json:
        click.echo(msgspec.json.encode(result).decode())
    elif human is not None:
        human(result)
    elif result is not None:
        click.echo(json.dumps(result, indent=2))


def table(rows: list[list[str]], header: list[str]) -> None:
    """Print ``rows`` under ``header`` in left-aligned columns."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo(
            "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        )


def age(started: float | None) -> str:
    """How long ago ``started`` (a Unix time) was: ``42s``, ``5m``, ``3h``; ``-`` if unset."""
    if not started:
        return "-"
    seconds = int(time.time() - started)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def broker_status(s: BrokerStatus) -> None:
    agents = ", ".join(f"{n} {state}" for state, n in sorted(s.agents.items())) or "none"
    click.echo(f"broker {s.version}  pid {s.pid}  {s.url}  up {age(time.time() - s.uptime)}")
    click.echo(f"agents: {agents}")
    if s.cluster is not None:
        link = "connected" if s.cluster.get("connected") else "PostgreSQL not answering"
        click.echo(f"cluster: broker {s.cluster.get('broker')}, {link}")
    if s.shared_pty is not None:
        pid = s.shared_pty.get("pid")
        click.echo(f"shared PTY host: {f'pid {pid}' if pid else 'not running (no PTY agent yet)'}")
    r = s.requests
    click.echo(
        f"requests: {r['pending']} pending, {r['completed']} completed, {r['timed_out']} timed out, "
        f"{r['failed']} failed, {r['late_dropped']} late answers dropped"
    )


def agent_table(agents: list[AgentSummary]) -> None:
    if not agents:
        click.echo("no agents")
        return
    table(
        [
            [
                a.name,
                a.state,
                f"{a.activity} {age(a.activity_since)}",
                a.profile or "-",
                str(a.pid or "-"),
                age(a.started_at) if a.state == "running" else "-",
                str(a.restarts),
                str(a.pending_deliveries),
                a.last_exit or "-",
            ]
            for a in agents
        ],
        [
            "NAME",
            "STATE",
            "ACTIVITY",
            "PROFILE",
            "PID",
            "UPTIME",
            "RESTARTS",
            "PENDING",
            "LAST EXIT",
        ],
    )
    for a in agents:  # what a person is asked, and why messages wait
        if a.activity == "attention":
            click.echo(f"{a.name} needs you: {a.activity_text}")
        if a.waiting:
            click.echo(f"{a.name}: messages wait: {a.waiting}")


def cluster_agent_table(agents: list[ClusterAgentSummary]) -> None:
    if not agents:
        click.echo("no agents in the cluster")
        return
    table(
        [
            [
                a.name,
                a.broker,
                a.state,
                f"{a.activity} {age(a.activity_since)}",
                a.profile or "-",
                str(a.pid or "-"),
                str(a.pending_deliveries),
            ]
            for a in agents
        ],
        ["NAME", "BROKER", "STATE", "ACTIVITY", "PROFILE", "PID", "PENDING"],
    )


def delivery_table(ds: list[DeliveryRecord], *, empty: str) -> None:
    """The deliveries ``ds``, or the line ``empty`` if there are none."""
    if not ds:
        click.echo(empty)
        return
    table(
        [
            [
                d.delivery_id,
                d.agent,
                d.sender,
                d.describe(),
                str(d.attempts),
                (d.body[:40] + "...") if len(d.body) > 43 else d.body,
            ]
            for d in ds
        ],
        ["ID", "TO", "FROM", "STATE", "ATTEMPTS", "BODY"],
    )


def event_line(event: Any, as_json: bool) -> None:
    """Print one broker event: JSON, or ``SEQ TIME KIND AGENT field=value...``."""
    if as_json:
        emit(event, as_json)
        return
    fields = msgspec.structs.asdict(event)
    seq, stamp = fields.pop("seq"), fields.pop("time")
    kind = type(event).__struct_config__.tag
    agent = fields.pop("agent", "") or ""
    if isinstance(event, ClusterEvent):  # [broker] and the broker's own event
        inner = dict(event.event)
        kind, stamp = f"[{event.broker}] {inner.pop('kind', '?')}", inner.pop("time", stamp)
        inner.pop("agent", None)
        fields = {"seq": inner.pop("seq", None), **inner}
    details = " ".join(f"{k}={v!r}" for k, v in fields.items() if v is not None)
    when = datetime.fromtimestamp(stamp).strftime("%H:%M:%S.%f")[:-3] if stamp else "-"
    click.echo(f"{seq:>6} {when} {kind:<22} {agent:<12} {details}".rstrip())
