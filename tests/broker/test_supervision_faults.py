"""One agent never takes the broker down: faults in its supervision, leftovers the broker may
not signal, a wrapper's false claims, and the races around spawn, death and shutdown."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from helpers import REFERENCE_WORKER, group_alive, keep_failure, pid_alive, wait_until

import trio_relay.broker.process
import trio_relay.broker.reader
import trio_relay.broker.supervisor
from trio_relay import Broker, RestartPolicy, SpawnFailed, WorkerExited, open_broker
from trio_relay.broker.correlator import Correlator
from trio_relay.broker.process import WorkerProcess
from trio_relay.broker.restart import RestartTracker
from trio_relay.errors import AgentExists
from trio_relay.store.engine import Store
from trio_relay.wire import (
    AgentExited,
    AgentSpawned,
    SpawnFailedEvent,
    WorkerProtocolError,
)

PTY_WORKER = [sys.executable, "-m", "trio_relay.worker.pty"]


def terminal_events(broker: Broker, agent: str) -> list[AgentExited | SpawnFailedEvent]:
    return [
        e
        for e in broker.events.since(0)
        if isinstance(e, (AgentExited, SpawnFailedEvent)) and e.agent == agent
    ]


def runs(broker: Broker, agent: str) -> int:
    """How many runs of ``agent`` got past their hello."""
    return sum(
        1 for e in broker.events.since(0) if isinstance(e, AgentSpawned) and e.agent == agent
    )


# ---------------------------------------------------------------- faults in supervision


class Fault(RuntimeError):
    """A planted bug."""


def plant(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Make supervision of the agent named ``faulty`` fail at ``where``."""
    if where == "spawn":
        real = trio_relay.broker.supervisor.spawn_process

        def spawn(name, *args, **kwargs):  # type: ignore[no-untyped-def]
            if name == "faulty":
                raise Fault("spawn")
            return real(name, *args, **kwargs)

        monkeypatch.setattr(trio_relay.broker.supervisor, "spawn_process", spawn)
    elif where == "hello":
        real_attach = Correlator.attach

        def attach(self, worker, route):  # type: ignore[no-untyped-def]
            if worker == "faulty":
                raise Fault("attach")
            return real_attach(self, worker, route)

        monkeypatch.setattr(Correlator, "attach", attach)
    elif where == "frame":
        real_decode = trio_relay.broker.reader.decode_worker_frame

        def decode(line):  # type: ignore[no-untyped-def]
            if b"PLANTED" in line:
                raise Fault("frame")
            return real_decode(line)

        monkeypatch.setattr(trio_relay.broker.reader, "decode_worker_frame", decode)
    elif where == "exit":  # a PTY worker's hello names a session; the reference one does not
        monkeypatch.setattr(
            trio_relay.broker.supervisor, "is_child_session", lambda parent, leader: True
        )

        def kill_session(sid):  # type: ignore[no-untyped-def]
            raise Fault("kill_session")

        monkeypatch.setattr(trio_relay.broker.process, "kill_session", kill_session)
    elif where in ("stop", "close"):
        real_method = getattr(WorkerProcess, where)

        async def faulty(self, *args):  # type: ignore[no-untyped-def]
            result = await real_method(self, *args)
            if self.name == "faulty":
                raise Fault(where)
            return result

        monkeypatch.setattr(WorkerProcess, where, faulty)
    elif where == "restart":

        def next_delay(self, ran_for):  # type: ignore[no-untyped-def]
            raise Fault("restart")

        monkeypatch.setattr(RestartTracker, "next_delay", next_delay)
    else:  # pragma: no cover
        raise AssertionError(where)


FAULTS = ["spawn", "hello", "frame", "exit", "stop", "close", "restart"]


