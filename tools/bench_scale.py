#!/usr/bin/env python3
"""trio-relay and agent-relay side by side at scale: N agents, idle and busy, in one run.

    .venv/bin/python tools/bench_scale.py --agents 6,50,200 --busy      # the README's table
    .venv/bin/python tools/bench_scale.py --agents 6 --window 5          # a quick look, idle only
    .venv/bin/python tools/bench_scale.py --agents 50 --busy --skip-agent-relay

For each N and each workload, each broker is started fresh (the two alternate which goes
first) and driven from this process over its own API, as :mod:`bench_vs_agent_relay` drives
them (trio-relay: ``trio_relay.client`` on its Unix socket; agent-relay-broker 14.0.0
``init --local-only``: HTTP plus its ``/ws`` event stream, both watched by one client that
takes every event, output included). The agent-relay binary comes from the
``agent-relay-sdk`` wheel the test extras install (or ``.bench/agent-relay-venv``).

Workloads:

- **idle:** N ``bash --norc`` agents at their prompt;
- **busy** (``--busy``): N copies of ``tools/spinner_tui.py``, which redraws like an agent CLI
  at work (synchronized output, cursor moves, colours, a spinner and status row at 20 Hz)
  and every ``--burst-every`` seconds (default 10) scrolls ``--burst`` bytes (default
  200 KB) of coloured transcript; the agents' first bursts are spread over the period.

Once every agent has drawn its screen and 2 s have passed, a ``--window`` (default 10 s)
measures, under the same paced load on both brokers (a snapshot of the next agent every
50 ms, a delivery to a ``cat`` agent every 0.5 s, each waited for):

- broker CPU and the wrappers' CPU (utime+stime from /proc, % of one core);
- snapshot round trip p50/p99, and send → verified p50/p99 (``echo`` seen on the screen);
- broker RSS, and per agent the wrapper plus the program under it (median over agents),
  as RSS and as PSS (shared pages, such as the interpreter's and the libraries' code,
  divided among the processes mapping them: what one more agent costs).

Then, on the same busy broker:

- **control round trip:** 200 snapshots one after another: trio-relay over its Unix socket
  and over TCP (both WebSocket), agent-relay over HTTP;
- **fan-out** (trio-relay only; agent-relay's ``/ws`` cannot filter, so each of 50
  subscribers would take every output chunk): ``--subscribers`` (default 50) clients,
  each on its own connection subscribed to every event but ``agent_output`` (what
  ``trio-relay events`` and a dashboard watch), while deliveries run every 0.1 s and one
  more connection subscribes to all agents' output and never reads. Each subscriber's lag is
  its receipt time minus the event's own time; the table gives the worst subscriber's p99,
  the broker's CPU meanwhile, and whether it kept answering (the snapshot p99 meanwhile).

Every process started here is killed on the way out. The machine is small and shared:
compare figures from the same run only, and read the spread of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from trio_websocket import connect_websocket_url

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(TOOLS.parent))

from bench_vs_agent_relay import (
    AgentRelay,
    TrioRelay,
    agent_relay_binary,
    children_map,
    comm,
    cpu_seconds,
    descendants,
    pss_mb,
    rss_mb,
)
from dev import compile_bytecode
from measure import git_head, pct

from trio_relay.client import open_client
from trio_relay.wire import Gap

BASH = ["bash", "--norc"]
SPINNER = str(TOOLS / "spinner_tui.py")
SHARED = "trio-relay (shared PTY)"


def agent_relay_broker() -> Path | str:
    """The agent-relay-broker binary: the SDK wheel in this venv (a test extra), else the
    benchmark's own venv; or a string saying why there is none."""
    try:
        import agent_relay  # type: ignore[import-not-found]
    except ImportError:
        return agent_relay_binary(install=True)
    found = Path(agent_relay.__file__).parent / "bin" / "agent-relay-broker"
    return found if found.exists() else agent_relay_binary(install=True)


def workload(busy: bool, args: argparse.Namespace) -> list[str]:
    if not busy:
        return BASH
    first = random.uniform(0.5, args.burst_every)
    return [
        sys.executable,
        SPINNER,
        "--burst",
        str(args.burst),
        "--burst-every",
        f"{args.burst_every:g}",
        "--burst-first",
        f"{first:.2f}",
    ]


