"""The SIGKILL crash loop with real processes, shared by tests/system/test_crash_loop.py (about 20
iterations) and tools/crash_loop.py (as many as asked).

Each iteration starts a broker (tests/support/crash_driver.py) on one state directory, which
respawns the two ``cat`` agents (PTY worker) of the previous life and streams a few
messages to them; at a random moment -- during start-up, recovery, spawning, typing --
the broker is killed with SIGKILL. Then every process of that life (found by the
``CRASH_TAG`` in its environment: the broker, its PTY workers, their ``cat`` programs) must
be gone, on their own, within a deadline. A last life drains what is left and stops
normally. Then, over the whole history:

- every delivery acknowledged as queued (committed) before a kill ends verified or
  dead-lettered, and nothing is left open;
- no ``cat`` process read any delivery twice (its journal), and no delivery the store held
  as verified when a life started was typed again in that life: a delivery is retyped
  after a crash only if its verification had not been committed when the broker died
  (at-least-once to the terminal);
- everything verified in the last life is in that life's journals.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from helpers import kill_and_reap

DRIVER = Path(__file__).with_name("crash_driver.py")
ID = re.compile(r"\[([0-9a-f]+-\d+)\]")


@dataclass
class Life:
    tag: str
    killed_after: float | None
    verified_at_start: set[str] | None = None
    acked: list[str] = field(default_factory=list)
    agents: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, str] | None = None


def processes_tagged(tag: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries CRASH_TAG=tag."""
    needle = b"\0CRASH_TAG=" + tag.encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if needle in b"\0" + environ + b"\0" and stat[stat.rindex(")") + 2] != "Z":
            found.append(int(entry.name))
    return found


async def run_life(
    state: Path,
    journals: Path,
    tag: str,
    mode: str,
    messages: int = 0,
    kill_after: float | None = None,
    after_up: bool = False,
) -> Life:
    """One broker life. ``kill_after``: SIGKILL it that many seconds after it started
    (or, with ``after_up``, after both agents are up); None: let it drain and stop."""
    life = Life(tag, kill_after)
    argv = [sys.executable, str(DRIVER), str(state), str(journals), mode]
    if mode == "stream":
        argv.append(str(messages))
    env = {**os.environ, "CRASH_TAG": tag}
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, env=env)
    buffer = b""

    def take(chunk: bytes) -> None:
        nonlocal buffer
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "queued" in message:
                life.acked.append(message["queued"])
            elif "verified_at_start" in message:
                life.verified_at_start = set(message["verified_at_start"])
            elif "agent" in message:
                life.agents.append(message)
            elif "states" in message:
                life.states = message["states"]

    try:
        assert proc.stdout is not None
        if after_up:
            with trio.fail_after(30):
                while len(life.agents) < 2:
                    chunk = await proc.stdout.receive_some()
                    assert chunk, "the broker ended before its agents were up"
                    take(chunk)
        with trio.move_on_after(kill_after if kill_after is not None else 90):
            while chunk := await proc.stdout.receive_some():
                take(chunk)
        if kill_after is not None:
            proc.kill()  # SIGKILL, wherever it is
        with trio.fail_after(15):
            await proc.wait()
            while chunk := await proc.stdout.receive_some():  # acknowledged before it died
                take(chunk)
    finally:
        await kill_and_reap(proc)
    if kill_after is None:
        assert proc.returncode == 0, f"the draining broker failed ({proc.returncode})"
    return life


def journals_of(journals: Path, tag: str) -> dict[str, list[str]]:
    """Delivery ids read by each cat process of life ``tag``, by journal file."""
    return {
        path.name: ID.findall(path.read_text(errors="replace"))
        for path in sorted(journals.glob(f"{tag}.*.log"))
    }


async def crash_loop(
    workdir: Path,
    iterations: int,
    seed: int,
    *,
    kill_window: float = 2.0,
    max_messages: int = 8,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the loop; raise AssertionError naming the seed on any broken promise."""
    rng = random.Random(seed)
    state, journals = workdir / "state", workdir / "journals"
    journals.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(4)
    lives: list[Life] = []
    for i in range(iterations):
        tag = f"{run_id}-{i}"
        # half the lives die anywhere from start-up on, half once their agents are up
        after_up = rng.random() < 0.5
        life = await run_life(
            state,
            journals,
            tag,
            "stream",
            rng.randint(1, max_messages),
            rng.uniform(0, kill_window / 2 if after_up else kill_window),
            after_up,
        )
        lives.append(life)
        with trio.move_on_after(10):
            while processes_tagged(tag):
                await trio.sleep(0.01)
        left = processes_tagged(tag)
        assert not left, f"seed {seed}: processes of killed life {i} still alive: {left}"
        log(
            f"life {i}: killed {life.killed_after:.2f}s after {'its agents were up' if after_up else 'start'},"
            f" {len(life.acked)} acknowledged,"
            f" {len(life.agents)} agents up"
        )
    final = await run_life(state, journals, f"{run_id}-final", "drain")
    lives.append(final)
    with trio.move_on_after(10):  # its processes end as it stops; give them a moment
        while processes_tagged(final.tag):
            await trio.sleep(0.01)
    assert not processes_tagged(final.tag), f"seed {seed}: the drained life left processes"
    assert final.states is not None

    context = f"seed {seed}"
    acked = [d for life in lives for d in life.acked]
    assert len(set(acked)) == len(acked), f"{context}: a delivery id was issued twice"
    bad = {
        d: final.states.get(d)
        for d in acked
        if final.states.get(d) not in ("verified", "dead_letter")
    }
    assert not bad, f"{context}: acknowledged deliveries not verified or dead-lettered: {bad}"
    still_open = {d: s for d, s in final.states.items() if s in ("queued", "sent", "injected")}
    assert not still_open, f"{context}: deliveries left open: {still_open}"

    typed_in: dict[str, list[str]] = {}
    for life in lives:
        for name, ids in journals_of(journals, life.tag).items():
            twice = [d for d, n in Counter(ids).items() if n > 1]
            assert not twice, f"{context}: {name} read {twice} more than once"
            assert life.verified_at_start is not None, f"{context}: a journal without a start"
            again = set(ids) & life.verified_at_start
            assert not again, f"{context}: {name} retyped {again}, verified before its life began"
            for d in ids:
                typed_in.setdefault(d, []).append(life.tag)
    verified = [d for d, s in final.states.items() if s == "verified"]
    final_typed = {d for ids in journals_of(journals, final.tag).values() for d in ids}
    assert final.verified_at_start is not None
    for d in verified:
        if d not in final.verified_at_start:
            assert d in final_typed, f"{context}: {d} verified in the last life but never read"
    retyped = sorted(d for d, tags in typed_in.items() if len(tags) > 1)
    return {
        "seed": seed,
        "iterations": iterations,
        "acknowledged": len(acked),
        "verified": len(verified),
        "dead_letter": sum(1 for s in final.states.values() if s == "dead_letter"),
        "killed_before_agents_up": sum(1 for life in lives[:-1] if len(life.agents) < 2),
        "retyped_after_a_crash": len(retyped),
    }
