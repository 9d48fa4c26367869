"""A PTY agent's last snapshot answers the next one while it has drawn nothing and not been
resized (``trio_relay.broker.screens``): the rules on their own, then with real workers."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from trio_relay import Broker, RequestTimeout, open_broker
from trio_relay.broker.restart import RestartPolicy
from trio_relay.broker.screens import LastScreens
from trio_relay.wire import AgentReady, Output

AT_ONCE = RestartPolicy("always", initial_delay=0.05, jitter=0)
PTY_BASH = [sys.executable, "-m", "trio_relay.worker.pty", "--", "bash", "--norc", "--noprofile"]


def shot(offset: object, text: str = "$") -> dict[str, object]:
    return {"text": text, "rows": 24, "cols": 80, "cursor": [0, 1], "offset": offset}


def test_nothing_is_kept_until_a_snapshot_is() -> None:
    screens = LastScreens()
    assert screens.current(False) is None
    screens.keep(False, screens.asking(), shot(0))
    assert screens.current(False) == shot(0)
    assert screens.current(True) is None  # plain and ANSI are kept apart


def test_output_since_the_snapshot_makes_it_stale() -> None:
    screens = LastScreens()
    screens.saw_output(Output(offset=0, data="héllo"))  # 6 bytes: the end counts bytes
    screens.keep(False, screens.asking(), shot(6))
    assert screens.current(False) == shot(6)
    screens.saw_output(Output(offset=6, data="!"))
    assert screens.current(False) is None
    screens.keep(False, screens.asking(), shot(7))
    assert screens.current(False) == shot(7)


def test_a_snapshot_behind_the_output_seen_is_not_current() -> None:
    screens = LastScreens()
    screens.saw_output(Output(offset=0, data="ab"))
    screens.keep(False, screens.asking(), shot(1))
    assert screens.current(False) is None


def test_a_resize_drops_what_was_kept_and_what_was_being_asked() -> None:
    screens = LastScreens()
    screens.keep(True, screens.asking(), shot(0))
    token = screens.asking()
    screens.resized()
    assert screens.current(True) is None
    screens.keep(False, token, shot(0))  # answered at the old size
    assert screens.current(False) is None
    screens.keep(False, screens.asking(), shot(0))
    assert screens.current(False) == shot(0)


def test_a_snapshot_without_an_offset_is_not_kept() -> None:
    screens = LastScreens()
    screens.keep(False, screens.asking(), shot(None))
    screens.keep(False, screens.asking(), shot("0"))
    assert screens.current(False) is None


@pytest.fixture(params=[False, True], ids=["own-worker", "shared-pty"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    async with open_broker(shared_pty=request.param) as b:
        yield b


async def spawn_bash(broker: Broker, name: str, **kw: Any) -> int:
    """Spawn bash in a PTY worker, wait until it is ready; return the worker's pid."""
    since = broker.events.last_seq
    await broker.spawn(name, PTY_BASH, **kw)
    with trio.fail_after(15):
        await broker.events.wait_for(
            lambda e: isinstance(e, AgentReady) and e.agent == name, since=since
        )
    hello = broker.supervisor.get(name).hello
    assert hello is not None
    return hello.pid


async def wait_for_screen(broker: Broker, name: str, text: str) -> dict[str, object]:
    with trio.fail_after(10):
        while text not in (payload := await broker.snapshot(name, timeout=5))["text"]:
            await trio.sleep(0.01)
    return payload


async def test_an_idle_agents_snapshot_needs_no_round_trip(broker: Broker) -> None:
    with trio.fail_after(40):
        pid = await spawn_bash(broker, "sh")
        first = await broker.snapshot("sh")
        second = await broker.snapshot("sh")
        assert second == first
        os.kill(pid, signal.SIGSTOP)  # the worker can answer nothing now
        try:
            assert await broker.snapshot("sh", timeout=1) == first
            with pytest.raises(RequestTimeout):  # what it is not answered from must wait
                await broker.snapshot("sh", ansi=True, timeout=0.5)
        finally:
            os.kill(pid, signal.SIGCONT)


async def test_new_output_and_a_resize_reach_the_next_snapshot(broker: Broker) -> None:
    with trio.fail_after(40):
        await spawn_bash(broker, "sh")
        before = await broker.snapshot("sh")
        await broker.write_input("sh", "echo mark$((6*7))\r")
        after = await wait_for_screen(broker, "sh", "mark42")
        assert after["offset"] > before["offset"]
        await broker.resize("sh", 30, 100)
        resized = await broker.snapshot("sh")
        assert (resized["rows"], resized["cols"]) == (30, 100)


async def test_a_restarted_agent_starts_with_nothing_kept() -> None:
    # This bash draws nothing when it starts (no prompt, no readline), so the new run's
    # first snapshot comes before any output: only the reset keeps the old screen out.
    quiet_bash = [*PTY_BASH, "--noediting"]
    with trio.fail_after(40):
        async with open_broker() as broker:
            await broker.spawn("sh", quiet_bash, env={"PS1": ""}, restart=AT_ONCE)
            pid = broker.supervisor.get("sh").hello.pid  # type: ignore[union-attr]
            await broker.write_input("sh", "echo first$((1+1))\r")
            await wait_for_screen(broker, "sh", "first2")
            os.kill(pid, signal.SIGKILL)  # the run ends with that screen kept and current
            with trio.fail_after(15):
                while (hello := broker.supervisor.get("sh").hello) is None or hello.pid == pid:
                    await trio.sleep(0.01)
            assert "first2" not in (await broker.snapshot("sh", timeout=5))["text"]