def agents_of(broker_pid: int, marker: str) -> list[tuple[int, list[int]]]:
    """(wrapper pid, the pids under it) for each child of the broker with a descendant whose
    command line holds ``marker``."""
    kids = children_map()
    found = []
    for wrapper in kids.get(broker_pid, []):
        below = descendants(wrapper, kids)
        if any(marker in comm(p) for p in below):
            found.append((wrapper, below))
    return found


# ------------------------------------------------------------------ paced load


async def paced(
    period: float, until: float, call: Callable[[int], Awaitable[Any]], out: list[float]
) -> None:
    """Call ``call(i)`` every ``period`` s (or as soon as the last one ends) until
    ``until``; append each call's duration to ``out``."""
    i, start = 0, time.perf_counter()
    while time.perf_counter() < until:
        t = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - t)
        i += 1
        await trio.sleep(max(0.0, start + i * period - time.perf_counter()))


async def window(broker: Any, names: list[str], seconds: float, pids: list[int]) -> dict:
    """CPU over ``seconds`` of paced snapshots and deliveries, and their latencies."""
    snaps: list[float] = []
    sends: list[float] = []
    b0, w0, c0 = (
        cpu_seconds(broker.broker_pid),
        sum(cpu_seconds(p) for p in pids),
        time.perf_counter(),
    )
    until = c0 + seconds
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            paced, 0.05, until, lambda i: broker.snapshot(names[i % len(names)]), snaps
        )
        nursery.start_soon(
            paced, 0.5, until, lambda i: broker.deliver("c0", f"hello {i} at scale"), sends
        )
    b1, w1, c1 = (
        cpu_seconds(broker.broker_pid),
        sum(cpu_seconds(p) for p in pids),
        time.perf_counter(),
    )
    return {
        "broker_cpu": 100 * (b1 - b0) / (c1 - c0),
        "wrapper_cpu": 100 * (w1 - w0) / (c1 - c0),
        "snapshot": snaps,
        "delivery": sends,
    }


# ------------------------------------------------------------------ trio-relay extras


async def control_round_trips(broker: Any, name: str, n: int) -> dict:
    """Snapshot round trips one after another on every control path the broker has."""
    if isinstance(broker, AgentRelay):
        return {"rt_http": [await _timed(broker.snapshot, name) for _ in range(n)]}
    conn = json.loads((broker.state / "connection.json").read_text())
    token = (broker.state / "token").read_text().strip()
    out: dict[str, list[float]] = {}
    for key, url in (("rt_unix", None), ("rt_tcp", conn["url"])):
        kw = {"url": url, "token": token} if url else {"state_dir": str(broker.state)}
        async with open_client(**kw) as client:
            await client.snapshot(name)
            out[key] = [await _timed(client.snapshot, name) for _ in range(n)]
    return out


async def _timed(call: Callable[[str], Awaitable[Any]], arg: str) -> float:
    t = time.perf_counter()
    await call(arg)
    return time.perf_counter() - t


