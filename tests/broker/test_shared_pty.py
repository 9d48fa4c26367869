"""The shared PTY host (``shared_pty``): many PTY agents' workers in one process, with real
programs in real terminals. The PTY worker's own tests also run in the host (see
``tests/worker/test_pty_worker.py``); these are about what sharing changes: one process,
each agent its own session, and a death of the host failing its agents only, each with its
own terminal event."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from helpers import REFERENCE_WORKER, pid_alive, wait_until

from trio_relay import Broker, SpawnFailed, open_broker
from trio_relay.broker.pty_host import hosted_args
from trio_relay.broker.restart import RestartPolicy
from trio_relay.linux.procfs import process_stat, session_members
from trio_relay.wire import AgentExited, AgentReady, AgentSpawned, Event

PTY = [sys.executable, "-m", "trio_relay.worker.pty"]
BASH = ["bash", "--norc", "--noprofile"]


def pty(*command: str) -> list[str]:
    return [*PTY, "--", *command]


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with open_broker(shared_pty=True) as b:
        yield b


def program_of(broker: Broker, name: str) -> int:
    hello = broker.supervisor.get(name).hello
    assert hello is not None and hello.program_pid
    return hello.program_pid


async def wait_event(broker: Broker, kind: type[Event], name: str, since: int) -> Event:
    with trio.fail_after(15):
        return await broker.events.wait_for(
            lambda e: isinstance(e, kind) and getattr(e, "agent", None) == name, since=since
        )


async def spawn_ready(broker: Broker, name: str, argv: list[str], **kw: object) -> None:
    since = broker.events.last_seq
    await broker.spawn(name, argv, **kw)  # type: ignore[arg-type]
    await wait_event(broker, AgentReady, name, since)


async def screen_shows(broker: Broker, name: str, text: str) -> None:
    with trio.fail_after(10):
        while text not in (await broker.request_worker(name, "snapshot"))["text"]:
            await trio.sleep(0.01)


def test_only_the_pty_worker_runs_in_the_host() -> None:
    assert hosted_args([*PTY, "--rows", "30", "--", "bash"]) == ["--rows", "30", "--", "bash"]
    safe_path = [sys.executable, "-P", *PTY[1:], "--", "bash"]  # what `spawn` builds
    assert hosted_args(safe_path) == ["--", "bash"]
    assert hosted_args([sys.executable, "-P"]) is None
    assert hosted_args([*PTY]) is None
    assert hosted_args(REFERENCE_WORKER) is None
    assert hosted_args(["bash"]) is None
    assert hosted_args([*PTY, "--shared-host", "--control-fd", "3"]) is None


async def test_agents_share_one_host_each_in_its_own_session() -> None:
    with trio.fail_after(30):
        async with open_broker(shared_pty=True) as broker:
            for name in ("a", "b", "c"):
                await spawn_ready(broker, name, pty(*BASH))
            await broker.spawn("ref", REFERENCE_WORKER)
            host = broker.supervisor.pty_host
            assert host is not None and host.pid is not None
            host_pid = host.pid
            hosted = {a.name: a.pid for a in broker.agents() if a.name != "ref"}
            assert set(hosted.values()) == {host_pid}
            assert broker.agent("ref").pid not in (None, host_pid)  # not a PTY agent: a child
            programs = {name: program_of(broker, name) for name in hosted}
            for pid in programs.values():
                stat = process_stat(pid)
                assert stat is not None and stat.ppid == host_pid and stat.session == pid
            # Each agent's own terminal: typed into one, shown in that one only.
            await broker.write_input("b", "echo only-in-$((40+2))\r")
            await screen_shows(broker, "b", "only-in-42")
            assert "only-in-42" not in (await broker.request_worker("a", "snapshot"))["text"]
            # Who a process belongs to goes by its program's session, never by the shared pid.
            processes = broker.agent_processes()
            assert host_pid not in processes.workers and host_pid not in processes.sessions
            assert {processes.sessions[pid] for pid in programs.values()} == set(hosted)
            # One released: its program is gone, the others and the host run on.
            await broker.release("a")
            await wait_until(lambda: not session_members(programs["a"]), timeout=5)
            assert pid_alive(host_pid) and pid_alive(programs["b"])
            await broker.write_input("c", "echo still-$((6*7))\r")
            await screen_shows(broker, "c", "still-42")
        # Leaving the broker stops the host and every program in it.
        assert host.pid is None
        assert not pid_alive(host_pid)  # reaped when the broker closed
        for pid in programs.values():
            assert not session_members(pid)


async def test_a_host_that_dies_fails_its_agents_each_with_its_own_event(
    broker: Broker,
) -> None:
    with trio.fail_after(40):
        policy = RestartPolicy("on-failure", initial_delay=0.05, jitter=0)
        await spawn_ready(broker, "kept", pty(*BASH), restart=policy)
        await spawn_ready(broker, "gone", pty(*BASH))
        await broker.spawn("ref", REFERENCE_WORKER)
        host = broker.supervisor.pty_host
        assert host is not None and host.pid is not None
        old_host = host.pid
        programs = [program_of(broker, "kept"), program_of(broker, "gone")]
        since = broker.events.last_seq
        os.kill(old_host, signal.SIGKILL)
        for name in ("kept", "gone"):
            exited = await wait_event(broker, AgentExited, name, since)
            assert isinstance(exited, AgentExited) and not exited.intended
            assert exited.signal == signal.SIGKILL
            assert f"in the shared PTY host (pid {old_host}), which ended" in exited.reason
        for pid in programs:  # no program outlives its host
            await wait_until(lambda pid=pid: not session_members(pid), timeout=5)
        assert broker.agent("gone").state == "exited"
        assert broker.agent("ref").state == "running"  # not in the host: untouched
        assert await broker.request_worker("ref", "ping") is not None
        # The restart starts a new host, and the agent works there.
        spawned = await wait_event(broker, AgentSpawned, "kept", since)
        assert isinstance(spawned, AgentSpawned) and spawned.pid != old_host
        assert host.pid == spawned.pid
        await broker.write_input("kept", "echo back-$((6*7))\r")
        await screen_shows(broker, "kept", "back-42")


async def test_a_hosted_worker_killed_alone_ends_alone(broker: Broker) -> None:
    """What the stop escalation's last step does to a hosted worker: SIGKILL to it (through
    the host) ends that agent and its program, nothing else."""
    with trio.fail_after(30):
        await spawn_ready(broker, "a", pty(*BASH))
        await spawn_ready(broker, "b", pty(*BASH))
        program = program_of(broker, "a")
        since = broker.events.last_seq
        proc = broker.supervisor.get("a").proc
        assert proc is not None
        proc.signal_group(signal.SIGKILL)
        exited = await wait_event(broker, AgentExited, "a", since)
        assert isinstance(exited, AgentExited) and exited.signal == signal.SIGKILL
        await wait_until(lambda: not session_members(program), timeout=5)
        await wait_until(lambda: process_stat(program) is None, timeout=5)  # reaped
        await broker.write_input("b", "echo fine-$((6*7))\r")
        await screen_shows(broker, "b", "fine-42")


async def test_what_cannot_start_in_the_host_is_a_clear_spawn_failure(
    broker: Broker, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        with pytest.raises(SpawnFailed) as info:
            await broker.spawn("missing", pty("no-such-program-here"))
        assert "exited with code 127 before saying hello" in str(info.value)
        assert "cannot run 'no-such-program-here': No such file or directory" in str(info.value)
        with pytest.raises(SpawnFailed, match="working directory .*: No such file or directory"):
            await broker.spawn("nowhere", pty(*BASH), cwd=str(tmp_path / "nowhere"))
        with pytest.raises(SpawnFailed, match="exited with code 2 before saying hello"):
            await broker.spawn("bad-option", [*PTY, "--rows", "many", "--", *BASH])
        await spawn_ready(broker, "fine", pty(*BASH), cwd=str(tmp_path))
        await broker.write_input("fine", "pwd\r")
        await screen_shows(broker, "fine", str(tmp_path))


async def test_many_spawns_at_once_each_get_through(broker: Broker) -> None:
    """Start messages queue for room on the host's socket in turn (each carries the whole
    environment: here 24 KB, so a dozen fill the socket's buffer)."""
    names = [f"cat{i}" for i in range(16)]
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(
                    functools.partial(broker.spawn, name, pty("cat"), env={"FILL": "x" * 24_000})
                )
        assert {broker.agent(n).state for n in names} == {"running"}
        await broker.write_input("cat15", "last one\r")
        await screen_shows(broker, "cat15", "last one")
