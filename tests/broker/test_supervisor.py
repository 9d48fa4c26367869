"""Supervised workers, with real child processes (the reference native worker)."""

from __future__ import annotations

import os
import signal
import stat
import sys
from pathlib import Path

import pytest
import trio
from helpers import REFERENCE_WORKER, keep_failure, pid_alive, wait_until

from trio_relay import (
    Broker,
    RequestTimeout,
    RestartPolicy,
    SpawnFailed,
    WorkerError,
    WorkerExited,
    WorkerNotFound,
    open_broker,
)
from trio_relay.errors import AgentExists
from trio_relay.wire import (
    AgentActivity,
    AgentExited,
    AgentGaveUp,
    AgentReady,
    AgentRestarting,
    AgentSpawned,
    SpawnFailedEvent,
    WorkerProtocolError,
)


def terminal_events(broker: Broker, agent: str) -> list[object]:
    return [
        e
        for e in broker.events.since(0)
        if isinstance(e, (AgentExited, SpawnFailedEvent)) and e.agent == agent
    ]


async def test_answered_request(broker: Broker) -> None:
    info = await broker.spawn("w", REFERENCE_WORKER)
    assert info.state == "running" and pid_alive(info.pid)
    assert await broker.request_worker("w", "ping", {"data": [1, "x"]}) == {"data": [1, "x"]}
    await broker.events.wait_for(lambda e: isinstance(e, AgentReady) and e.agent == "w")


async def test_timeout_leaves_no_pending_entry(broker: Broker) -> None:
    await broker.spawn("w", REFERENCE_WORKER)
    with trio.fail_after(5):
        with pytest.raises(RequestTimeout):
            await broker.request_worker("w", "hang", timeout=0.2)
    assert broker.statistics().pending == 0
    assert broker.agent("w").pending_requests == 0
    assert await broker.request_worker("w", "ping", {"data": 1}) == {"data": 1}


async def test_worker_error(broker: Broker) -> None:
    await broker.spawn("w", REFERENCE_WORKER)
    with pytest.raises(WorkerError) as info:
        await broker.request_worker("w", "fail", {"code": "nope", "message": "refused"})
    assert (info.value.code, info.value.message) == ("nope", "refused")
    with pytest.raises(WorkerError) as info:
        await broker.request_worker("w", "no-such-kind")
    assert info.value.code == "unknown_kind"


async def test_worker_dies_mid_request_and_waiters_learn_at_once(broker: Broker) -> None:
    await broker.spawn("w", REFERENCE_WORKER)
    outcomes: list[BaseException] = []
    hang = lambda: broker.request_worker("w", "hang", timeout=60)  # noqa: E731
    with trio.fail_after(10):  # far below the 60 s deadline
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(keep_failure, outcomes, WorkerExited, hang)
            await wait_until(lambda: broker.statistics().pending == 3)
            with pytest.raises(WorkerExited):
                await broker.request_worker("w", "crash", {"code": 7})
    assert [o.code for o in outcomes] == [7, 7, 7]
    assert broker.statistics().pending == 0


async def test_worker_not_found(broker: Broker) -> None:
    with pytest.raises(WorkerNotFound):
        await broker.request_worker("ghost", "ping")
    with pytest.raises(WorkerNotFound):
        await broker.write_input("ghost", "x")
    with pytest.raises(WorkerNotFound):
        await broker.release("ghost")


async def test_cancelled_caller_the_late_answer_is_dropped_and_counted(broker: Broker) -> None:
    await broker.spawn("w", REFERENCE_WORKER)
    with trio.move_on_after(0.05) as scope:
        await broker.request_worker("w", "sleep", {"seconds": 0.3}, timeout=30)
    assert scope.cancelled_caught
    assert broker.statistics().pending == 0
    await wait_until(lambda: broker.statistics().late_dropped == 1)
    assert await broker.request_worker("w", "ping", {"data": 2}) == {"data": 2}


async def test_release_of_a_worker_that_ignores_sigterm(broker: Broker) -> None:
    argv = [*REFERENCE_WORKER, "--ignore-sigterm", "--ignore-shutdown"]
    info = await broker.spawn("stubborn", argv, grace=0.2, kill_grace=0.3)
    with trio.fail_after(10):
        released = await broker.release("stubborn")
    assert released.state == "released"
    assert not pid_alive(info.pid)
    (exited,) = terminal_events(broker, "stubborn")
    assert exited.intended and exited.signal == signal.SIGKILL
    assert exited.reason == "released"


