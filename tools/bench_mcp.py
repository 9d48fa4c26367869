#!/usr/bin/env python3
"""Benchmark ``trio-relay mcp`` (the relay tools served over MCP on stdio) against the MCP
SDK's own cost and against the native control client, each beside a baseline measured in
the same run.

    .venv/bin/python tools/bench_mcp.py
    .venv/bin/python tools/bench_mcp.py --starts 5 --messages 100 --submitted 10 --json

It starts a broker (``python -m trio_relay up --detach``, in ``--state-dir`` or a temporary
directory; ``down`` at the end), spawns four bash agents (alice, bob, carol and dave) and
drives the server with the SDK's own client (``stdio_client`` + ``ClientSession``), acting
as alice (her URL and scoped token, as an agent's CLI passes them):

1. **Start-up**, ``--starts`` times, alternating with the baseline: from spawning ``python
   -m trio_relay mcp`` to the ``initialize`` result, and to the first ``tools/list``
   result; the server's VmRSS (``/proc/<pid>/status``) after ``initialize`` and after 100
   tool calls (``relay_peers``: the first one connects to the broker), and those calls'
   round trips. Baseline: a minimal MCP server written by this script to a temporary file:
   the same SDK's low-level ``Server`` with one trivial tool, on ``stdio_server()`` under
   ``trio.run``; the ratio is what trio-relay adds to the SDK. Median (min-max) of the
   starts; the tool calls' p50/p99 over all of them but each start's first (shown alone).
2. **relay_send -> committed**: the ``relay_send`` tool call's round trip, ``--messages``
   times, interleaved one for one with the baseline, the native control client's
   ``client.send(...)`` over the Unix socket with alice's token. The tool's messages go to
   bob, the native ones to carol, both in ``hold`` mode (nothing is typed: this is the
   commit alone; one recipient each stays under the broker's cap of 256 queued per agent up
   to ``--messages`` 246, beyond that older ones are evicted). 10 of each first, untimed.
3. **relay_send -> submitted**: from calling ``relay_send`` to ``relay_wait`` returning (the
   delivery typed into dave's bash and taken: verification ``submitted`` expected; the
   levels seen are counted), ``--submitted`` times, one at a time, interleaved with the
   baseline: native ``client.send(..., wait=True)`` to the same agent. Between messages
   (untimed): until dave's bash has answered the previous one and is idle again, idle since
   after the delivery ended (just after bash answers, its activity still says ``idle``, from
   before: a message sent then waits in the worker for the next ``idle``, ~250 ms later).

Each wait has a deadline (``trio.fail_after``): a hang fails the run rather than stall it.
Progress goes to stderr; the table (and with ``--json`` the figures as JSON) to stdout.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from measure import git_head, pct, ratio, spread

from trio_relay.client import RelayClient, open_client
from trio_relay.control.auth import agent_token

PYTHON = sys.executable
RELAY_SERVER = [PYTHON, "-m", "trio_relay", "mcp"]
#: Tool calls per start, after which the RSS is read again.
CALLS_PER_START = 100
#: Untimed sends before the committed phase, per side.
WARMUP_SENDS = 10
#: Deadlines (seconds).
START_DEADLINE = 60.0  # one start: spawn, initialize, list, the calls, shutdown
MESSAGE_DEADLINE = 30.0  # one message, sent to its end
SETTLE_DEADLINE = 30.0  # an agent's answer to a message, back to idle
SPAWN_DEADLINE = 30.0  # a bash agent, spawned to idle
CLI_DEADLINE = 60.0  # `up` / `down`
RUN_DEADLINE = 900.0  # everything

#: The baseline: the SDK's own low-level server with one trivial tool, run as trio-relay's is.
BASELINE_SERVER = '''\
"""A minimal MCP server: the SDK's low-level Server, one trivial tool, stdio, trio.run."""

import json

import mcp_types as types
import trio
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server

