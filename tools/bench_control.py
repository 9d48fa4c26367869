#!/usr/bin/env python3
"""Benchmark the control channel: snapshot and input round trips, and event fan-out.

    .venv/bin/python tools/bench_control.py [--requests 500] [--subscribers 100] [--events 2000]

Runs a broker and its WebSocket server in this process, with one PTY agent (`cat`).

- snapshot / input round trip: a client's call from send to answer, p50/p99, beside the
  same operation made in-process through ``broker.request_worker`` / ``broker.write_input``
  (the baseline: everything but the WebSocket hop and the client library).
- fan-out: ``--subscribers`` clients (in a separate process, so the figures are the
  broker's), each subscribed on its own connection; the broker emits
  ``--events`` events; the figures are events delivered per second across all subscribers
  and the delay from emit to receipt (p50/p99), beside the same run with 1 subscriber.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio.lowlevel
from measure import pct, timed

from trio_relay import open_broker
from trio_relay.client import open_client
from trio_relay.control.operations import pty_command
from trio_relay.control.server import ControlServer
from trio_relay.wire import AgentOutput

TOKEN = "bench-token-" + "x" * 32


def row(label: str, samples: list[float], base: list[float] | None = None) -> None:
    p50, p99 = pct(samples, 0.5) * 1e3, pct(samples, 0.99) * 1e3
    line = f"{label:<34} p50 {p50:8.3f} ms   p99 {p99:8.3f} ms"
    if base:
        line += f"   ratio to baseline p50 {pct(samples, 0.5) / pct(base, 0.5):5.2f}x"
    print(line)


async def subscriber_farm(url: str, subscribers: int, events: int) -> None:
    """Run in a separate process: ``subscribers`` connections; print "ready" once all are
    subscribed, then, after ``events`` events each, the emit-to-receipt delays as JSON."""
    delays: list[float] = []
    ready = [0]

    async def subscriber() -> None:
        async with open_client(url, TOKEN) as client:
            async with client.subscribe(kinds=["agent_output"]) as stream:
                ready[0] += 1
                if ready[0] == subscribers:
                    print("ready", flush=True)
                got = 0
                async for event in stream:
                    delays.append(time.time() - event.time)
                    got += 1
                    if got == events:
                        return

    async with trio.open_nursery() as nursery:
        for _ in range(subscribers):
            nursery.start_soon(subscriber)
    print(json.dumps(delays), flush=True)


async def fan_out(broker, url: str, subscribers: int, events: int) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    """Emit ``events`` events to ``subscribers`` clients in another process; returns events
    delivered per second and the delays."""
    farm = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--farm", url, str(subscribers), str(events)],
        stdout=subprocess.PIPE,
    )
    lines = LineReader(farm.stdout)
    try:
        with trio.fail_after(120):
            assert await lines.next() == b"ready"
            start = time.perf_counter()
            for i in range(events):
                broker.events.emit(AgentOutput(agent="bench", offset=i * 80, data="x" * 80))
                if i % 50 == 0:
                    await (
                        trio.lowlevel.checkpoint()
                    )  # let the server's tasks run, as real output would
            delays = json.loads(await lines.next())
            elapsed = time.perf_counter() - start
            await farm.wait()
    finally:
        with trio.CancelScope(shield=True):
            if farm.returncode is None:
                farm.kill()
                await farm.wait()
            await farm.stdout.aclose()  # type: ignore[union-attr]
    return subscribers * events / elapsed, delays


class LineReader:
    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.stream, self.buffer = stream, b""

    async def next(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise EOFError("the subscriber process ended early")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


async def main(args: argparse.Namespace) -> None:
    async with open_broker(event_capacity=max(4096, args.events * 2)) as broker:
        server = ControlServer(broker, TOKEN)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve, "127.0.0.1", 0)
            await broker.spawn("cat", pty_command(["cat"], 24, 80))
            async with open_client(url, TOKEN) as client:
                for _ in range(20):  # warm-up
                    await client.snapshot("cat")
                base = await timed(
                    args.requests, lambda: broker.request_worker("cat", "snapshot", {})
                )
                over = await timed(args.requests, lambda: client.snapshot("cat"))
                row("snapshot, in-process (baseline)", base)
                row("snapshot, over the control channel", over, base)
                base = await timed(args.requests, lambda: broker.write_input("cat", "a"))
                over = await timed(args.requests, lambda: client.input("cat", "a"))
                row("input, in-process (baseline)", base)
                row("input, over the control channel", over, base)
            one_rate, one_delays = await fan_out(broker, url, 1, args.events)
            rate, delays = await fan_out(broker, url, args.subscribers, args.events)
            print(f"fan-out to 1 subscriber (baseline)   {one_rate:10,.0f} events/s delivered")
            row("  emit -> receipt", one_delays)
            print(
                f"fan-out to {args.subscribers} subscribers        {rate:10,.0f} events/s delivered"
                f"   ({rate / one_rate:.2f}x the baseline's rate)"
            )
            row("  emit -> receipt", delays, one_delays)
            print(
                f"  median delay {statistics.median(delays) * 1e3:.1f} ms over {len(delays):,} receipts"
            )
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--farm"]:
        trio.run(subscriber_farm, sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--events", type=int, default=2000)
    trio.run(main, parser.parse_args())
