"""An agent's activity as the broker records it: each change is one ``agent_activity``
event, a second dialog in a row is one too, and a run's end makes it ``exited``."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from trio_relay.broker.agent import Agent, AgentSpec
from trio_relay.broker.attention import run_attention_hook
from trio_relay.broker.events import EventLog
from trio_relay.broker.restart import RestartPolicy, RestartTracker
from trio_relay.wire import AgentActivity, Event


def agent() -> tuple[Agent, list[Event]]:
    events: list[Event] = []
    spec = AgentSpec("a", ["prog"])
    return Agent(spec, RestartTracker(RestartPolicy()), events.append), events


def changes(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.from_, e.to, e.text) for e in events if isinstance(e, AgentActivity)]


def test_each_change_and_each_new_dialog_is_an_event_but_not_a_new_reason_to_wait() -> None:
    a, events = agent()
    a.change_state("running")  # already starting: no event
    a.set_activity("attention", "asks to trust", waiting="the agent waits for a person")
    a.set_activity("attention", "asks for a key", waiting="the agent waits for a person")
    a.set_activity("idle", "❯")
    a.set_activity("idle", "❯", waiting="a draft is in the input line: 'x'")
    assert changes(events) == [
        ("starting", "attention", "asks to trust"),
        ("attention", "attention", "asks for a key"),
        ("attention", "idle", "❯"),
    ]
    assert (a.activity, a.activity_text) == ("idle", "❯")
    assert a.waiting == "a draft is in the input line: 'x'"


def test_the_end_of_a_run_is_exited_and_the_next_run_starts_again() -> None:
    a, events = agent()
    a.change_state("running")
    a.set_activity("busy", "esc to interrupt", waiting="the agent is busy")
    a.change_state("restarting", reason="exited with code 1")
    assert (a.activity, a.activity_text, a.waiting) == ("exited", "exited with code 1", None)
    a.change_state("running")
    assert changes(events)[-2:] == [
        ("busy", "exited", "exited with code 1"),
        ("exited", "starting", "spawned: nothing drawn yet"),
    ]


async def test_the_attention_hook_runs_for_the_very_next_change(tmp_path: Path) -> None:
    events = EventLog()
    out = tmp_path / "hook.out"
    command = f'echo "$TRIO_RELAY_AGENT: $TRIO_RELAY_ATTENTION" >> {out}'
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_attention_hook, events, command)
        await trio.testing.wait_all_tasks_blocked()
        events.emit(AgentActivity(agent="a", from_="starting", to="attention", text="trust?"))
        events.emit(AgentActivity(agent="a", from_="attention", to="idle", text="❯"))
        with trio.fail_after(10):
            while not out.exists() or not out.read_text():
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert out.read_text() == "a: trust?\n"  # once, for the change to attention only
