#!/usr/bin/env python3
"""Benchmark the PTY worker through the broker.

    .venv/bin/python tools/bench_pty.py
    .venv/bin/python tools/bench_pty.py --agents 20 --snapshots 1000 --deliveries 200

Figures, each printed beside its target (issue 3):

- memory per agent: the wrapper's (the PTY worker's) RSS beside the wrapped program's, for a
  ``bash --norc`` and a ``cat`` agent, measured from /proc once the agent is ready and has
  run a command. PSS (shared pages split between the processes sharing them) and USS (pages
  only this process has) are shown too: with many agents, the ~7 MB of the interpreter's
  shared library and modules mapped from files count once, not per agent. Target: the
  wrapper costs at most ~16 MB of RSS beyond the program (agent-relay's Rust wrapper, measured
  on the machine the issue was written on). Also shown: whether the worker imports Trio
  (it should not: that alone is ~15 MB and ~150 ms);
- spawn to ready: from the spawn request(s) to ``agent_ready``, for 1 bash agent and for
  ``--agents`` bash agents spawned at once. Target: 20 agents ready within 2 s;
- snapshot round trip through ``broker.request_worker`` (one at a time), p50 and p99;
- delivery latency: from writing a ``deliver`` frame to a ``cat`` agent to the broker's
  ``delivery_verified`` event with ``verification: echo``, one delivery at a time (each sent
  as soon as the previous one was verified, so the injection throttle is in the figure).
  Target: p50 under 50 ms (agent-relay: about 500 ms).
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from measure import pct

from trio_relay import Broker, open_broker
from trio_relay.wire import AgentReady, Deliver, DeliveryVerifiedEvent, Event, encode

PTY_WORKER = [sys.executable, "-m", "trio_relay.worker.pty"]
BASH = ["bash", "--norc", "--noprofile"]
MB = 1024.0


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS of ``pid`` in MB (from /proc)."""
    figures = {"rss": 0.0, "pss": 0.0, "uss": 0.0}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            kb = float(rest.split()[0]) if rest.split() else 0.0
            if key == "Rss":
                figures["rss"] = kb / MB
            elif key == "Pss":
                figures["pss"] = kb / MB
            elif key in ("Private_Clean", "Private_Dirty"):
                figures["uss"] += kb / MB
    return figures


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


async def wait_ready(broker: Broker, names: set[str], since: int) -> None:
    left = set(names)
    async for event in broker.events.subscribe(since):
        if isinstance(event, AgentReady) and event.agent in left:
            left.discard(event.agent)
            if not left:
                return


async def spawn_ready(broker: Broker, names: list[str], argv: list[str]) -> float:
    """Spawn ``names`` at once; seconds from the first request until all are ready."""
    since = broker.events.last_seq
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(broker.spawn, name, argv)
        with trio.fail_after(30):
            await wait_ready(broker, set(names), since)
    return time.perf_counter() - start


def worker_imports_trio() -> bool:
    probe = "import sys, trio_relay.worker.pty.worker; print('trio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


async def bench_memory(broker: Broker) -> None:
    trio_too = worker_imports_trio()
    print(
        "memory per agent (MB; wrapper = the PTY worker, program = what it wraps); "
        f"the worker imports trio: {'YES' if trio_too else 'no'}"
    )
    for name, command, line in (("mem-bash", BASH, "echo hello\r"), ("mem-cat", ["cat"], "hi\r")):
        await spawn_ready(broker, [name], [*PTY_WORKER, "--", *command])
        await broker.request_worker(name, "write_input", {"data": line})
        await broker.request_worker(name, "snapshot", {})
        agent = broker.supervisor.get(name)
        assert agent.hello is not None and agent.hello.program_pid and agent.pid
        wrapper, program = memory(agent.pid), memory(agent.hello.program_pid)
        print(
            f"  {command[0]:5s} program RSS {program['rss']:5.1f} | wrapper RSS "
            f"{wrapper['rss']:5.1f} (PSS {wrapper['pss']:5.1f}, USS {wrapper['uss']:5.1f})"
            f"   target wrapper RSS <= ~16  {verdict(wrapper['rss'] <= 16.5)}"
            f" | agent total RSS {wrapper['rss'] + program['rss']:5.1f}"
        )
        await broker.release(name)


