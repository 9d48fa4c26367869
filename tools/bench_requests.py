#!/usr/bin/env python3
"""Benchmark request/response round trips through ``broker.request_worker``.

    .venv/bin/python tools/bench_requests.py
    .venv/bin/python tools/bench_requests.py --duration 5 --levels 1 100 1000
    .venv/bin/python tools/bench_requests.py --only broker --levels 1000   # e.g. under a profiler

For each level of concurrency (requests in flight) it measures, in the same run:

- baseline: a bare ping-pong of the same frames over the same kind of pipe between two
  Python processes with no broker code: this script (plain blocking Python, no Trio) spawns
  the reference native worker with stdin/stdout pipes, writes ``ping`` frames and reads the
  ``response`` frames, keeping N requests outstanding (write N, then write a new one for
  each answer that arrives);
- broker: N Trio tasks, each looping ``await broker.request_worker("w", "ping", ...)``
  against the same reference worker, spawned by the broker;
- no-I/O: the same clients against the correlator alone, answered in-process: the ceiling
  Trio's per-request machinery leaves, whatever the pipes and the worker cost.

Each request's round trip is timed with ``time.perf_counter`` from just before its frame is
written (baseline) or the call is made (broker) to when its answer is in hand. Each
configuration is warmed up, then run for ``--duration`` seconds; the figures are requests
per second and the p50/p99 round trip.

Targets (issue 16): at least 50,000 requests/s with 1,000 in flight, and a p50 round trip
at 1 in flight no more than 1.3x the bare ping-pong's.
"""

from __future__ import annotations

import argparse
import os
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

WORKER_ARGV = [sys.executable, "-m", "trio_relay.worker.reference"]
ROOT = Path(__file__).resolve().parent.parent

TARGET_RPS_AT = 1000
TARGET_RPS = 50_000.0
TARGET_P50_RATIO = 1.3


@dataclass
class Result:
    inflight: int
    requests: int
    elapsed: float
    latencies: list[float]  # seconds, one per completed request
    cpu: float  # CPU seconds this (the client's) process spent, user + system

    @property
    def cpu_per_request(self) -> float:
        return self.cpu / self.requests if self.requests else float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(q * len(data)))]


# ---------------------------------------------------------------- baseline: no broker code

_encode = msgspec.json.encode
_decode_response = msgspec.json.Decoder(dict).decode


