#!/usr/bin/env python3
"""Soak: does a broker that runs for a long time stay the same size?

    .venv/bin/python tools/bench_soak.py [--warmup 1500] [--cycles 2000] [--every 100] [--pty]

Starts `trio-relay up` on a fresh state directory and runs WARMUP + CYCLES cycles of: spawn
an agent with a name never used before, send it a message and wait until it is verified,
release it. The broker's RSS is sampled every EVERY cycles. During the warm-up every bounded
structure fills (the ended-agent history, the event ring, SQLite's page cache, the
allocator's pools); the baseline is the RSS when it ends, and the CYCLES after it should
stay flat. Prints a table, the ratio of the last sample to the baseline, and the growth per
1,000 cycles fitted over the measured cycles.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trio_relay.client import open_client

REFERENCE_WORKER = [sys.executable, "-m", "trio_relay.worker.reference"]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares KB per cycle."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


async def soak(
    state: Path, pid: int, warmup: int, cycles: int, every: int, pty: bool, history: int
) -> None:
    samples: list[tuple[int, int, float]] = [(0, rss_kb(pid), 0.0)]
    started = time.monotonic()
    async with open_client(state_dir=str(state)) as client:
        for i in range(1, warmup + cycles + 1):
            name = f"soak-{i}"
            if pty:
                await client.spawn(name, ["cat"])
            else:
                await client.spawn(name, REFERENCE_WORKER, native=True)
            receipt = await client.send(name, f"message {i}", wait=True, timeout=30)
            if receipt.state != "verified":
                raise SystemExit(f"cycle {i}: delivery ended {receipt.describe()}")
            await client.release(name)
            if i % every == 0:
                samples.append((i, rss_kb(pid), time.monotonic() - started))
                print(f"  cycle {i:>6}: broker RSS {samples[-1][1] / 1024:.1f} MB", file=sys.stderr)
    baseline_at = next((s for s in samples if s[0] >= warmup), samples[-1])
    after = [(c, r) for c, r, _ in samples if c >= baseline_at[0]]
    per_1000 = slope(after) * 1000
    elapsed = samples[-1][2]
    print(
        f"\nsoak: {warmup} + {cycles} spawn/send/release cycles of uniquely named "
        f"{'PTY (cat)' if pty else 'native'} agents, history {history}; "
        f"{(warmup + cycles) / elapsed:.1f} cycles/s\n"
    )
    print("| cycles | broker RSS (MB) | ratio to baseline |")
    print("|---:|---:|---:|")
    for c, r, _ in samples:
        mark = " (baseline: end of the warm-up)" if c == baseline_at[0] else ""
        print(f"| {c} | {r / 1024:.1f}{mark} | {r / baseline_at[1]:.3f} |")
    print(
        f"\nlast / baseline: {samples[-1][1] / baseline_at[1]:.3f}; "
        f"fitted growth after the baseline: {per_1000:+.0f} KB per 1,000 cycles"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=1500)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--history", type=int, default=256)
    parser.add_argument("--event-buffer", type=int, default=4096)
    parser.add_argument("--pty", action="store_true", help="PTY agents running cat")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_RELAY_")}
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trio_relay",
                "up",
                "--state-dir",
                str(state),
                "--history",
                str(args.history),
                "--event-buffer",
                str(args.event_buffer),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not (state / "connection.json").exists():
                if time.monotonic() > deadline or up.poll() is not None:
                    raise SystemExit("the broker did not start")
                time.sleep(0.05)
            trio.run(
                soak, state, up.pid, args.warmup, args.cycles, args.every, args.pty, args.history
            )
        finally:
            up.terminate()
            up.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