async def bench_spawn(broker: Broker, agents: int) -> None:
    argv = [*PTY_WORKER, "--", *BASH]
    one = await spawn_ready(broker, ["one"], argv)
    await broker.release("one")
    names = [f"bash{i}" for i in range(agents)]
    many = await spawn_ready(broker, names, argv)
    print("spawn to ready (bash; includes the 0.25 s settle period)")
    print(f"  1 agent:   {ms(one)}")
    print(f"  {agents} agents: {ms(many)}   target 20 within 2000 ms  {verdict(many <= 2.0)}")
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(broker.release, name)


async def bench_snapshots(broker: Broker, count: int) -> None:
    await spawn_ready(broker, ["snap"], [*PTY_WORKER, "--", *BASH])
    await broker.request_worker("snap", "write_input", {"data": "seq 1 30\r"})
    for _ in range(20):  # warm up
        await broker.request_worker("snap", "snapshot", {})
    plain, ansi = [], []
    for i in range(count):
        for times, flag in ((plain, False), (ansi, True)):
            start = time.perf_counter()
            await broker.request_worker("snap", "snapshot", {"ansi": flag})
            times.append(time.perf_counter() - start)
    print(f"snapshot round trip through the broker ({count} each, 24x80 bash screen)")
    print(f"  plain: p50 {ms(pct(plain, 0.5))}  p99 {ms(pct(plain, 0.99))}")
    print(f"  ansi:  p50 {ms(pct(ansi, 0.5))}  p99 {ms(pct(ansi, 0.99))}")
    await broker.release("snap")


async def bench_deliveries(broker: Broker, count: int) -> None:
    await spawn_ready(broker, ["cat"], [*PTY_WORKER, "--", "cat"])
    writer = broker.supervisor.running("cat").writer
    latencies: list[float] = []
    for i in range(count):
        since = broker.events.last_seq
        frame = encode(Deliver(delivery_id=f"b{i}", sender="bench", body=f"message number {i}"))

        def verified(event: Event, did: str = f"b{i}") -> bool:
            return isinstance(event, DeliveryVerifiedEvent) and event.delivery_id == did

        start = time.perf_counter()
        await writer.send(frame)
        with trio.fail_after(10):
            event = await broker.events.wait_for(verified, since=since)
        latencies.append(time.perf_counter() - start)
        assert isinstance(event, DeliveryVerifiedEvent)
        if event.verification != "echo":
            raise SystemExit(f"delivery b{i} was not verified by echo: {event}")
    p50 = pct(latencies, 0.5)
    print(f"delivery to cat, send -> delivery_verified(echo) ({count}, one at a time)")
    print(
        f"  p50 {ms(p50)}  p99 {ms(pct(latencies, 0.99))}  mean "
        f"{ms(statistics.fmean(latencies))}   target p50 < 50 ms  {verdict(p50 < 0.05)}"
    )
    await broker.release("cat")


async def main(args: argparse.Namespace) -> None:
    # As an install would: bytecode compiled once (this machine may set
    # PYTHONDONTWRITEBYTECODE, and compiling at every start costs each worker ~30 ms of CPU).
    compileall.compile_dir(str(ROOT / "trio_relay"), quiet=1)
    async with open_broker() as broker:
        await bench_memory(broker)
        await bench_spawn(broker, args.agents)
        await bench_snapshots(broker, args.snapshots)
        await bench_deliveries(broker, args.deliveries)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=20, help="agents spawned at once")
    parser.add_argument("--snapshots", type=int, default=500, help="snapshots timed")
    parser.add_argument("--deliveries", type=int, default=100, help="deliveries timed")
    trio.run(main, parser.parse_args())