class BareClient:
    """The reference worker on plain pipes, driven by blocking Python (a selector so that
    neither side can block the other when many frames are in flight)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            WORKER_ARGV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
        )
        self.wfd = self.proc.stdin.fileno()  # type: ignore[union-attr]
        self.rfd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        self.partial = b""
        self.next_id = 1
        # The same first frames the broker sends and receives: the hellos.
        self._write_all(_encode({"kind": "hello", "protocol": 1, "broker": "bare"}) + b"\n")
        while True:
            line = self._read_lines()[0]
            if _decode_response(line)["kind"] == "hello":
                break

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view) :]

    def _read_lines(self) -> list[bytes]:
        while True:
            chunk = os.read(self.rfd, 65536)
            if not chunk:
                raise RuntimeError("reference worker closed its stdout")
            lines = (self.partial + chunk).split(b"\n")
            self.partial = lines.pop()
            if lines:
                return lines

    def run(self, inflight: int, duration: float) -> Result:
        sent: dict[str, float] = {}
        latencies: list[float] = []
        perf = time.perf_counter
        out = bytearray()

        def queue_request() -> None:
            i = self.next_id
            self.next_id += 1
            rid = format(i, "x")
            out.extend(_encode({"kind": "ping", "request_id": rid, "data": i}) + b"\n")
            sent[rid] = 0.0
            pending_ids.append(rid)

        pending_ids: list[str] = []
        os.set_blocking(self.wfd, False)
        sel = selectors.DefaultSelector()
        sel.register(self.rfd, selectors.EVENT_READ)
        writing = False
        cpu0 = time.process_time()
        start = perf()
        end = start + duration
        done = 0
        for _ in range(inflight):
            queue_request()
        stopping = False
        while sent:
            if out:
                now = perf()
                for rid in pending_ids:
                    sent[rid] = now
                pending_ids.clear()
                try:
                    n = os.write(self.wfd, out)
                except BlockingIOError:
                    n = 0
                del out[:n]
            if out and not writing:
                sel.register(self.wfd, selectors.EVENT_WRITE)
                writing = True
            elif not out and writing:
                sel.unregister(self.wfd)
                writing = False
            for key, _ in sel.select():
                if key.fd != self.rfd:
                    continue
                chunk = os.read(self.rfd, 65536)
                if not chunk:
                    raise RuntimeError("reference worker closed its stdout")
                lines = (self.partial + chunk).split(b"\n")
                self.partial = lines.pop()
                now = perf()
                for line in lines:
                    frame = _decode_response(line)
                    t0 = sent.pop(frame["request_id"])
                    latencies.append(now - t0)
                    done += 1
                if not stopping and now >= end:
                    stopping = True
                if not stopping:
                    for _ in lines:
                        queue_request()
        elapsed = perf() - start
        cpu = time.process_time() - cpu0
        if writing:
            sel.unregister(self.wfd)
        sel.close()
        os.set_blocking(self.wfd, True)
        return Result(inflight, done, elapsed, latencies, cpu)

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]  # EOF on stdin: it exits 0
        self.proc.wait(5)
        self.proc.stdout.close()  # type: ignore[union-attr]


def run_baseline(levels: list[int], duration: float, warmup: float) -> dict[int, Result]:
    client = BareClient()
    try:
        results = {}
        for n in levels:
            client.run(n, warmup)
            results[n] = client.run(n, duration)
        return results
    finally:
        client.close()


# ---------------------------------------------------------------- through the broker


async def _broker_level(broker, inflight: int, duration: float) -> Result:  # type: ignore[no-untyped-def]
    import trio

    perf = time.perf_counter
    latencies: list[float] = []
    request = broker.request_worker
    end = 0.0
    counter = iter(range(1, 1 << 62))

    async def client() -> None:
        record = latencies.append
        while perf() < end:
            i = next(counter)
            t0 = perf()
            payload = await request("w", "ping", {"data": i}, timeout=30)
            record(perf() - t0)
            assert payload["data"] == i

    cpu0 = time.process_time()
    start = perf()
    end = start + duration
    async with trio.open_nursery() as nursery:
        for _ in range(inflight):
            nursery.start_soon(client)
    elapsed = perf() - start
    cpu = time.process_time() - cpu0
    return Result(inflight, len(latencies), elapsed, latencies, cpu)


def run_broker(levels: list[int], duration: float, warmup: float) -> dict[int, Result]:
    import trio

    from trio_relay import open_broker

    results: dict[int, Result] = {}

    async def main() -> None:
        async with open_broker() as broker:
            await broker.spawn("w", WORKER_ARGV, cwd=str(ROOT))
            for n in levels:
                await _broker_level(broker, n, warmup)
                results[n] = await _broker_level(broker, n, duration)
            stats = broker.statistics()
            assert stats.timed_out == stats.failed == stats.late_dropped == 0, stats

    trio.run(main)
    return results


# ---------------------------------------------------------------- the correlator alone


def run_floor(levels: list[int], duration: float, warmup: float) -> dict[int, Result]:
    """The same clients against the correlator alone: its route queues frames and a task in
    the same process answers each scheduler tick. No pipe, no worker, no broker I/O: the
    ceiling that Trio's per-request machinery (cancel scope, channel, task switch) leaves."""
    import trio

    from trio_relay.broker.correlator import Correlator

    results: dict[int, Result] = {}
    marker = b'"request_id":"'

    async def main() -> None:
        correlator = Correlator()
        queued: list[bytes] = []

        async def route(frame: bytes) -> None:
            queued.append(frame)

        async def answer_forever() -> None:
            while True:
                await trio.lowlevel.checkpoint()
                batch = queued[:]
                queued.clear()
                for frame in batch:
                    start = frame.index(marker) + len(marker)
                    rid = frame[start : frame.index(b'"', start)].decode()
                    data = msgspec.json.decode(frame)["data"]
                    correlator.resolve("w", rid, {"data": data}, None)

        class Facade:
            request_worker = staticmethod(
                lambda name, kind, payload, timeout: correlator.request(
                    name, kind, payload, timeout=timeout
                )
            )

        correlator.attach("w", route)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_forever)
            for n in levels:
                await _broker_level(Facade, n, warmup)
                results[n] = await _broker_level(Facade, n, duration)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return results


