#!/usr/bin/env python3
"""The same workload against trio-relay and against agent-relay, in one run, on this machine.

    .venv/bin/python tools/bench_vs_agent_relay.py                       # N = 4 and 50, 3 repetitions
    .venv/bin/python tools/bench_vs_agent_relay.py --agents 4 --repeat 1 --idle 5
    .venv/bin/python tools/bench_vs_agent_relay.py --skip-agent-relay

Each broker is driven as a user drives it, from this process, over its own control API:

- trio-relay: ``python -m trio_relay up --state-dir TMP`` as a child process, then
  ``trio_relay.client.open_client`` (WebSocket): ``spawn(name, ["bash", "--norc"])`` (a PTY
  agent), ``snapshot``, ``input``, ``send(..., wait=True)`` and ``subscribe`` for events;
- agent-relay: ``agent-relay-broker init --local-only --api-port PORT --persist --state-dir
  TMP`` from the ``agent-relay-sdk`` wheel, installed into ``.bench/agent-relay-venv/``
  (created here when missing; never a dependency of trio-relay), with
  ``RELAY_BROKER_API_KEY`` and telemetry off; its HTTP API over one keep-alive connection
  (h11 on a Trio stream, so both clients cost the same here) and its ``/ws`` event stream.

Figures (each repetition starts fresh brokers; the table shows medians over repetitions):

- ready, N bash agents: from the first spawn request until every agent is ready, all N
  spawned at once. Two readings: the broker's own "ready" signal (trio-relay
  ``agent_ready``: output quiet for 0.25 s; agent-relay ``worker_ready``, which it only
  emits for CLIs whose prompt it recognises — not bash), and "prompt shown": every
  agent's output stream has carried its bash prompt (the same test for both);
- snapshot and input round trips on one bash agent, one call at a time, p50/p99. Note that
  agent-relay's ``/api/input`` answers once its worker has written the bytes
  (``bytes_written``); trio-relay's ``input`` once the frame is written to the worker;
  "input to echo" (from the call until the typed text comes back in the output stream)
  is shown too, the same test for both;
- delivery: ``send`` to a ``cat`` agent until the broker reports it verified, one at a
  time; the first delivery to a fresh agent is shown on its own row (agent-relay types a
  long "system-reminder" preamble into it);
- memory (VmRSS from /proc, once the N agents are ready): the broker; per agent, the
  wrapper process plus the program under it (median over agents);
- CPU while the N agents sit idle for ``--idle`` seconds: utime+stime from
  /proc/PID/stat of the broker, and of all wrappers together, as % of one core.

Every process started here is killed on the way out (the broker's process group, then any
descendant still alive), even on error or Ctrl-C. The machine is shared and small (2 cores):
run with ``--repeat 3`` or more and read the spread (min..max) beside each median.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import trio
from trio_websocket import connect_websocket_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dev import compile_bytecode
from measure import pct, timed

from trio_relay.client import open_client
from trio_relay.wire import (
    AgentOutput,
    AgentReady,
)

BENCH_DIR = ROOT / ".bench"
#: The third column: agent-relay's driver against trio-relay's agent-relay API.
COMPAT = "trio-relay (agent-relay API)"
AR_VENV = BENCH_DIR / "agent-relay-venv"
BASH = ["bash", "--norc"]
PROMPT = re.compile(r"[$#] $")  # what bash --norc's prompt ends with
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = 1024.0


# ------------------------------------------------------------------ /proc


def children_map() -> dict[int, list[int]]:
    """ppid -> pids, for every process on the machine."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    kids = children_map() if kids is None else kids
    out, todo = [], list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _kb_field_mb(path: str, field: str) -> float:
    """A ``Field:   N kB`` line of a /proc file, in MiB; 0.0 if the process is gone."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def rss_mb(pid: int) -> float:
    return _kb_field_mb(f"/proc/{pid}/status", "VmRSS:")


def pss_mb(pid: int) -> float:
    """The process's proportional set size: its private pages plus its share of each page
    it shares (a library's code, say, counts 1/N in each of the N processes mapping it), so
    the PSS of N like processes adds up to what they take together. 0.0 if it is gone."""
    return _kb_field_mb(f"/proc/{pid}/smaps_rollup", "Pss:")


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def agent_processes(broker_pid: int, program: str) -> list[tuple[int, list[int]]]:
    """(wrapper pid, [program pids under it]) for each agent of the broker: a wrapper is a
    child of the broker that has a descendant running ``program``."""
    kids = children_map()
    found = []
    for wrapper in kids.get(broker_pid, []):
        below = descendants(wrapper, kids)
        if any(program in comm(p).split(" ")[0] for p in below):
            found.append((wrapper, below))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ processes


class Started:
    """A broker process started here, killed with everything under it on ``stop``."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def stop(self, grace: float = 5.0) -> None:
        below = descendants(self.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        for sig_target in [self.pid] if self.proc.poll() is None else []:
            os.kill(sig_target, signal.SIGKILL)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)
        for pid in below + descendants(self.pid):  # anything that left the group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


# ------------------------------------------------------------------ statistics


# ------------------------------------------------------------------ trio-relay


class BrokerUnderTest:
    """What both brokers' drivers share: the broker process they started."""

    started: Started | None = None

    @property
    def broker_pid(self) -> int:
        assert self.started is not None
        return self.started.pid

    async def watched(self, nursery: trio.Nursery, source: Any, body: Any) -> Any:
        """Run ``body(self)`` while ``self._watch(source)`` takes in the broker's events in
        ``nursery``; the nursery is cancelled however the body ends."""
        nursery.start_soon(self._watch, source)  # type: ignore[attr-defined]
        try:
            return await body(self)
        finally:
            nursery.cancel_scope.cancel()


class TrioRelay(BrokerUnderTest):
    name = "trio-relay"
    program_wrapper = "trio_relay.worker.pty"

    def __init__(self, workdir: Path, up_options: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.state = workdir / "state"
        self.up_options = up_options  # more options for `trio-relay up`
        self.started: Started | None = None
        self.output: dict[str, str] = {}
        self.prompt_at: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.echo_waiters: dict[str, tuple[str, trio.Event]] = {}

    async def run(self, body: Callable[[TrioRelay], Awaitable[Any]]) -> Any:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.started = Started(
            [
                sys.executable,
                "-m",
                "trio_relay",
                "up",
                "--state-dir",
                str(self.state),
                *self.up_options,
            ],
            cwd=self.workdir,
            env=env,
            log=self.workdir / "broker.out",
        )
        try:
            with trio.fail_after(30):
                while not (self.state / "connection.json").exists():
                    if self.started.proc.poll() is not None:
                        raise RuntimeError(
                            "trio-relay up exited: "
                            + (self.workdir / "broker.out").read_text()[-2000:]
                        )
                    await trio.sleep(0.02)
            async with open_client(state_dir=str(self.state)) as client:
                self.client = client
                async with client.subscribe(kinds=["agent_ready", "agent_output"]) as events:
                    async with trio.open_nursery() as nursery:
                        return await self.watched(nursery, events, body)
        finally:
            await trio.to_thread.run_sync(self.started.stop)

    async def _watch(self, events: Any) -> None:
        async for event in events:
            now = time.perf_counter()
            if isinstance(event, AgentReady):
                self.ready_at.setdefault(event.agent, now)
            elif isinstance(event, AgentOutput):
                self._on_output(event.agent, event.data, now)

    def _on_output(self, agent: str, data: str, now: float) -> None:
        text = self.output[agent] = (self.output.get(agent, "") + data)[-4096:]
        if agent not in self.prompt_at and PROMPT.search(text):
            self.prompt_at[agent] = now
        waiter = self.echo_waiters.get(agent)
        if waiter is not None and waiter[0] in text:
            waiter[1].set()

    async def spawn(self, name: str, argv: list[str]) -> None:
        await self.client.spawn(name, argv)

    async def snapshot(self, name: str) -> str:
        return (await self.client.snapshot(name)).text

    async def input(self, name: str, data: str) -> None:
        await self.client.input(name, data)

    async def deliver(self, to: str, body: str) -> str:
        result = await self.client.send(to, body, sender="bench", wait=True, timeout=60)
        return f"{result.state}/{result.verification}"


# ------------------------------------------------------------------ agent-relay


def agent_relay_binary(install: bool) -> Path | str:
    """The agent-relay-broker binary from the agent-relay-sdk wheel in the benchmark's own
    venv (installed there if missing), or a string saying why there is none."""
    found = sorted(AR_VENV.glob("lib/python*/site-packages/agent_relay/bin/agent-relay-broker"))
    if found:
        return found[0]
    if not install:
        return "agent-relay-sdk is not installed in .bench/agent-relay-venv"
    print(f"installing agent-relay-sdk into {AR_VENV.relative_to(ROOT)} ...", flush=True)
    try:
        BENCH_DIR.mkdir(exist_ok=True)
        if not (AR_VENV / "bin" / "python").exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(AR_VENV)], check=True, capture_output=True
            )
        subprocess.run(
            [str(AR_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "agent-relay-sdk"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return f"cannot install agent-relay-sdk: {exc} {detail.decode(errors='replace')[-500:]}"
    found = sorted(AR_VENV.glob("lib/python*/site-packages/agent_relay/bin/agent-relay-broker"))
    if not found:
        return (
            "the agent-relay-sdk wheel has no agent_relay/bin/agent-relay-broker for this platform"
        )
    return found[0]


class HttpConnection:
    """One keep-alive HTTP/1.1 connection (h11 on a Trio stream)."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.stream: trio.SocketStream | None = None
        self.conn = h11.Connection(h11.CLIENT)
        self.lock = trio.Lock()

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        async with self.lock:
            if self.stream is None or self.conn.our_state is h11.MUST_CLOSE:
                if self.stream is not None:
                    await self.stream.aclose()
                self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                self.conn = h11.Connection(h11.CLIENT)
            data = b"" if body is None else json.dumps(body).encode()
            headers = [
                ("Host", f"127.0.0.1:{self.port}"),
                ("X-API-Key", self.key),
                ("Content-Length", str(len(data))),
            ]
            if body is not None:
                headers.append(("Content-Type", "application/json"))
            out = self.conn.send(h11.Request(method=method, target=path, headers=headers))
            out += self.conn.send(h11.Data(data=data)) if data else b""
            out += self.conn.send(h11.EndOfMessage())
            await self.stream.send_all(out)
            status, chunks = 0, []
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                self.conn.start_next_cycle()
            raw = b"".join(chunks)
            if status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {status}: {raw[:300]!r}")
            return json.loads(raw) if raw else None

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


class AgentRelay(BrokerUnderTest):
    name = "agent-relay"
    program_wrapper = "agent-relay-broker pty"

    def __init__(self, workdir: Path, binary: Path) -> None:
        self.workdir = workdir
        self.binary = binary
        self.key = "br_" + secrets.token_hex(16)
        self.port = free_port()
        self.started: Started | None = None
        self.output: dict[str, str] = {}
        self.prompt_at: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.verified: dict[str, tuple[float, str]] = {}
        self.verified_changed = trio.Event()
        self.echo_waiters: dict[str, tuple[str, trio.Event]] = {}

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "init",
            "--local-only",
            "--api-port",
            str(self.port),
            "--persist",
            "--state-dir",
            str(self.workdir / "state"),
        ]

    async def run(self, body: Callable[[AgentRelay], Awaitable[Any]]) -> Any:
        env = {
            **os.environ,
            "RELAY_BROKER_API_KEY": self.key,
            "AGENT_RELAY_TELEMETRY_DISABLED": "1",
            "DO_NOT_TRACK": "1",
            "AGENT_RELAY_DATA_DIR": str(self.workdir / "data"),
        }
        self.started = Started(
            self.command(), cwd=self.workdir, env=env, log=self.workdir / "broker.out"
        )
        self.http = HttpConnection(self.port, self.key)
        try:
            with trio.fail_after(30):
                while True:
                    if self.started.proc.poll() is not None:
                        raise RuntimeError(
                            "agent-relay-broker exited: "
                            + (self.workdir / "broker.out").read_text()[-2000:]
                        )
                    try:
                        await self.http.request("GET", "/api/session")
                        break
                    except (OSError, RuntimeError, h11.RemoteProtocolError):
                        self.http = HttpConnection(self.port, self.key)
                        await trio.sleep(0.05)
            # No close handshake on the way out (trio-websocket can fail answering a ping
            # while closing): the nursery is cancelled and the broker killed.
            async with trio.open_nursery() as nursery:
                ws = await connect_websocket_url(
                    nursery,
                    f"ws://127.0.0.1:{self.port}/ws",
                    extra_headers=[("X-API-Key", self.key)],
                    max_message_size=16 * 1024 * 1024,
                )
                return await self.watched(nursery, ws, body)
        finally:
            await self.http.aclose()
            await trio.to_thread.run_sync(self.started.stop)

    async def _watch(self, ws: Any) -> None:
        while True:
            event = json.loads(await ws.get_message())
            now = time.perf_counter()
            kind, name = event.get("kind"), event.get("name")
            if kind == "worker_stream":
                text = self.output[name] = (self.output.get(name, "") + event.get("chunk", ""))[
                    -4096:
                ]
                if name not in self.prompt_at and PROMPT.search(text):
                    self.prompt_at[name] = now
                waiter = self.echo_waiters.get(name)
                if waiter is not None and waiter[0] in text:
                    waiter[1].set()
            elif kind == "worker_ready":
                self.ready_at.setdefault(name, now)
            elif kind in ("delivery_verified", "delivery_failed"):
                self.verified[event["delivery_id"]] = (now, f"{kind}/{event.get('verification')}")
                self.verified_changed.set()
                self.verified_changed = trio.Event()

    async def spawn(self, name: str, argv: list[str]) -> None:
        # one connection per spawn, so that N spawns run at once as they do for trio-relay
        http = HttpConnection(self.port, self.key)
        try:
            await http.request(
                "POST",
                "/api/spawn",
                {"name": name, "cli": argv[0], "args": argv[1:], "cwd": str(self.workdir)},
            )
        finally:
            await http.aclose()

    async def snapshot(self, name: str) -> str:
        return (await self.http.request("GET", f"/api/spawned/{name}/snapshot?format=plain"))[
            "screen"
        ]

    async def input(self, name: str, data: str) -> None:
        await self.http.request("POST", f"/api/input/{name}", {"data": data})

    async def deliver(self, to: str, body: str) -> str:
        answer = await self.http.request(
            "POST", "/api/send", {"to": to, "text": body, "from": "bench"}
        )
        did = answer["delivery_id"]
        with trio.fail_after(60):
            while did not in self.verified:
                await self.verified_changed.wait()
        return self.verified[did][1]


class TrioRelayCompat(AgentRelay):
    """agent-relay's driver above, unchanged, against trio-relay's agent-relay API: the
    broker started as agent-relay's SDK starts it, through the shim."""

    name = COMPAT
    program_wrapper = "trio_relay.worker.pty"

    def command(self) -> list[str]:
        shim = Path(sys.executable).parent / "trio-relay-agent-relay"
        return [
            str(shim),
            "init",
            "--api-port",
            str(self.port),
            "--state-dir",
            str(self.workdir / "state"),
        ]


# ------------------------------------------------------------------ the workload


async def ready_run(
    broker: Any, n: int, idle: float, samples: int, deliveries: int
) -> dict[str, Any]:
    """N bash agents spawned at once; then (if asked) memory, idle CPU, round trips and
    deliveries on the same broker."""
    fig: dict[str, Any] = {}
    names = [f"b{i}" for i in range(n)]
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(broker.spawn, name, BASH)
    spawned = time.perf_counter()
    with trio.move_on_after(20):
        while not all(name in broker.prompt_at for name in names):
            await trio.sleep(0.005)
    prompts = [broker.prompt_at.get(name) for name in names]
    fig[f"prompt_{n}"] = max(prompts) - t0 if all(prompts) else None
    with trio.move_on_after(10 if broker.name == "agent-relay" else 20):
        while not all(name in broker.ready_at for name in names):
            await trio.sleep(0.005)
    readies = [broker.ready_at.get(name) for name in names]
    fig[f"ready_{n}"] = max(readies) - t0 if all(readies) else None
    fig[f"spawn_calls_{n}"] = spawned - t0

    # memory, once all are up and have printed their prompt
    await trio.sleep(0.5)
    fig[f"broker_rss_{n}"] = rss_mb(broker.broker_pid)
    agents = agent_processes(broker.broker_pid, "bash")
    per_agent = [rss_mb(w) + sum(rss_mb(p) for p in below) for w, below in agents]
    wrappers = [rss_mb(w) for w, _ in agents]
    fig[f"agent_rss_{n}"] = statistics.median(per_agent) if per_agent else None
    fig[f"wrapper_rss_{n}"] = statistics.median(wrappers) if wrappers else None
    fig[f"agents_found_{n}"] = len(agents)

    if idle > 0:
        await trio.sleep(2.5)  # past trio-relay's idle report (2 s of silence)
        pids = [w for w, _ in agents]
        b0, w0, c0 = (
            cpu_seconds(broker.broker_pid),
            sum(cpu_seconds(p) for p in pids),
            time.perf_counter(),
        )
        await trio.sleep(idle)
        b1, w1, c1 = (
            cpu_seconds(broker.broker_pid),
            sum(cpu_seconds(p) for p in pids),
            time.perf_counter(),
        )
        fig[f"idle_cpu_{n}"] = 100 * (b1 - b0) / (c1 - c0)
        fig[f"idle_wrapper_cpu_{n}"] = 100 * (w1 - w0) / (c1 - c0)

    if samples:
        name = names[0]
        await broker.snapshot(name)
        fig["snapshot"] = await timed(samples, lambda: broker.snapshot(name))
        fig["input"] = await timed(samples, lambda: broker.input(name, " "))
        await broker.input(name, "\x15")  # ^U: clear the line typed above
        echo = []
        for i in range(max(1, samples // 4)):
            marker = f"z{i:04d}q"
            event = trio.Event()
            broker.echo_waiters[name] = (marker, event)
            t = time.perf_counter()
            await broker.input(name, marker)
            with trio.fail_after(10):
                await event.wait()
            echo.append(time.perf_counter() - t)
            await broker.input(name, "\x15")
        broker.echo_waiters.pop(name, None)
        fig["input_echo"] = echo

    if deliveries:
        await broker.spawn("c0", ["cat"])
        with trio.move_on_after(20):
            while (
                "c0" not in broker.prompt_at
                and "c0" not in broker.ready_at
                and "c0" not in broker.output
            ):
                await trio.sleep(0.01)
        await trio.sleep(0.5)
        latencies, outcomes = [], []
        for i in range(deliveries + 1):
            t = time.perf_counter()
            outcomes.append(await broker.deliver("c0", f"hello {i} from the benchmark"))
            latencies.append(time.perf_counter() - t)
        fig["first_delivery"] = latencies[0]
        fig["delivery"] = latencies[1:]
        fig["delivery_outcomes"] = sorted(set(outcomes))
    return fig


async def measure(
    system: str, binary: Path | None, n: int, args: argparse.Namespace, first: bool
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{system}-"))
    try:
        if system == "trio-relay":
            broker: Any = TrioRelay(workdir)
        elif system == COMPAT:
            broker = TrioRelayCompat(workdir, Path(sys.executable))
        else:
            broker = AgentRelay(workdir, binary)  # type: ignore[arg-type]
        samples = args.samples if n == min(args.agents) else 0
        deliveries = args.deliveries if n == min(args.agents) else 0
        return await broker.run(lambda b: ready_run(b, n, args.idle, samples, deliveries))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------ the table


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ms":
        return f"{value * 1e3:.1f} ms" if value * 1e3 < 100 else f"{value * 1e3:.0f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "%":
        return f"{value:.2f} %"
    return f"{value:.3g}"


def collect(
    runs: list[dict[str, Any]], key: str, reduce: Callable[[list[float]], float] | None
) -> tuple[float | None, str]:
    """The median over repetitions of one figure (a list of samples is first reduced with
    ``reduce``), and the min..max spread."""
    values = []
    for run in runs:
        v = run.get(key)
        if v is None:
            continue
        values.append(reduce(v) if reduce else v)
    if not values:
        return None, ""
    return statistics.median(values), f"{min(values):.4g}..{max(values):.4g}"


def table(
    results: dict[str, list[dict[str, Any]]], args: argparse.Namespace
) -> list[tuple[str, str, str, str]]:
    p50 = lambda s: pct(s, 0.5)  # noqa: E731
    p99 = lambda s: pct(s, 0.99)  # noqa: E731
    rows: list[tuple[str, str, Callable[[list[float]], float] | None, str]] = []
    for n in args.agents:
        rows += [
            (f"{n} bash agents: prompt shown", f"prompt_{n}", None, "s"),
            (f"{n} bash agents: broker says ready", f"ready_{n}", None, "s"),
        ]
    rows += [
        ("snapshot round trip p50", "snapshot", p50, "ms"),
        ("snapshot round trip p99", "snapshot", p99, "ms"),
        ("input round trip p50", "input", p50, "ms"),
        ("input round trip p99", "input", p99, "ms"),
        ("input to echo p50", "input_echo", p50, "ms"),
        ("input to echo p99", "input_echo", p99, "ms"),
        ("delivery, send to verified p50", "delivery", p50, "ms"),
        ("delivery, send to verified p99", "delivery", p99, "ms"),
        ("first delivery to a fresh agent", "first_delivery", None, "ms"),
    ]
    for n in args.agents:
        rows += [
            (f"broker RSS, {n} agents", f"broker_rss_{n}", None, "MB"),
            (f"per-agent RSS (wrapper + bash), {n} agents", f"agent_rss_{n}", None, "MB"),
            ("  of which the wrapper", f"wrapper_rss_{n}", None, "MB"),
        ]
    if args.idle > 0:
        for n in args.agents:
            rows += [
                (f"broker CPU, {n} agents idle {args.idle:g} s", f"idle_cpu_{n}", None, "%"),
                (f"  wrappers' CPU, all {n}", f"idle_wrapper_cpu_{n}", None, "%"),
            ]
    out = []
    tr, ar = results.get("trio-relay", []), results.get("agent-relay", [])
    compat = results.get(COMPAT, [])
    print()
    print(
        f"{'figure':<44} {'trio-relay':>12} {'agent-relay':>12} {'ratio':>8} "
        f"{'tr, AR API':>12} {'ratio':>8}   spread (trio | agent | trio AR API)"
    )
    print("-" * 130)
    for label, key, reduce, unit in rows:
        a, a_spread = collect(tr, key, reduce)
        b, b_spread = collect(ar, key, reduce)
        c, c_spread = collect(compat, key, reduce)
        ratio = f"{a / b:.2f}x" if a is not None and b not in (None, 0) else "-"
        c_ratio = f"{c / b:.2f}x" if c is not None and b not in (None, 0) else "-"
        print(
            f"{label:<44} {fmt(a, unit):>12} {fmt(b, unit):>12} {ratio:>8} {fmt(c, unit):>12}"
            f" {c_ratio:>8}   {a_spread} | {b_spread} | {c_spread}"
        )
        out.append((label, fmt(a, unit), fmt(b, unit), ratio, fmt(c, unit), c_ratio))
    print()
    print(
        "ratio = trio-relay / agent-relay (below 1: trio-relay is faster or smaller); the third"
        " column is agent-relay's driver against trio-relay's agent-relay API (its ratio also"
        " to agent-relay)."
    )
    for name, runs in results.items():
        outcomes = sorted({o for r in runs for o in r.get("delivery_outcomes", [])})
        found = {n: [r.get(f"agents_found_{n}") for r in runs] for n in args.agents}
        print(f"{name}: delivery outcomes {outcomes}; agents found in /proc {found}")
    return out


async def main_async(args: argparse.Namespace) -> None:
    binary: Path | None = None
    systems = ["trio-relay", COMPAT]
    if not args.skip_agent_relay:
        found = agent_relay_binary(install=True)
        if isinstance(found, str):
            print(f"agent-relay comparison skipped: {found}", flush=True)
        else:
            binary = found
            version = subprocess.run(
                [str(binary), "--version"], capture_output=True, text=True
            ).stdout.strip()
            print(f"agent-relay: {version} ({binary.relative_to(ROOT)})")
            systems.append("agent-relay")
    print(
        f"trio-relay: {sys.executable} {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
        f"N = {args.agents}, {args.repeat} repetition(s), {args.samples} round trips, "
        f"{args.deliveries} deliveries, idle {args.idle:g} s",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for rep in range(args.repeat):
        for n in args.agents:
            for system in systems if rep % 2 == 0 else systems[::-1]:  # alternate the order
                t = time.perf_counter()
                try:
                    fig = await measure(system, binary, n, args, rep == 0)
                except Exception as exc:  # one failed run is reported, not fatal
                    print(
                        f"  [{rep + 1}/{args.repeat}] {system} N={n}: FAILED: {exc!r}", flush=True
                    )
                    continue
                results[system].append(fig)
                brief = {
                    k: (round(v, 3) if isinstance(v, float) else v)
                    for k, v in fig.items()
                    if not isinstance(v, list)
                }
                print(
                    f"  [{rep + 1}/{args.repeat}] {system} N={n} ({time.perf_counter() - t:.0f} s): {brief}",
                    flush=True,
                )
    rows = table(results, args)
    if args.markdown:
        print()
        print("| figure | trio-relay | agent-relay | ratio | trio-relay, agent-relay API | ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, a, b, ratio, c, c_ratio in rows:
            print(f"| {label.strip()} | {a} | {b} | {ratio} | {c} | {c_ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="4,50", help="N values, comma-separated (default 4,50)")
    for flag, kind, default, text in (
        ("--repeat", int, 3, "repetitions; the table shows medians"),
        ("--samples", int, 200, "snapshot and input round trips"),
        ("--deliveries", int, 10, "deliveries timed after the first (agent-relay takes ~2 s each)"),
        ("--idle", float, 10.0, "idle CPU window in seconds (0: skip)"),
    ):
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default {default:g})")
    parser.add_argument("--skip-agent-relay", action="store_true", help="measure trio-relay only")
    parser.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    args = parser.parse_args()
    args.agents = sorted({int(x) for x in args.agents.split(",")})
    compile_bytecode()  # what an installed trio-relay has: see tools/dev.py
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