TOOL = types.Tool(
    name="ping",
    description="Answer pong.",
    input_schema={"type": "object", "properties": {}, "additionalProperties": False},
)


async def list_tools(ctx, params):
    return types.ListToolsResult(tools=[TOOL])


async def call_tool(ctx, params):
    result = {"pong": True}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(result))],
        structured_content=result,
    )


async def main():
    server = Server("baseline", version="0", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


trio.run(main)
'''


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- processes


def relay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "trio_relay", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_DEADLINE,
        env={k: v for k, v in os.environ.items() if not k.startswith("TRIO_RELAY_")},
    )


def child_matching(marker: str) -> int:
    """The pid of this process's newest live child whose command line contains ``marker``
    (the server the SDK's client spawned)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended while we looked
        fields = stat[stat.rindex(")") + 2 :].split()
        state, ppid, started = fields[0], int(fields[1]), int(fields[19])
        if ppid == me and state != "Z" and marker in cmdline:
            found.append((started, int(entry.name)))
    if not found:
        raise RuntimeError(f"no child process of ours runs {marker!r}")
    return max(found)[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@asynccontextmanager
async def mcp_session(
    command: list[str], env: dict[str, str], errlog: TextIO
) -> AsyncIterator[ClientSession]:
    """A session with a server the SDK's client spawns (not yet initialized)."""
    params = StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=ROOT)
    async with stdio_client(params, errlog=errlog) as (read, write):
        async with ClientSession(read, write) as session:
            yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool call's JSON result; RuntimeError if the tool said it failed."""
    result = await session.call_tool(tool, arguments)
    text = result.content[0].text  # type: ignore[union-attr]
    if result.is_error:
        raise RuntimeError(f"{tool} failed: {text}")
    return json.loads(text)


# ---------------------------------------------------------------------- 1. start-up


@dataclass(frozen=True)
class Server:
    """One of the two servers measured: its label, its command, what in its command line
    finds its process, the tool called 100 times, its environment."""

    label: str
    command: list[str]
    marker: str
    tool: str
    env: dict[str, str]


async def one_start(server: Server, errlog: TextIO) -> dict[str, Any]:
    with trio.fail_after(START_DEADLINE):
        t0 = time.perf_counter()
        async with mcp_session(server.command, server.env, errlog) as session:
            await session.initialize()
            initialized = time.perf_counter() - t0
            pid = child_matching(server.marker)
            rss_initialized = rss_mb(pid)
            tools = (await session.list_tools()).tools
            listed = time.perf_counter() - t0
            calls = []
            for _ in range(CALLS_PER_START):
                c0 = time.perf_counter()
                await call(session, server.tool)
                calls.append(time.perf_counter() - c0)
            rss_called = rss_mb(pid)
    return {
        "initialize_s": initialized,
        "tools_list_s": listed,
        "tools": len(tools),
        "rss_initialize_mb": rss_initialized,
        "rss_after_calls_mb": rss_called,
        "first_call_s": calls[0],
        "calls_s": calls,
    }


async def startups(relay: Server, base: Server, starts: int, errlog: TextIO) -> dict[str, Any]:
    out: dict[str, list[dict[str, Any]]] = {"trio-relay": [], "baseline": []}
    for i in range(starts):
        order = [relay, base] if i % 2 == 0 else [base, relay]
        for server in order:
            out[server.label].append(await one_start(server, errlog))
        log(f"start-up {i + 1}/{starts}")
    return out


# ---------------------------------------------------------------------- 2. and 3. messages


async def until_idle(owner: RelayClient, name: str) -> None:
    while [a.activity for a in await owner.agents() if a.name == name] != ["idle"]:
        await trio.sleep(0.02)


async def until_answered(
    owner: RelayClient, name: str, delivery_id: str, ended: float, fallbacks: list[str]
) -> None:
    """Until ``name``'s bash ran the line typed for ``delivery_id`` (it has no command
    "Relay") and is idle again: idle since after ``ended`` (wall clock), when the delivery
    ended. (Its ``activity`` still says ``idle`` for ~15 ms after the answer, until the
    worker sees the output and says ``busy``: a message sent then waits in the worker for
    the next ``idle``, ~250 ms later.) If that is not seen within 3 s, plain idle will do
    and the delivery is named in ``fallbacks``."""
    with trio.fail_after(SETTLE_DEADLINE):
        while True:
            text = (await owner.snapshot(name)).text
            at = text.find(delivery_id)
            if at >= 0 and "command not found" in text[at:]:
                break
            await trio.sleep(0.02)
        with trio.move_on_after(3) as fallback:
            while True:
                agent = next(a for a in await owner.agents() if a.name == name)
                since = agent.activity_since or 0.0
                if agent.activity == "idle" and since > ended and agent.waiting is None:
                    break
                await trio.sleep(0.02)
        if fallback.cancelled_caught:
            fallbacks.append(delivery_id)
            await until_idle(owner, name)


async def committed(
    session: ClientSession, native: RelayClient, owner: RelayClient, n: int
) -> dict[str, Any]:
    for name in ("bob", "carol"):
        await owner.mode(name, "hold")
    times: dict[str, list[float]] = {"trio-relay": [], "baseline": []}

    async def by_tool(i: int) -> None:
        sent = await call(session, "relay_send", to="bob", message=f"echo {i}")
        assert sent["state"] == "queued", sent

    async def by_native(i: int) -> None:
        receipt = await native.send("carol", f"echo {i}")
        assert receipt.state == "queued", receipt

    sides: list[tuple[str, Callable[[int], Awaitable[None]]]] = [
        ("trio-relay", by_tool),
        ("baseline", by_native),
    ]
    for i in range(WARMUP_SENDS):
        for _, send in sides:
            with trio.fail_after(MESSAGE_DEADLINE):
                await send(-1 - i)
    for i in range(n):
        for label, send in sides if i % 2 == 0 else sides[::-1]:
            with trio.fail_after(MESSAGE_DEADLINE):
                t0 = time.perf_counter()
                await send(i)
                times[label].append(time.perf_counter() - t0)
    return times


async def submitted(
    session: ClientSession, native: RelayClient, owner: RelayClient, n: int
) -> dict[str, Any]:
    times: dict[str, list[float]] = {"trio-relay": [], "baseline": []}
    levels: dict[str, collections.Counter[str]] = {
        "trio-relay": collections.Counter(),
        "baseline": collections.Counter(),
    }
    fallbacks: list[str] = []

    async def by_tool(i: int) -> tuple[str, str]:
        sent = await call(session, "relay_send", to="dave", message=f"echo {i}")
        ended = await call(session, "relay_wait", id=sent["id"], timeout=MESSAGE_DEADLINE)
        levels["trio-relay"][f"{ended['state']}/{ended['verification']}"] += 1
        return sent["id"], ended["state"]

    async def by_native(i: int) -> tuple[str, str]:
        receipt = await native.send("dave", f"echo {i}", wait=True, timeout=MESSAGE_DEADLINE)
        levels["baseline"][f"{receipt.state}/{receipt.verification}"] += 1
        return receipt.delivery_id, receipt.state

    sides: list[tuple[str, Callable[[int], Awaitable[tuple[str, str]]]]] = [
        ("trio-relay", by_tool),
        ("baseline", by_native),
    ]
    with trio.fail_after(SETTLE_DEADLINE):
        await until_idle(owner, "dave")
    for i in range(n):
        for label, send in sides if i % 2 == 0 else sides[::-1]:
            with trio.fail_after(MESSAGE_DEADLINE + 5):
                t0 = time.perf_counter()
                delivery_id, state = await send(i)
                times[label].append(time.perf_counter() - t0)
            ended = time.time()
            if state in ("verified", "unverified"):  # typed: wait for bash's answer
                await until_answered(owner, "dave", delivery_id, ended, fallbacks)
        if (i + 1) % 10 == 0:
            log(f"submitted {i + 1}/{n}")
    return {
        "times": times,
        "levels": {k: dict(v) for k, v in levels.items()},
        "settle_fallbacks": fallbacks,
    }


# ---------------------------------------------------------------------- the run


async def spawn_bash(owner: RelayClient, name: str, cwd: str) -> None:
    # Wide, so the typed line (with its delivery id) is not wrapped on the screen.
    await owner.spawn(name, ["bash", "--norc"], cwd=cwd, cols=200)
    with trio.fail_after(SPAWN_DEADLINE):
        await until_idle(owner, name)


def servers(state: Path, work: Path) -> tuple[Server, Server]:
    """trio-relay's server acting as alice, and the baseline (written to ``work``)."""
    url = f"ws+unix://{state.absolute()}/control.sock"
    owner_token = (state / "token").read_text().strip()
    alice = {
        "TRIO_RELAY_URL": url,
        "TRIO_RELAY_TOKEN": agent_token(owner_token, "alice"),
        "TRIO_RELAY_AGENT": "alice",
    }
    baseline_file = work / "baseline_mcp_server.py"
    baseline_file.write_text(BASELINE_SERVER)
    relay = Server("trio-relay", RELAY_SERVER, "trio_relay mcp", "relay_peers", alice)
    base = Server("baseline", [PYTHON, str(baseline_file)], str(baseline_file), "ping", {})
    return relay, base


async def run(
    args: argparse.Namespace, state: str, work: str, relay: Server, base: Server, errlog: TextIO
) -> dict[str, Any]:
    alice = relay.env
    url = alice["TRIO_RELAY_URL"]
    out: dict[str, Any] = {}
    with trio.fail_after(RUN_DEADLINE):
        async with open_client(state_dir=state) as owner:
            for name in ("alice", "bob", "carol", "dave"):
                await spawn_bash(owner, name, work)
            log("agents alice, bob, carol and dave idle")
            out["startup"] = await startups(relay, base, args.starts, errlog)
            async with (
                mcp_session(relay.command, alice, errlog) as session,
                open_client(url, alice["TRIO_RELAY_TOKEN"]) as native,
            ):
                with trio.fail_after(START_DEADLINE):
                    await session.initialize()
                    await call(session, "relay_peers")  # connected
                    await native.peers()
                if args.submitted:
                    log(f"relay_send -> submitted, {args.submitted} each")
                    out["submitted"] = await submitted(session, native, owner, args.submitted)
                if args.messages:
                    log(f"relay_send -> committed, {args.messages} each")
                    out["committed"] = await committed(session, native, owner, args.messages)
    return out


# ---------------------------------------------------------------------- the table


def summarize(out: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, trio-relay, baseline, ratio of the medians or percentiles) rows."""
    rows: list[tuple[str, str, str, str]] = []
    if "startup" in out:
        relay, base = out["startup"]["trio-relay"], out["startup"]["baseline"]
        n = len(relay)
        for key, title, scale, unit in (
            ("initialize_s", "spawn -> initialize result", 1000, "ms"),
            ("tools_list_s", "spawn -> first tools/list result", 1000, "ms"),
            ("rss_initialize_mb", "VmRSS after initialize", 1, "MB"),
            ("rss_after_calls_mb", f"VmRSS after {CALLS_PER_START} tool calls", 1, "MB"),
            ("first_call_s", "first tool call", 1000, "ms"),
        ):
            a = [r[key] * scale for r in relay]
            b = [r[key] * scale for r in base]
            rows.append(
                (
                    f"{title}, {unit}, median (min-max) of {n}",
                    spread(a, "{:.1f}"),
                    spread(b, "{:.1f}"),
                    ratio(statistics.median(a), statistics.median(b)),
                )
            )
        a = [c * 1000 for r in relay for c in r["calls_s"][1:]]
        b = [c * 1000 for r in base for c in r["calls_s"][1:]]
        rows += percentile_rows("tool call round trip", f"{len(a)} calls after the first", a, b)
    for key, title in (
        ("committed", "relay_send -> committed"),
        ("submitted", "relay_send -> relay_wait (submitted)"),
    ):
        if key not in out:
            continue
        times = out[key] if key == "committed" else out[key]["times"]
        a = [t * 1000 for t in times["trio-relay"]]
        b = [t * 1000 for t in times["baseline"]]
        rows += percentile_rows(title, f"{len(a)} each", a, b)
    return rows


def percentile_rows(
    title: str, count: str, a: list[float], b: list[float]
) -> list[tuple[str, str, str, str]]:
    """The p50 and p99 rows of ``a`` (ms) beside ``b``."""
    return [
        (f"{title} p{q * 100:.0f}, ms ({count})", f"{pct(a, q):.2f}", f"{pct(b, q):.2f}",
         ratio(pct(a, q), pct(b, q)))
        for q in (0.5, 0.99)
    ]  # fmt: skip


def print_table(out: dict[str, Any]) -> None:
    print(f"trio-relay {out['commit']}; {out['cpus']} CPUs")
    print(
        "baselines: start-up and tool calls: a minimal MCP server on the same SDK (low-level"
        " Server, one trivial tool, stdio, trio.run) vs `trio-relay mcp` calling relay_peers;"
        " messages: the native control client (client.send, alice's token, Unix socket)"
    )
    print("| figure | trio-relay mcp | baseline | ratio |")
    print("|---|---|---|---|")
    for row in summarize(out):
        print("| " + " | ".join(row) + " |")
    if "submitted" in out:
        for label, levels in out["submitted"]["levels"].items():
            seen = ", ".join(f"{k}: {v}" for k, v in sorted(levels.items()))
            print(f"  verification levels ({label}): {seen or 'none'}")
        if fallbacks := out["submitted"]["settle_fallbacks"]:
            print(
                f"  {len(fallbacks)} times dave was not seen busy and idle again within 3 s"
                f" of a delivery's end (the next message was sent once it was idle)"
            )


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--state-dir", help="the broker's state directory (default: a temporary one)"
    )
    parser.add_argument(
        "--starts", type=int, default=10, help="server starts of each kind (default 10)"
    )
    parser.add_argument(
        "--messages", type=int, default=200, help="sends of each kind to committed (default 200)"
    )
    parser.add_argument(
        "--submitted",
        type=int,
        default=30,
        help="messages of each kind followed to submitted (default 30)",
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    if args.starts < 1 or args.messages < 0 or args.submitted < 0:
        parser.error("--starts must be at least 1, --messages and --submitted at least 0")

    work = Path(tempfile.mkdtemp(prefix="bench-mcp-"))
    state = Path(args.state_dir) if args.state_dir else work / "state"
    errlog_path = work / "servers.stderr"
    failed = True
    try:
        started = relay_cli("up", "--detach", "--state-dir", str(state))
        if started.returncode != 0:
            sys.exit(f"`trio-relay up --detach` failed: {started.stderr or started.stdout}")
        log(started.stdout.strip())
        relay, base = servers(state, work)
        with errlog_path.open("w") as errlog:
            out = trio.run(run, args, str(state), str(work), relay, base, errlog)
        failed = False
    finally:
        stopped = relay_cli("down", "--state-dir", str(state))
        if stopped.returncode != 0:
            log(f"`trio-relay down` failed: {stopped.stderr or stopped.stdout}")
        if failed and errlog_path.exists():
            tail = errlog_path.read_text()[-4000:]
            log(f"the servers' stderr ended with:\n{tail}")
        shutil.rmtree(work, ignore_errors=True)
    out = {"commit": git_head(), "cpus": os.cpu_count(), **out}
    print_table(out)
    if args.json:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