async def test_crash_gives_exactly_one_unintended_exit(broker: Broker) -> None:
    await broker.spawn("w", REFERENCE_WORKER)

    async def pester() -> None:  # more signs of death: writes racing the exit
        try:
            while True:
                await broker.request_worker("w", "ping", timeout=5)
        except (WorkerExited, WorkerNotFound, trio.BrokenResourceError):
            return
        except Exception as exc:  # ChannelClosed is fine too
            assert type(exc).__name__ == "ChannelClosed", exc

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(pester)
        with pytest.raises(WorkerExited):
            await broker.request_worker("w", "crash", {"code": 3})
    await broker.supervisor.get("w").done.wait()
    (exited,) = terminal_events(broker, "w")
    assert (exited.code, exited.signal, exited.intended) == (3, None, False)
    assert broker.agent("w").state == "exited"


async def test_external_kill_is_reported_with_its_signal(broker: Broker) -> None:
    info = await broker.spawn("w", REFERENCE_WORKER)
    os.kill(info.pid, signal.SIGKILL)
    event = await broker.events.wait_for(lambda e: isinstance(e, AgentExited))
    assert (event.signal, event.intended) == (signal.SIGKILL, False)
    assert "SIGKILL" in event.reason


async def test_release_is_intended_and_never_a_crash(broker: Broker) -> None:
    info = await broker.spawn("w", REFERENCE_WORKER, restart=RestartPolicy("always"))
    await broker.release("w")
    (exited,) = terminal_events(broker, "w")
    assert exited.intended and exited.code == 0
    assert not pid_alive(info.pid)
    assert not any(isinstance(e, AgentRestarting) for e in broker.events.since(0))


async def test_shutdown_releases_every_agent_as_intended() -> None:
    async with open_broker() as broker:
        for name in "abc":
            await broker.spawn(name, REFERENCE_WORKER)
        pids = [a.pid for a in broker.agents()]
    exits = [e for e in broker.events.since(0) if isinstance(e, AgentExited)]
    assert sorted(e.agent for e in exits) == ["a", "b", "c"]
    assert all(e.intended and e.reason == "broker shutdown" for e in exits)
    assert not any(pid_alive(p) for p in pids)


async def test_cancelling_the_broker_still_reaps_and_reports_intended_exits() -> None:
    with trio.CancelScope() as outer:
        async with open_broker() as broker:
            await broker.spawn("w", REFERENCE_WORKER)
            outer.cancel()
            await trio.sleep_forever()
    (exited,) = terminal_events(broker, "w")
    assert exited.intended


@pytest.mark.parametrize(
    ("argv", "cwd", "expected", "errno"),
    [
        (["definitely-not-a-program-xyz"], None, "No such file", 2),
        ([sys.executable], "/no/such/dir", "working directory", 2),
    ],
)
async def test_spawn_failures_give_spawn_failed(
    broker: Broker, argv: list[str], cwd: str | None, expected: str, errno: int
) -> None:
    with pytest.raises(SpawnFailed) as info:
        await broker.spawn("bad", argv, cwd=cwd)
    assert expected in str(info.value) and info.value.errno == errno
    (event,) = terminal_events(broker, "bad")
    assert isinstance(event, SpawnFailedEvent) and event.errno == errno
    assert expected in event.error
    await broker.spawn("bad", REFERENCE_WORKER)  # the name is free again