# ---------------------------------------------------------------- report


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} us"


def report(base: dict[int, Result], brok: dict[int, Result], floor: dict[int, Result]) -> bool:
    levels = sorted(set(base) | set(brok))
    header = (
        f"{'in flight':>9}  {'side':<8} {'requests':>9} {'req/s':>10} "
        f"{'p50':>11} {'p99':>11} {'CPU/req':>9}"
    )
    print(header)
    print("-" * len(header))
    for n in levels:
        rows = (("baseline", base.get(n)), ("broker", brok.get(n)), ("no-I/O", floor.get(n)))
        for side, res in rows:
            if res is None:
                continue
            print(
                f"{n:>9,}  {side:<8} {res.requests:>9,} {res.rps:>10,.0f} "
                f"{_us(res.percentile(0.5)):>11} {_us(res.percentile(0.99)):>11} "
                f"{_us(res.cpu_per_request):>9}"
            )
        if n in base and n in brok:
            b, r = base[n], brok[n]
            print(
                f"{'':>9}  {'ratio':<8} {'':>9} {r.rps / b.rps:>9.2f}x "
                f"{r.percentile(0.5) / b.percentile(0.5):>10.2f}x "
                f"{r.percentile(0.99) / b.percentile(0.99):>10.2f}x "
                f"{r.cpu_per_request / b.cpu_per_request:>8.2f}x"
            )
    print()
    ok = True
    if TARGET_RPS_AT in brok:
        rps = brok[TARGET_RPS_AT].rps
        met = rps >= TARGET_RPS
        ok &= met
        base_rps = f" (baseline {base[TARGET_RPS_AT].rps:,.0f})" if TARGET_RPS_AT in base else ""
        print(
            f"target: >= {TARGET_RPS:,.0f} req/s at {TARGET_RPS_AT:,} in flight: "
            f"{rps:,.0f} req/s{base_rps} -> {'MET' if met else 'NOT MET'}"
        )
    if 1 in brok and 1 in base:
        ratio = brok[1].percentile(0.5) / base[1].percentile(0.5)
        met = ratio <= TARGET_P50_RATIO
        ok &= met
        print(
            f"target: p50 at 1 in flight <= {TARGET_P50_RATIO:g}x bare ping-pong: "
            f"{_us(brok[1].percentile(0.5))} vs {_us(base[1].percentile(0.5))} = {ratio:.2f}x"
            f" -> {'MET' if met else 'NOT MET'}"
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=2.5, help="seconds measured per configuration (2.5)"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="seconds of warm-up per configuration (0.5)"
    )
    parser.add_argument(
        "--levels",
        type=int,
        nargs="+",
        default=[1, 100, 1000],
        metavar="N",
        help="requests in flight (1 100 1000)",
    )
    parser.add_argument(
        "--only", choices=["baseline", "broker"], help="run one side only (for profiling)"
    )
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.levels):
        parser.error("levels must be positive")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"{args.duration:g} s per configuration after {args.warmup:g} s warm-up"
    )
    base = {} if args.only == "broker" else run_baseline(args.levels, args.duration, args.warmup)
    brok = {} if args.only == "baseline" else run_broker(args.levels, args.duration, args.warmup)
    floor = {} if args.only else run_floor(args.levels, args.duration, args.warmup)
    ok = report(base, brok, floor)
    print(
        "no-I/O: the correlator alone, answered in-process (no pipe, no worker): the ceiling "
        "Trio's per-request cancel scope, channel and task switch leave on this machine"
    )
    return 0 if ok or args.only else 1


if __name__ == "__main__":
    sys.exit(main())