@pytest.mark.parametrize("where", FAULTS)
async def test_a_fault_anywhere_in_supervision_ends_only_that_agent(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant(monkeypatch, where)
    async with open_broker() as broker:
        healthy = await broker.spawn("healthy", REFERENCE_WORKER)
        if where in ("spawn", "hello"):
            with pytest.raises(SpawnFailed, match="internal error"):
                await broker.spawn("faulty", REFERENCE_WORKER)
        else:
            claim = ["--program-pid", str(2**22 + 1)] if where == "exit" else []
            await broker.spawn(
                "faulty", [*REFERENCE_WORKER, *claim], restart=RestartPolicy("always")
            )
            outcomes: list[BaseException] = []
            hang = lambda: broker.request_worker("faulty", "hang", timeout=60)  # noqa: E731
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(keep_failure, outcomes, WorkerExited, hang)
                    await wait_until(lambda: broker.statistics().pending == 1)
                    with pytest.raises(WorkerExited):
                        if where == "frame":  # the reader trips on this frame's line
                            await broker.request_worker("faulty", "garbage", {"text": "PLANTED"})
                        else:  # the fault strikes when the agent ends
                            await broker.request_worker("faulty", "crash", {"code": 1})
                await wait_until(lambda: not broker.supervisor.get("faulty").active)
            assert len(outcomes) == 1, "the in-flight request must fail, not hang"
        # Exactly one terminal event for the faulty agent, and it is not running.
        (end,) = terminal_events(broker, "faulty")
        if where in ("spawn", "hello"):
            assert isinstance(end, SpawnFailedEvent) and "internal error" in end.error
        else:
            assert isinstance(end, AgentExited) and not end.intended
        assert broker.agent("faulty").state in ("exited", "failed", "gave_up")
        assert broker.agent("faulty").pid is None
        # Nothing else stopped.
        assert await broker.request_worker("healthy", "ping", {"data": where}) == {"data": where}
        assert broker.agent("healthy").pid == healthy.pid
        # The name is free again.
        monkeypatch.undo()
        await broker.spawn("faulty", REFERENCE_WORKER)
        assert await broker.request_worker("faulty", "ping", {"data": 1}) == {"data": 1}


async def test_a_fault_on_the_frame_after_the_hello_fails_the_spawn_with_its_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reference worker writes its hello and ``ready`` at once: the run attaches, and
    the fault routing ``ready`` ends it before the spawn was told it started."""
    real_route = trio_relay.broker.reader.FrameReader._route

    def route(self, frame):  # type: ignore[no-untyped-def]
        if self._agent.name == "faulty":
            raise Fault("route")
        return real_route(self, frame)

    monkeypatch.setattr(trio_relay.broker.reader.FrameReader, "_route", route)
    async with open_broker() as broker:
        with trio.fail_after(20), pytest.raises(SpawnFailed, match="supervisor error"):
            await broker.spawn("faulty", REFERENCE_WORKER)
        (end,) = terminal_events(broker, "faulty")
        assert isinstance(end, AgentExited) and "supervisor error" in end.reason
        assert broker.agent("faulty").state == "failed"


# ---------------------------------------------------------------- a wrapper's claims


async def test_a_hello_naming_another_session_is_not_trusted(broker: Broker) -> None:
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        await broker.spawn("liar", [*REFERENCE_WORKER, "--program-pid", str(bystander.pid)])
        event = await broker.events.wait_for(
            lambda e: isinstance(e, WorkerProtocolError) and e.agent == "liar"
        )
        assert str(bystander.pid) in event.error and "not trusted" in event.error
        await broker.release("liar")
        assert bystander.poll() is None, "the broker killed a session that was not the worker's"
    finally:
        bystander.kill()
        bystander.wait()


async def test_a_hello_naming_a_program_that_already_exited_is_no_protocol_error(
    broker: Broker,
) -> None:
    """A wrapper whose program exited before its hello (``true``) names a pid that is gone:
    nothing to trust or to kill, and no warning about it."""
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process
    await broker.spawn("quick", [*REFERENCE_WORKER, "--program-pid", str(gone.pid)])
    assert await broker.request_worker("quick", "ping", {"data": 1}) == {"data": 1}
    assert not [
        e
        for e in broker.events.since(0)
        if isinstance(e, WorkerProtocolError) and e.agent == "quick"
    ]


# ---------------------------------------------------------------- races


async def test_in_flight_requests_fail_as_soon_as_the_death_is_seen(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the broker waits for after a death (the rest of stderr, say), it must not
    # delay the news: make that wait far longer than the test's own ceiling.
    monkeypatch.setattr(trio_relay.broker.supervisor, "OUTPUT_DRAIN_TIMEOUT", 60.0)
    await broker.spawn("w", REFERENCE_WORKER)
    helper = await broker.request_worker("w", "run", {"argv": ["sleep", "300"], "detach": True})
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                failures: list[WorkerExited] = []

                async def hang() -> None:
                    with pytest.raises(WorkerExited) as info:
                        await broker.request_worker("w", "hang", timeout=120)
                    failures.append(info.value)

                nursery.start_soon(hang)
                await wait_until(lambda: broker.statistics().pending == 1)
                with pytest.raises(WorkerExited):
                    await broker.request_worker("w", "crash", {"code": 5})
        assert [f.code for f in failures] == [5]
        (end,) = terminal_events(broker, "w")
        assert end.code == 5
    finally:
        _kill_quietly(helper["pid"])
        await wait_until(lambda: not broker.supervisor.get("w").active)


async def test_a_crash_seen_before_shutdown_is_not_respawned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The death is seen first, the shutdown comes while the broker still takes in the
    dead worker's last output (an escaped helper holds its pipes): it is a crash, and a
    ``restart=never`` agent that crashed is not started again by the next broker.

    The store commits the crash's first write (putting its deliveries back) only once it
    is closing, as a busy store thread would: what marks the agent as not to be respawned
    must be queued by then, not left to that commit's callback."""
    real_commit = Store._commit

    async def commit_when_closing(self: Store, batch: list) -> None:  # type: ignore[type-arg]
        if any(op.what == "requeue the deliveries of 'w'" for op in batch):
            await wait_until(lambda: self.closed)
        await real_commit(self, batch)

    state = tmp_path / "state"
    monkeypatch.setattr(Store, "_commit", commit_when_closing)
    async with open_broker(state) as broker:
        await broker.spawn("w", REFERENCE_WORKER, restart=RestartPolicy("never"))
        helper = await broker.request_worker("w", "run", {"argv": ["sleep", "300"], "detach": True})
        try:
            proc = broker.supervisor.running("w")

            async def crash() -> None:
                with pytest.raises(WorkerExited):
                    await broker.request_worker("w", "crash", {"code": 3})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(crash)
                await wait_until(lambda: proc.has_exited)
                nursery.cancel_scope.cancel()
            # leaving the block shuts the broker down right after the death was seen
        finally:
            helper_pid = helper["pid"]
    monkeypatch.undo()
    try:
        async with open_broker(state) as broker:
            assert runs(broker, "w") == 0, "a crashed restart=never agent came back"
    finally:
        _kill_quietly(helper_pid)


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the broker's sweep got it first


async def test_a_spawn_cancelled_before_the_hello_ends_with_spawn_failed(broker: Broker) -> None:
    with trio.move_on_after(0.3) as scope:
        await broker.spawn("mute", [*REFERENCE_WORKER, "--no-hello"])
    assert scope.cancelled_caught
    (end,) = terminal_events(broker, "mute")
    assert isinstance(end, SpawnFailedEvent) and "cancelled" in end.error
    assert broker.agent("mute").state == "failed"


async def test_concurrent_spawns_of_one_name_leave_the_winner_to_respawn(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with open_broker(state) as broker:
        results: list[object] = []

        async def spawn() -> None:
            try:
                results.append(await broker.spawn("twin", REFERENCE_WORKER))
            except AgentExists as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(spawn)
            nursery.start_soon(spawn)
        assert sorted(type(r).__name__ for r in results) == ["AgentExists", "AgentSummary"]
        assert broker.agent("twin").state == "running"
    async with open_broker(state) as broker:
        assert broker.agent("twin").state == "running", "the winner was not respawned"


async def test_a_daemon_that_leaves_the_session_dies_with_its_agent(
    broker: Broker, tmp_path: Path
) -> None:
    pidfile = tmp_path / "daemon.pid"
    script = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' < /dev/null > /dev/null 2>&1 &"
    await broker.spawn("codexish", [*PTY_WORKER, "--", "sh", "-c", f"{script} sleep 300"])
    await wait_until(lambda: pidfile.exists() and pidfile.read_text().strip())
    daemon = int(pidfile.read_text())
    assert os.getsid(daemon) == daemon  # it left the agent's session
    await broker.release("codexish")
    await wait_until(lambda: not pid_alive(daemon), timeout=5)


# ---------------------------------------------------------------- what the broker may not signal


def _caps_can_be_dropped() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


@pytest.mark.skipif(
    not _caps_can_be_dropped(),
    reason="needs root and setpriv to make a process the broker may not signal",
)
async def test_a_leftover_the_broker_may_not_signal_ends_only_that_agent(tmp_path: Path) -> None:
    """The broker runs without CAP_KILL (as a normal user would), and an agent leaves a
    process of another user in its session (as `sudo` in its terminal would)."""
    from trio_relay.client import open_client

    state = tmp_path / "state"
    relay = Path(sys.executable).with_name("trio-relay")
    broker = await trio.lowlevel.open_process(
        [
            "setpriv",
            "--bounding-set=-kill",
            "--inh-caps=-kill",
            str(relay),
            "up",
            "--state-dir",
            str(state),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    foreign: list[int] = []
    try:
        await wait_until(lambda: (state / "connection.json").exists(), timeout=20)
        async with open_client(state_dir=str(state)) as client:
            await client.spawn("healthy", REFERENCE_WORKER, native=True)
            for attempt in range(2):  # a second run of the same agent too
                await client.spawn("victim", ["bash", "--norc", "--noprofile"])
                await client.input(
                    "victim", "setpriv --reuid=65534 --regid=65534 --clear-groups sleep 300 &\r"
                )
                pid = await _foreign_sleeper(client, "victim", foreign)
                released = await client.release("victim")
                assert released.state == "released"
                assert pid_alive(pid)  # the broker could not kill it, and said so
                ends = [
                    e
                    for e in await _events(client)
                    if isinstance(e, AgentExited) and e.agent == "victim"
                ]
                assert len(ends) == attempt + 1, ends
                assert "could not be killed" in ends[-1].reason
            status = await client.status()
            assert status.agents == {"running": 1, "released": 1}
            await client.shutdown()
        with trio.fail_after(20):
            assert await broker.wait() == 0
    finally:
        for pid in foreign:
            os.kill(pid, signal.SIGKILL)
        if broker.returncode is None:
            broker.kill()
            await broker.wait()


async def _foreign_sleeper(client, agent: str, seen: list[int]) -> int:  # type: ignore[no-untyped-def]
    info = next(a for a in await client.agents() if a.name == agent)

    def find() -> int | None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in seen:
                try:
                    if (
                        entry.stat().st_uid == 65534
                        and (entry / "comm").read_text().strip() == "sleep"
                    ):
                        return int(entry.name)
                except OSError:
                    continue
        return None

    await wait_until(lambda: find() is not None)
    pid = find()
    assert pid is not None
    seen.append(pid)
    assert group_alive(info.pid)
    return pid


async def _events(client) -> list:  # type: ignore[no-untyped-def]
    out = []
    async with client.subscribe(0) as events:
        async for event in events:
            out.append(event)
            if event.seq >= events.last_seq:
                return out
    return out


async def test_a_fault_on_a_restart_fails_the_agents_open_deliveries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fault of ours before a restarted run's hello ends the agent for good: what was
    queued for it fails at once, naming why, instead of waiting for a run that never comes."""
    async with open_broker() as broker:
        await broker.spawn("faulty", REFERENCE_WORKER, restart=RestartPolicy("always"))
        await broker.set_mode("faulty", "hold")  # keep the deliveries queued in the broker
        receipts = [await broker.send("faulty", f"m{i}", sender="t") for i in range(2)]
        plant(monkeypatch, "hello")
        with pytest.raises(WorkerExited):
            await broker.request_worker("faulty", "crash", {"code": 1})
        with trio.fail_after(20):
            ended = [await broker.wait_delivery(r.delivery_id, timeout=15) for r in receipts]
        assert [d.state for d in ended] == ["failed", "failed"]
        assert all("will not restart" in (d.reason or "") for d in ended), ended
        assert broker.agent("faulty").state == "failed"