async def test_spawning_a_file_that_is_not_executable(broker: Broker, tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(SpawnFailed, match="Permission denied"):
        await broker.spawn("bad", [str(script)])


async def test_a_program_that_exits_before_hello(broker: Broker) -> None:
    with pytest.raises(SpawnFailed) as info:
        await broker.spawn("bad", ["sh", "-c", "echo no-worker-here >&2; exit 3"])
    assert "exited with code 3 before saying hello" in str(info.value)
    assert "no-worker-here" in str(info.value)


async def test_a_program_that_never_says_hello(broker: Broker) -> None:
    with trio.fail_after(10):
        with pytest.raises(SpawnFailed, match="did not say hello within 0.3 s"):
            await broker.spawn(
                "mute", [*REFERENCE_WORKER, "--no-hello"], hello_timeout=0.3, grace=0.2
            )


async def test_a_name_can_only_be_used_once_at_a_time(broker: Broker) -> None:
    await broker.spawn("w", REFERENCE_WORKER)
    with pytest.raises(AgentExists):
        await broker.spawn("w", REFERENCE_WORKER)


async def test_garbage_on_stdout_is_reported_and_the_worker_keeps_serving() -> None:
    async with open_broker(max_line=1000) as broker:
        await broker.spawn("w", REFERENCE_WORKER)
        for text in ["this is not json", '{"kind":"teleport"}', "x" * 5000]:
            await broker.request_worker("w", "garbage", {"text": text})
        errors = [e for e in broker.events.since(0) if isinstance(e, WorkerProtocolError)]
        assert len(errors) == 3
        assert "not JSON" in errors[0].error
        assert "teleport" in errors[1].error
        assert "5000 bytes exceeds the 1000 byte limit" in errors[2].error
        assert await broker.request_worker("w", "ping", {"data": "still here"}) == {
            "data": "still here"
        }
        assert broker.agent("w").protocol_errors == 3


async def test_stderr_is_kept_in_a_ring(broker: Broker) -> None:
    await broker.spawn("w", REFERENCE_WORKER)
    await broker.request_worker("w", "stderr", {"text": "a line for the log"})
    await wait_until(lambda: "a line for the log" in broker.logs("w"))


async def test_on_failure_restarts_with_backoff_then_gives_up(broker: Broker) -> None:
    policy = RestartPolicy("on-failure", initial_delay=0.05, max_attempts=2, jitter=0)
    argv = [*REFERENCE_WORKER, "--exit-after", "0.05", "--exit-code", "4"]
    await broker.spawn("loop", argv, restart=policy)
    with trio.fail_after(20):
        await broker.events.wait_for(lambda e: isinstance(e, AgentGaveUp))
    events = [e for e in broker.events.since(0) if getattr(e, "agent", None) == "loop"]
    kinds = [type(e).__name__ for e in events if not isinstance(e, AgentReady | AgentActivity)]
    assert kinds == [
        "AgentSpawned",
        "AgentExited",
        "AgentRestarting",
        "AgentSpawned",
        "AgentExited",
        "AgentRestarting",
        "AgentSpawned",
        "AgentExited",
        "AgentGaveUp",
    ]
    restarts = [e for e in events if isinstance(e, AgentRestarting)]
    assert [(r.attempt, r.delay) for r in restarts] == [(1, 0.05), (2, 0.1)]
    exits = [e for e in events if isinstance(e, AgentExited)]
    spawns = [e for e in events if isinstance(e, AgentSpawned)]
    for exit_, restart, spawn in zip(exits, restarts, spawns[1:]):
        assert spawn.time - exit_.time >= restart.delay  # never faster than the backoff
    assert all(e.code == 4 and not e.intended for e in exits)
    assert broker.agent("loop").state == "gave_up"


async def test_on_failure_does_not_restart_a_clean_exit_but_always_does(broker: Broker) -> None:
    clean = [*REFERENCE_WORKER, "--exit-after", "0.05"]
    await broker.spawn("once", clean, restart=RestartPolicy("on-failure", initial_delay=0.01))
    await broker.supervisor.get("once").done.wait()
    assert broker.agent("once").state == "exited"
    policy = RestartPolicy("always", initial_delay=0.01, max_attempts=1)
    await broker.spawn("again", clean, restart=policy)
    await broker.supervisor.get("again").done.wait()
    assert broker.agent("again").restarts == 1


async def test_release_during_backoff_stops_the_restarts(broker: Broker) -> None:
    policy = RestartPolicy("always", initial_delay=30)
    await broker.spawn("w", [*REFERENCE_WORKER, "--exit-after", "0.05"], restart=policy)
    await broker.events.wait_for(lambda e: isinstance(e, AgentRestarting))
    with trio.fail_after(5):
        await broker.release("w")
    assert broker.agent("w").state == "released"


async def test_a_nul_byte_in_the_environment_is_a_clear_spawn_failure(broker: Broker) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(SpawnFailed, match="NUL"):
        await broker.spawn("w", REFERENCE_WORKER, env={"X": "a\0b"})
    assert len(os.listdir("/proc/self/fd")) == fds_before  # no pipe left open
    await broker.spawn("w", REFERENCE_WORKER)  # the name is free, nothing half-recorded


async def test_input_to_a_worker_that_never_reads_times_out(tmp_path: Path) -> None:
    deaf = tmp_path / "deaf.py"  # says hello, then never reads its stdin
    deaf.write_text(
        "import sys, time\n"
        'sys.stdout.write(\'{"kind": "hello", "protocol": 1}\\n\'); sys.stdout.flush()\n'
        "time.sleep(60)\n"
    )
    async with open_broker(request_timeout=0.5) as broker:
        await broker.spawn("deaf", [sys.executable, str(deaf)], grace=0.1, kill_grace=0.1)
        with trio.fail_after(10), pytest.raises(RequestTimeout, match="input"):
            await broker.write_input("deaf", "x" * 1_000_000)  # more than a pipe holds
