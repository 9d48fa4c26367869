"""The commands on what agents are doing, and how they are read: ``wait`` and ``profiles``."""

from __future__ import annotations

import math
from typing import Any

import click
import trio

from trio_relay.cli.context import Settings, command, die, pass_settings
from trio_relay.wire import AgentActivity, AgentSummary
from trio_relay.wire.vocabulary import ACTIVITIES


@command()
@click.argument("name")
@click.option(
    "--activity",
    "wanted",
    multiple=True,
    required=True,
    type=click.Choice(ACTIVITIES),
    help="The activity to wait for. Repeatable: any of them.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    help="Give up after this many seconds (exit 1). Default: wait as long as it takes.",
)
@pass_settings
def wait(settings: Settings, name: str, wanted: tuple[str, ...], timeout: float | None) -> None:
    """Wait until agent NAME's activity is one of --activity, then print it.

    Activities: starting (nothing drawn, or its prompt not seen yet), attention (a dialog
    waits for a person), idle (at its prompt), busy (working), exited. For scripts:
    `trio-relay wait alice --activity idle --timeout 60 && trio-relay send alice "..."`.
    Exits 0 once it is; 1 if the agent exits first (unless exited is wanted) or the time
    runs out, saying what it is doing instead.
    """

    async def watch(client: Any) -> AgentSummary | str:
        status = await client.status()  # events from here on are replayed: no change is missed
        agent = _agent(await client.agents(), name)
        if agent.activity in wanted:
            return agent
        async with client.subscribe(status.last_seq, agent=name) as events:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                async for event in events:
                    if isinstance(event, AgentActivity) and event.to in wanted:
                        return _agent(await client.agents(), name)
                    if isinstance(event, AgentActivity) and event.to == "exited":
                        return f"{name} exited ({event.text})"
        agent = _agent(await client.agents(), name)
        return f"timed out after {timeout:g} s: {name} is {agent.activity} ({agent.activity_text})"

    result = settings.call(watch)
    if isinstance(result, str):
        die(result)
    settings.emit(result, lambda a: click.echo(f"{a.name} {a.activity}: {a.activity_text}"))


def _agent(agents: list[AgentSummary], name: str) -> AgentSummary:
    for agent in agents:
        if agent.name == name:
            return agent
    die(f"no agent named {name!r}")


@command(shared=("state_dir", "as_json"))
@click.argument("name", required=False)
@pass_settings
def profiles(settings: Settings, name: str | None) -> None:
    """List the agent profiles, or print profile NAME's file.

    A profile tells how an agent CLI shows its prompt, that it is busy, or that a dialog
    waits for a person, and how to type a message so that it is submitted. `spawn` picks
    one by the command's name, or takes --profile NAME. Your own are TOML files in the
    format of the built-ins, in <state dir>/profiles/ or ~/.config/trio-relay/profiles/;
    one named like a built-in replaces it.
    """
    from pathlib import Path

    from trio_relay.errors import ProfileError
    from trio_relay.profiles.catalog import Catalog, load_profile_file, user_profile_dirs

    catalog = Catalog(user_profile_dirs(Path(settings.state_dir or ".trio-relay")))
    files = catalog.files()
    try:
        if name is not None:
            path = files.get(name)
            if path is None:
                catalog.get(name)  # raises ProfileError naming those there are
                return
            load_profile_file(path)  # a broken file is an error here too
            if settings.as_json:
                settings.emit({"name": name, "path": str(path), "text": path.read_text()})
            else:
                click.echo(f"# {path}")
                click.echo(path.read_text(), nl=False)
            return
        rows = []
        for each, path in sorted(files.items()):
            profile = load_profile_file(path)
            rows.append({"name": each, "summary": profile.summary, "path": str(path)})
    except ProfileError as exc:
        die(str(exc), exit_code=2)
    if settings.as_json:
        settings.emit(rows)
        return
    from trio_relay.cli.render import table

    table([[r["name"], r["summary"], r["path"]] for r in rows], ["NAME", "SUMMARY", "FILE"])