async def fan_out(broker: TrioRelay, names: list[str], subscribers: int, seconds: float) -> dict:
    """``subscribers`` watchers of every event but output, and one connection that takes all
    output and never reads, while deliveries run every 0.1 s and snapshots every 50 ms."""
    lags: list[list[float]] = [[] for _ in range(subscribers)]
    gaps = [0]
    conn = json.loads((broker.state / "connection.json").read_text())
    token = (broker.state / "token").read_text().strip()

    async def watcher(i: int, task_status: Any) -> None:
        async with open_client(state_dir=str(broker.state)) as client:
            kinds = [
                "agent_activity",
                "agent_idle",
                "agent_ready",
                "agent_exited",
                "delivery_queued",
                "delivery_injected",
                "delivery_verified",
                "delivery_unverified",
                "delivery_failed",
                "gap",
            ]
            async with client.subscribe(kinds=kinds) as events:
                task_status.started()
                async for event in events:
                    if isinstance(event, Gap):
                        gaps[0] += 1
                    elif event.time:
                        lags[i].append(time.time() - event.time)

    async def stalled(task_status: Any) -> None:
        async with trio.open_nursery() as inner:
            ws = await connect_websocket_url(
                inner,
                conn["url"],
                extra_headers=[("Authorization", f"Bearer {token}")],
                message_queue_size=1,
            )
            await ws.send_message(
                json.dumps({"id": 1, "op": "subscribe", "kinds": ["agent_output"]})
            )
            task_status.started()
            await trio.sleep_forever()  # never reads: the broker's buffers for it fill

    snaps: list[float] = []
    sends: list[float] = []
    async with trio.open_nursery() as nursery:
        for i in range(subscribers):
            await nursery.start(watcher, i)
        await nursery.start(stalled)
        start, cpu_before = time.perf_counter(), cpu_seconds(broker.broker_pid)
        until = start + seconds
        async with trio.open_nursery() as load:
            load.start_soon(
                paced, 0.05, until, lambda i: broker.snapshot(names[i % len(names)]), snaps
            )
            load.start_soon(paced, 0.1, until, lambda i: broker.deliver("c0", f"fan {i}"), sends)
        cpu = 100 * (cpu_seconds(broker.broker_pid) - cpu_before) / (time.perf_counter() - start)
        await trio.sleep(0.5)  # the last events reach the watchers
        nursery.cancel_scope.cancel()
    per_sub = [pct(x, 0.99) for x in lags if x]
    return {
        "fan_lag_p99_worst": max(per_sub) if per_sub else None,
        "fan_lag_p99_median": statistics.median(per_sub) if per_sub else None,
        "fan_events": sum(len(x) for x in lags),
        "fan_gaps": gaps[0],
        "fan_broker_cpu": cpu,
        "fan_snapshot": snaps,
        "fan_delivery": sends,
    }


# ------------------------------------------------------------------ one run


async def scale_run(broker: Any, n: int, busy: bool, args: argparse.Namespace) -> dict:
    names = [f"a{i}" for i in range(n)]
    t0 = time.perf_counter()
    up = (lambda a: a in broker.output) if busy else (lambda a: a in broker.prompt_at)
    with trio.move_on_after(args.start_timeout):
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(broker.spawn, name, workload(busy, args))
            nursery.start_soon(broker.spawn, "c0", ["cat"])
        while not all(up(a) for a in names):
            await trio.sleep(0.01)
    if not all(up(a) for a in names):
        started = sum(up(a) for a in names)
        raise RuntimeError(f"{started} of {n} agents drew their screen in {args.start_timeout:g} s")
    fig: dict[str, Any] = {"up": time.perf_counter() - t0}
    await broker.deliver("c0", "warm-up")  # agent-relay types a long preamble first
    await trio.sleep(2.0)
    marker = SPINNER if busy else "bash"
    agents = [(w, below) for w, below in agents_of(broker.broker_pid, marker)]
    fig["agents_found"] = len(agents)
    fig.update(await window(broker, names, args.window, [w for w, _ in agents]))
    fig["broker_rss"] = rss_mb(broker.broker_pid)
    if getattr(broker, "up_options", ()):  # the shared PTY host: one "wrapper" for all
        (host, below), hosted = agents[0], len(children_map().get(agents[0][0], []))
        fig["agents_found"] = hosted
        for key, size in (("rss", rss_mb), ("pss", pss_mb)):
            fig[f"wrapper_{key}"] = size(host) / hosted
            fig[f"agent_{key}"] = (size(host) + sum(size(p) for p in below)) / hosted
    else:
        for key, size in (("rss", rss_mb), ("pss", pss_mb)):
            per_agent = [size(w) + sum(size(p) for p in below) for w, below in agents]
            fig[f"agent_{key}"] = statistics.median(per_agent) if per_agent else None
            fig[f"wrapper_{key}"] = (
                statistics.median(size(w) for w, _ in agents) if agents else None
            )
    fig.update(await control_round_trips(broker, names[0], args.round_trips))
    if args.subscribers and isinstance(broker, TrioRelay):
        fig.update(await fan_out(broker, names, args.subscribers, args.window))
    return fig


