"""Benchmark durable delivery: commit latency against the backlog, sends per second, and
delivery latency from send to verified, each beside a baseline measured in the same run.

    .venv/bin/python tools/bench_delivery.py [--samples N]

- baseline: a bare ``sqlite3`` insert + commit on the Trio-less main thread, same schema and
  pragmas (WAL, synchronous=FULL), and the cost of one hop to the store's thread;
- commit latency: ``broker.send`` (an insert committed through the store's thread, then
  acknowledged) with 10 and with 10,000 deliveries pending for the agent (held), p50/p99,
  and the 10,000-to-10 ratio;
- durable sends per second: one sender, and 64 concurrent senders (group commit);
- delivery latency: ``send`` to ``delivery_verified`` with the reference worker, one at a time;
- event-loop lag: how late a 1 ms ticker wakes while the 64 senders run (SQLite stays off the
  Trio thread).

Targets: commit p99 <= 2 ms; 10,000-to-10 p99 ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio
from measure import pct

from trio_relay import open_broker
from trio_relay.broker.delivery import DeliveryPolicy
from trio_relay.store import sql

WORKER = [sys.executable, "-m", "trio_relay.worker.reference"]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:7.3f} ms"


def bare_sqlite(path: Path, n: int) -> list[float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(sql._SCHEMA)
    out = []
    for i in range(n):
        t = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        sql.insert_delivery(conn, "w", "me", f"message {i}", None, 1.0, 2.0)
        conn.execute("COMMIT")
        out.append(time.perf_counter() - t)
    conn.close()
    return out


async def thread_hop(n: int) -> list[float]:
    limiter = trio.CapacityLimiter(1)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await trio.to_thread.run_sync(int, limiter=limiter)
        out.append(time.perf_counter() - t)
    return out


async def fill(broker, n: int, senders: int = 64) -> None:  # type: ignore[no-untyped-def]
    per = n // senders

    async def one() -> None:
        for i in range(per):
            await broker.send("w", f"backlog {i}", sender="bench")

    async with trio.open_nursery() as nursery:
        for _ in range(senders):
            nursery.start_soon(one)
    for i in range(n - per * senders):
        await broker.send("w", "backlog", sender="bench")


async def send_latency(broker, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for i in range(n):
        t = time.perf_counter()
        await broker.send("w", f"probe {i}", sender="bench")
        out.append(time.perf_counter() - t)
    return out


async def commit_latency(root: Path, pending: int, n: int) -> list[float]:
    policy = DeliveryPolicy(cap=pending + n + 1000)
    async with open_broker(root / f"backlog-{pending}", delivery=policy) as broker:
        await broker.spawn("w", WORKER)
        await broker.set_mode("w", "hold")
        await fill(broker, pending)
        await send_latency(broker, 200)  # warm up
        samples = await send_latency(broker, n)
        assert len(await broker.pending("w")) == pending + n + 200
        return samples


async def sends_per_second(root: Path, n: int, senders: int) -> tuple[float, float]:
    """Returns (sends/s, worst event-loop lag meanwhile)."""
    policy = DeliveryPolicy(cap=n + 10)
    lag = 0.0
    async with open_broker(root / f"rate-{senders}", delivery=policy) as broker:
        await broker.spawn("w", WORKER)
        await broker.set_mode("w", "hold")
        done = trio.Event()

        async def ticker() -> None:
            nonlocal lag
            while not done.is_set():
                t = time.perf_counter()
                await trio.sleep(0.001)
                lag = max(lag, time.perf_counter() - t - 0.001)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            t = time.perf_counter()
            if senders == 1:
                await send_latency(broker, n)
            else:
                await fill(broker, n, senders)
            elapsed = time.perf_counter() - t
            done.set()
    return n / elapsed, lag


async def delivery_latency(root: Path, n: int) -> list[float]:
    async with open_broker(root / "e2e") as broker:
        await broker.spawn("w", WORKER)
        out = []
        for i in range(n):
            t = time.perf_counter()
            receipt = await broker.send("w", f"message {i}", sender="bench")
            info = await broker.wait_delivery(receipt.delivery_id, timeout=10)
            assert info.state == "verified"
            out.append(time.perf_counter() - t)
        return out


async def main(samples: int) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        bare = bare_sqlite(root / "bare.db", samples)
        hop = await thread_hop(samples)
        small = await commit_latency(root, 10, samples)
        large = await commit_latency(root, 10_000, samples)
        rate1, lag1 = await sends_per_second(root, 2000, 1)
        rate64, lag64 = await sends_per_second(root, 20_000, 64)
        e2e = await delivery_latency(root, samples // 2)

    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {samples} samples")
    print("\nbaselines")
    print(
        f"  bare sqlite3 insert+commit (WAL, FULL)  p50 {ms(pct(bare, 0.5))}  p99 {ms(pct(bare, 0.99))}"
        f"  ({1 / statistics.mean(bare):,.0f}/s)"
    )
    print(
        f"  one hop to the store thread             p50 {ms(pct(hop, 0.5))}  p99 {ms(pct(hop, 0.99))}"
    )
    print("\ncommit latency of broker.send (acknowledged after commit)        target")
    for label, data in (("10 pending", small), ("10,000 pending", large)):
        print(f"  {label:16}  p50 {ms(pct(data, 0.5))}  p99 {ms(pct(data, 0.99))}     p99 <= 2 ms")
    ratio50 = pct(large, 0.5) / pct(small, 0.5)
    ratio99 = pct(large, 0.99) / pct(small, 0.99)
    print(f"  10,000 / 10 ratio  p50 {ratio50:.2f}  p99 {ratio99:.2f}                    <= 1.5")
    print("\ndurable sends per second (committed, agent holding)")
    print(f"  1 sender    {rate1:9,.0f}/s   worst event-loop lag {ms(lag1)}")
    print(f"  64 senders  {rate64:9,.0f}/s   worst event-loop lag {ms(lag64)}")
    print(f"  (bare sqlite3, one commit per insert: {1 / statistics.mean(bare):,.0f}/s)")
    print("\ndelivery latency, send -> delivery_verified (reference worker, one at a time)")
    print(f"  p50 {ms(pct(e2e, 0.5))}  p99 {ms(pct(e2e, 0.99))}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    trio.run(main, parser.parse_args().samples)