async def measure(system: str, binary: Path | None, n: int, busy: bool, args: Any) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"scale-{system}-"))
    try:
        if system == "agent-relay":
            broker: Any = AgentRelay(workdir, binary)  # type: ignore[arg-type]
        else:
            broker = TrioRelay(workdir, ("--shared-pty",) if system == SHARED else ())
        return await broker.run(lambda b: scale_run(b, n, busy, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------ the table


ROWS: list[tuple[str, str, Callable[[Any], float] | None, str]] = [
    ("broker CPU", "broker_cpu", None, "%"),
    ("wrappers' CPU, all agents", "wrapper_cpu", None, "%"),
    ("snapshot under load p50", "snapshot", lambda s: pct(s, 0.5), "ms"),
    ("snapshot under load p99", "snapshot", lambda s: pct(s, 0.99), "ms"),
    ("send → verified p50", "delivery", lambda s: pct(s, 0.5), "ms"),
    ("send → verified p99", "delivery", lambda s: pct(s, 0.99), "ms"),
    ("broker RSS", "broker_rss", None, "MB"),
    ("per agent: wrapper + program", "agent_rss", None, "MB"),
    ("  of which the wrapper", "wrapper_rss", None, "MB"),
    ("per agent, PSS: wrapper + program", "agent_pss", None, "MB"),
    ("  of which the wrapper", "wrapper_pss", None, "MB"),
    ("snapshot p50, Unix socket (WebSocket)", "rt_unix", lambda s: pct(s, 0.5), "ms"),
    ("snapshot p50, TCP (WebSocket)", "rt_tcp", lambda s: pct(s, 0.5), "ms"),
    ("snapshot p50, HTTP", "rt_http", lambda s: pct(s, 0.5), "ms"),
    ("fan-out: worst subscriber's lag p99", "fan_lag_p99_worst", None, "ms"),
    ("fan-out: median subscriber's lag p99", "fan_lag_p99_median", None, "ms"),
    ("fan-out: broker CPU meanwhile", "fan_broker_cpu", None, "%"),
    ("fan-out: snapshot p99 meanwhile", "fan_snapshot", lambda s: pct(s, 0.99), "ms"),
    ("fan-out: send → verified p99 meanwhile", "fan_delivery", lambda s: pct(s, 0.99), "ms"),
]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        ms = value * 1e3
        return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:.1f} %"


def median_of(runs: list[dict], key: str, reduce: Callable[[Any], float] | None) -> float | None:
    values = [reduce(r[key]) if reduce else r[key] for r in runs if r.get(key) not in (None, [])]
    return statistics.median(values) if values else None


def table(results: dict[tuple[str, int, bool], list[dict]], args: Any, markdown: bool) -> None:
    print()
    shared = any(system == SHARED for system, _, _ in results)
    cols = ["trio-relay", "agent-relay", "ratio", *([SHARED, "ratio"] if shared else [])]
    head = f"{'figure':<42} " + " ".join(f"{c:>{max(11, len(c))}}" for c in cols)
    if markdown:
        print("| figure | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for n in args.agents:
        for busy in args.modes:
            title = f"{n} agents, {'busy' if busy else 'idle'}"
            runs = {s: results.get((s, n, busy), []) for s in ("trio-relay", "agent-relay", SHARED)}
            if markdown:
                print(f"| **{title}** |" + " |" * len(cols))
            else:
                print(f"\n{title}\n{head}\n{'-' * len(head)}")
            for label, key, reduce, unit in ROWS:
                a, b, c = (median_of(runs[s], key, reduce) for s in runs)
                if a is None and b is None and c is None:
                    continue
                cells = [fmt(a, unit), fmt(b, unit), _ratio(a, b)]
                if shared:
                    cells += [fmt(c, unit), _ratio(c, b)]
                if markdown:
                    print(f"| {label.strip()} | " + " | ".join(cells) + " |")
                else:
                    print(
                        f"{label:<42} "
                        + " ".join(f"{x:>{max(11, len(h))}}" for x, h in zip(cells, cols))
                    )
    print(
        "\nratio = trio-relay / agent-relay (below 1: trio-relay is faster or smaller); the "
        "snapshot rows after the window compare trio-relay's paths with agent-relay's HTTP."
        + (
            f" {SHARED}: `up --shared-pty`, its per-agent figures are the host's share."
            if shared
            else ""
        )
    )


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def save_run(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def load_runs(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


async def main_async(args: argparse.Namespace) -> None:
    systems = ["trio-relay", *([SHARED] if args.shared_pty else [])]
    binary: Path | None = None
    if not args.skip_agent_relay:
        found = agent_relay_broker()
        if isinstance(found, str):
            print(f"agent-relay comparison skipped: {found}", flush=True)
        else:
            binary = found
            systems.append("agent-relay")
    print(
        f"trio-relay {git_head()}; {sys.version.split()[0]}; {os.cpu_count()} CPUs; agents "
        f"{args.agents}; {'idle and busy' if True in args.modes else 'idle'}; window "
        f"{args.window:g} s; burst {args.burst} B every {args.burst_every:g} s; "
        f"{args.repeat} repetition(s); agent-relay: {binary or 'not run'}",
        flush=True,
    )
    results: dict[tuple[str, int, bool], list[dict]] = {}
    if args.table_from:
        for fig in load_runs(args.table_from):
            results.setdefault((fig["system"], fig["n"], fig["busy"]), []).append(fig)
        args.repeat = 0
        args.agents = sorted({n for _, n, _ in results})  # every column the file holds
        args.modes = sorted({busy for _, _, busy in results})
    for rep in range(args.repeat):
        for n in args.agents:
            for busy in args.modes:
                order = systems if (rep + n + busy) % 2 == 0 else systems[::-1]
                for system in order:
                    t = time.perf_counter()
                    try:
                        fig = await measure(system, binary, n, busy, args)
                    except Exception as exc:  # one failed run is reported, not fatal
                        print(f"  {system} N={n} busy={busy}: FAILED: {exc!r}", flush=True)
                        continue
                    results.setdefault((system, n, busy), []).append(fig)
                    if args.save:
                        save_run(args.save, {"system": system, "n": n, "busy": busy, **fig})
                    brief = {
                        k: round(v, 3) if isinstance(v, float) else v
                        for k, v in fig.items()
                        if not isinstance(v, list)
                    }
                    print(
                        f"  [{rep + 1}] {system} N={n} {'busy' if busy else 'idle'} "
                        f"({time.perf_counter() - t:.0f} s): {brief}",
                        flush=True,
                    )
    table(results, args, markdown=False)
    if args.markdown:
        print()
        table(results, args, markdown=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", default="6,50", help="N values, comma-separated")
    parser.add_argument("--busy", action="store_true", help="also run the busy workload")
    parser.add_argument("--window", type=float, default=10.0, help="measuring window, s")
    parser.add_argument("--burst", type=int, default=200 * 1024, help="bytes per burst")
    parser.add_argument("--burst-every", type=float, default=10.0, help="s between bursts")
    parser.add_argument("--round-trips", type=int, default=200, help="control round trips")
    parser.add_argument("--subscribers", type=int, default=50, help="fan-out subscribers (0: skip)")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions (medians shown)")
    parser.add_argument("--skip-agent-relay", action="store_true", help="trio-relay only")
    parser.add_argument("--markdown", action="store_true", help="also print markdown")
    parser.add_argument(
        "--start-timeout", type=float, default=180.0, help="s for N agents to start (per run)"
    )
    parser.add_argument(
        "--shared-pty",
        action="store_true",
        help="also run trio-relay with `up --shared-pty` (one PTY host for all agents)",
    )
    parser.add_argument("--save", help="append each run's figures to this JSON-lines file")
    parser.add_argument("--table-from", help="print the table of a --save file; run nothing")
    args = parser.parse_args()
    args.agents = sorted({int(x) for x in args.agents.split(",")})
    args.modes = [False, True] if args.busy else [False]
    compile_bytecode()  # what an installed trio-relay has: see tools/dev.py
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
