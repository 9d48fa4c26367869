#!/usr/bin/env python3
"""Benchmark trio-relay with the real agent CLIs, and what reading an agent's activity costs.

    python3 tools/dev.py run python tools/bench_agents.py
    python3 tools/dev.py run python tools/bench_agents.py --clis claude,codex --messages 10
    python3 tools/dev.py run python tools/bench_agents.py --skip-clis --repeat 3   detection only
    python3 tools/dev.py run python tools/bench_agents.py --skip-detection --json

**Real CLIs** (Claude Code, Codex, Gemini CLI, as ``tools/agent_clis.py`` installs them; the
default is those installed, the others are named as skipped, with why). Each runs under an
in-process broker through the PTY worker (40x120), offline as ``tools/record_agent_screens.py``
runs it (its ``seed``: a fresh HOME and project, dummy keys, base URLs at a closed port;
``unshare -rn`` where it works), twice:

- with its own built-in profile (the worker's argv from ``pty_command``, as ``spawn --profile
  NAME`` builds it): its dialogs are answered with the keys a person would press, chosen by
  the text of the ``agent_activity`` event that says ``attention`` (:data:`ANSWERS`; pressed
  again if the same dialog is still there 2 s later: the CLIs drop keys typed while they
  start). While a dialog is being answered the screen is read too, every 100 ms, with the
  CLI's profile: before 0f1acfd the broker emitted no ``agent_activity`` for a dialog right
  after another (Codex's sign-in, then its API key), and a dialog found only that way is listed.
  Measured: spawn to the first ``agent_activity`` to ``idle``.
  Then ``--messages`` short messages, one after another: send to the delivery's end
  (``delivery_verified``, ``submitted`` expected), p50/p99, and the verification levels;
- with the ``generic`` profile, the baseline: the same CLI is brought to its input box by the
  same answers (its screen read by this script with the CLI's profile, since the worker
  knows nothing of it), and the same messages end ``echo`` (typed and seen on screen). Also
  counted: the messages left unsent in the input box after their ``echo`` (the bug profiles
  fix; cleared with the profile's keys before the next message).

Between messages: each waits until the agent's reaction to the previous one is over: it
turned busy (within ``REACT_SECONDS``; Codex shows "Working" only 5-7 s after it took a message)
and then idle again, and at least 0.6 s after the last key this script pressed (the worker holds
a delivery 0.5 s after a person's keys). Offline, no model call fails quickly: Claude Code
retries 10 times (~3 min) and comes back with "Resend your message", Gemini CLI shows
"Thinking..." for ~5 min before "API Error: fetch failed", Codex "Working" for over 10 min. So
after ``--idle-wait`` seconds (default 5) still busy, Claude Code gets the next message while
busy (it queues it: "Queued"); Codex and Gemini CLI get an Esc (what a person does with a call
that cannot succeed: it interrupts it) and the next message once they are idle. The table says
how many messages went to an idle and to a busy agent, and how many Esc were pressed. With 10
messages, p99 is the slowest of the 10.

**Activity detection cost.** ``tools/spinner_tui.py`` (a busy agent's screen redrawn at 20 Hz:
cursor moves, colours, a spinner line with "esc to interrupt", a spinner window title, an input
box with ``> ``, a 2 KB burst of transcript every second) runs ``--detect-seconds`` under the PTY
worker through the broker with ``--profile generic`` (the baseline: no patterns) and with
profiles that have patterns: ``claude``, ``codex``, ``gemini`` and ``spinner`` (a JSON profile
matching the workload's screen: its prompt, busy signs and two dialogs). Measured after a 1.5 s
warm-up, from /proc: the worker's CPU seconds (utime+stime) and VmRSS/VmHWM, and the workload's
own CPU (the same for each, or the comparison is off). Runs alternate the order (ABBA) over
``--repeat``. Then a replay without I/O (the machine's load matters less): the same byte stream
fed to the worker's sans-IO :class:`~trio_relay.worker.pty.core.PtyCore` with virtual time, per
profile (the least CPU of ``REPLAYS``), with the CPU spent in its classify calls, and single
calls timed alone on the final screen: ``screen.lines()`` (which every classify builds, generic
included), :func:`~trio_relay.worker.pty.activity.classify` and each of the profile's patterns;
from those, the ratio the profile's patterns alone would give. With ``--cprofile`` (or when a
profile's median wrapper CPU is over 1.2x the generic one's) the replay's top functions.

Every figure is printed beside its baseline from the same run (the generic profile's) and the
ratio to it. ``--json`` prints the figures as JSON instead (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(TOOLS))

import agent_clis
import record_agent_screens as recorder
import spinner_tui
from measure import git_head, pct, ratio, spread

from trio_relay import Broker, open_broker
from trio_relay.control.operations import pty_command
from trio_relay.profiles.catalog import Catalog
from trio_relay.profiles.profile import Dialog, Profile, Prompt
from trio_relay.wire import (
    AgentActivity,
    AgentOutput,
    DeadLetterEvent,
    DeliveryDroppedEvent,
    DeliveryFailedEvent,
    DeliveryInjectedEvent,
    DeliveryUnverifiedEvent,
    DeliveryVerifiedEvent,
)
from trio_relay.worker.pty import injector
from trio_relay.worker.pty.activity import classify, input_line
from trio_relay.worker.pty.core import PtyCore
from trio_relay.worker.pty.options import Options
from trio_relay.worker.pty.screen import TerminalScreen

ROWS, COLS = recorder.ROWS, recorder.COLS
ENTER, DOWN, UP, ESC = recorder.ENTER, recorder.DOWN, recorder.UP, recorder.ESC
#: How long an agent has to show that it took a message (turn busy) before we stop waiting.
REACT_SECONDS = 10.0
#: Spawn to idle, dialogs included, at most.
START_SECONDS = 90.0
#: One delivery, send to its end, at most.
DELIVERY_SECONDS = 60.0
#: The CLIs that are sent the next message while still busy (they queue it).
SEND_WHILE_BUSY = {"claude"}
#: The worker holds a delivery this long after a person's keys (ours, answering a dialog or
#: pressing Esc): each message is sent at least this long after the last key we pressed.
PERSON_TYPING = getattr(injector, "PERSON_TYPING", 0.0)
WARMUP = 1.5
REPLAYS = 5  # replays of the workload's stream per profile (the least CPU is shown)
MB = 1024.0
TICK = os.sysconf("SC_CLK_TCK")
#: The events that end a delivery, and the state each leaves it in.
ENDED = {
    DeliveryVerifiedEvent: "verified",
    DeliveryUnverifiedEvent: "unverified",
    DeliveryFailedEvent: "failed",
    DeliveryDroppedEvent: "dropped",
    DeadLetterEvent: "dead_letter",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- answering dialogs


@dataclass(frozen=True)
class Answer:
    """Keys for a dialog whose ``attention`` text matches ``text``; ``after_raw``: wait until
    the raw output showed this first (Claude Code drops keys until it enabled bracketed
    paste)."""

    text: str
    keys: str
    after_raw: str | None = None


#: What a person presses, per CLI, by what the dialog says (first match wins). The keys are
#: those of tools/record_agent_screens.py's flows.
ANSWERS: dict[str, tuple[Answer, ...]] = {
    "claude": (
        # "No, exit" is selected: Down and Enter in one write take "Yes, I trust this folder".
        Answer(r"(?i)trust this folder|trust the files", DOWN + ENTER, after_raw="\x1b[?2004h"),
        # "No (recommended)" is selected: Up and Enter take "Yes".
        Answer(r"(?i)API key", UP + ENTER),
    ),
    "codex": (
        Answer(r"Sign in with ChatGPT", "3"),  # 3: "Sign in another way"
        Answer(r"(?i)other way|Use an OpenAI API key", ENTER),  # 1. Use an OpenAI API key
        Answer(r"(?i)API key|Press enter to save", ENTER),  # prefilled from OPENAI_API_KEY
        Answer(r"(?i)trust|continue", ENTER),
    ),
    "gemini": (
        Answer(r"(?i)trust", ENTER),  # then it restarts itself
        Answer(r"(?i)authenticate|sign in", ENTER),  # "Use Gemini API Key" is selected
        Answer(r"(?i)API key", ENTER),
    ),
}


def answer_for(cli: str, text: str) -> Answer | None:
    return next((a for a in ANSWERS[cli] if re.search(a.text, text)), None)


# ---------------------------------------------------------------------- one CLI, one profile


@dataclass
class Sent:
    """One message: times are seconds from its send."""

    index: int
    activity: str  #: the agent's activity when it was sent
    sent: float = 0.0  #: monotonic
    injected: float | None = None
    ended: float | None = None
    outcome: str = ""
    verification: str | None = None
    reason: str | None = None
    waiting: list[str] = field(default_factory=list)  #: why it waited in the worker
    left_in_input: bool = False  #: still in the input box after its end (generic)

    @property
    def latency(self) -> float | None:
        return None if self.ended is None else self.ended - self.sent


class CliRun:
    """One CLI under a broker, with its profile (``generic``: with the generic one)."""

    def __init__(self, broker: Broker, cli: str, profile: Profile, generic: bool) -> None:
        self.broker, self.cli, self.profile, self.generic = broker, cli, profile, generic
        self.agent = f"{cli}-{'generic' if generic else 'own'}"
        self.t0 = 0.0
        self.since = broker.events.last_seq
        self.activity, self.activity_text = "starting", ""
        self.attention_seq = 0  # a new dialog (or a new dialog text) bumps it
        self.changes: list[tuple[float, str, str]] = []  # (t from spawn, to, text)
        self.raw_tail = ""
        self.raw_seen: set[str] = set()
        self.watched_raw = {a.after_raw for a in ANSWERS[cli] if a.after_raw}
        self.first_idle: float | None = None
        self.dialogs: list[dict[str, Any]] = []
        self.unanswered: list[str] = []
        self.silent_dialogs: list[str] = []  # dialogs seen on screen with no agent_activity
        self.sent: dict[str, Sent] = {}
        self.escapes = 0
        self.screen_text = ""
        self.was_idle = False
        self.last_key = 0.0  # monotonic
        self.output_by_activity: dict[str, int] = {}  # bytes of output drawn in each activity
        self.time_by_activity: dict[str, float] = {}
        self._since_change = 0.0

    # ---- what it does

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _set_activity(self, to: str, text: str, at: float) -> None:
        if to == "attention" and (self.activity != "attention" or text != self.activity_text):
            self.attention_seq += 1
        if to != self.activity:
            self.changes.append((round(at, 3), to, text[:120]))
            self.time_by_activity[self.activity] = (
                self.time_by_activity.get(self.activity, 0.0) + at - self._since_change
            )
            self._since_change = at
        self.activity, self.activity_text = to, text
        if to == "idle" and self.first_idle is None:
            self.first_idle = at

    async def watch(self) -> None:
        """The broker's events about this agent: activity (with a profile), raw output,
        deliveries."""
        async for event in self.broker.events.subscribe(self.since):
            if getattr(event, "agent", None) != self.agent:
                continue
            at = self.now()
            if isinstance(event, AgentOutput):
                size = len(event.data.encode())
                self.output_by_activity[self.activity] = (
                    self.output_by_activity.get(self.activity, 0) + size
                )
                if self.watched_raw - self.raw_seen:
                    self.raw_tail = (self.raw_tail + event.data)[-4096:]
                    self.raw_seen |= {raw for raw in self.watched_raw if raw in self.raw_tail}
            elif isinstance(event, AgentActivity) and not self.generic:
                self._set_activity(event.to, event.text, at)
            elif isinstance(event, DeliveryInjectedEvent):
                if (sent := self.sent.get(event.delivery_id)) is not None:
                    sent.injected = time.monotonic() - sent.sent
            elif type(event) in ENDED:
                if (sent := self.sent.get(event.delivery_id)) is not None:
                    sent.ended = time.monotonic()
                    sent.outcome = ENDED[type(event)]
                    sent.verification = getattr(event, "verification", None)
                    sent.reason = getattr(event, "reason", None)

    async def screen(self) -> dict[str, Any]:
        snap = await self.broker.request_worker(self.agent, "snapshot", {}, timeout=5)
        self.screen_text = snap["text"]
        return snap

    def read_screen(self, snap: dict[str, Any]) -> Any:
        """The CLI's profile over a snapshot (no window title: snapshots have none)."""
        return classify(
            self.profile,
            snap["text"].split("\n"),
            snap["cursor"][0],
            "",
            quiet=True,
            reading=False,
            was_idle=self.was_idle,
            settle=0.25,
        )

    async def poll_screen(self) -> None:
        """With the generic profile the worker reports no activity: read it off the screen
        here, every 100 ms, with the CLI's profile."""
        while True:
            verdict = self.read_screen(await self.screen())
            self.was_idle |= verdict.activity == "idle"
            self._set_activity(verdict.activity, verdict.text, self.now())
            await trio.sleep(0.1)

    async def until(self, ok: Callable[[], bool], timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while not ok():
                await trio.sleep(0.01)
            return True
        return False

    async def keys(self, data: str) -> None:
        await self.broker.write_input(self.agent, data)
        self.last_key = time.monotonic()

    async def answer_dialogs(self) -> None:
        """Answer each dialog the agent shows, by its text, until cancelled."""
        handled = 0
        while True:
            await self.until(
                lambda h=handled: self.activity == "attention" and self.attention_seq != h, 1e9
            )
            seq, text = self.attention_seq, self.activity_text
            handled = seq
            answer = answer_for(self.cli, text)
            if answer is None:
                self.unanswered.append(text)
                log(f"  {self.agent}: no answer known for the dialog {text[:100]!r}")
                continue
            if answer.after_raw:
                await self.until(lambda a=answer.after_raw: a in self.raw_seen, 10)
            presses = 0
            for _ in range(5):
                await self.keys(answer.keys)
                presses += 1
                if await self.next_dialog(seq, answer, 2):
                    break
            self.dialogs.append(
                {
                    "at": round(self.now(), 3),
                    "text": text[:100],
                    "keys": answer.keys,
                    "presses": presses,
                }
            )

    async def next_dialog(self, seq: int, answer: Answer, timeout: float) -> bool:
        """Whether the dialog answered by ``answer`` is gone within ``timeout``: an event
        says so, or the screen shows another dialog with no event for it (read every 100 ms
        with the CLI's profile; counted in ``silent_dialogs``)."""
        with trio.move_on_after(timeout):
            while True:
                if self.attention_seq != seq or self.activity != "attention":
                    return True
                verdict = self.read_screen(await self.screen())
                if self.attention_seq != seq or self.activity != "attention":
                    return True
                if verdict.activity == "attention" and answer_for(self.cli, verdict.text) not in (
                    None,
                    answer,
                ):
                    self.silent_dialogs.append(verdict.text[:100])
                    self._set_activity("attention", verdict.text, self.now())
                    return True
                await trio.sleep(0.1)
        return False

    # ---- messages

    async def input_box_empty(self, timeout: float) -> bool:
        async def empty() -> bool:
            snap = await self.screen()
            line = input_line(self.profile, snap["text"].split("\n"), snap["cursor"][0])
            return line.found and not line.text

        with trio.move_on_after(timeout):
            while not await empty():
                await trio.sleep(0.05)
            return True
        return False

    async def next_ready(self, previous: Sent, idle_wait: float) -> None:
        """Wait until the agent's reaction to ``previous`` is over (see the module's doc)."""
        sent_at = previous.sent - self.t0

        def reacted() -> bool:
            return self.activity == "busy" or any(
                t >= sent_at and to == "busy" for t, to, _ in self.changes
            )

        def idle() -> bool:
            return self.activity == "idle"

        await self.until(reacted, REACT_SECONDS)
        if await self.until(idle, idle_wait):
            return
        if self.cli in SEND_WHILE_BUSY:
            return  # it queues a message typed while it works
        self.escapes += 1
        await self.keys(ESC)
        if not await self.until(idle, 30):
            raise RuntimeError(
                f"{self.agent}: still {self.activity} ({self.activity_text[:80]}) 30 s after Esc"
            )

    async def send_one(self, index: int) -> Sent:
        wait = self.last_key + PERSON_TYPING + 0.1 - time.monotonic()
        await trio.sleep(max(0.0, wait))
        sent = Sent(index, self.activity)
        sent.sent = time.monotonic()
        receipt = await self.broker.send(self.agent, f"bench {index}: say hi", sender="bench")
        self.sent[receipt.delivery_id] = sent
        with trio.move_on_after(DELIVERY_SECONDS):
            while sent.ended is None:
                waiting = self.broker.agent(self.agent).waiting
                if waiting and waiting not in sent.waiting:
                    sent.waiting.append(waiting)
                await trio.sleep(0.01)
        if sent.ended is None:
            sent.outcome = f"no end within {DELIVERY_SECONDS:g} s"
        if self.generic and not await self.input_box_empty(3):
            sent.left_in_input = True  # typed, seen (echo), but not sent: clear it
            for _ in range(8):
                await self.keys(self.profile.typing.clear)
                if await self.input_box_empty(1):
                    break
        return sent

    async def messages(self, count: int, idle_wait: float) -> list[Sent]:
        out: list[Sent] = []
        for index in range(count):
            if out:
                await self.next_ready(out[-1], idle_wait)
            out.append(await self.send_one(index))
            last = out[-1]
            log(
                f"  {self.agent} message {index}: {last.outcome} {last.verification} "
                f"{(last.latency or 0) * 1000:.0f} ms (injected at {ms(last.injected)} ms; sent "
                f"while {last.activity}{'; left in the input box' if last.left_in_input else ''})"
            )
        return out


async def run_cli(
    cli: str, binary: Path, prefix: list[str], generic: bool, count: int, idle_wait: float
) -> dict[str, Any]:
    """Spawn ``cli`` (its own profile, or the generic one), bring it to its input box, send
    ``count`` messages; the figures."""
    own = Catalog().get(cli)
    worker_profile = Catalog().get("generic") if generic else own
    with tempfile.TemporaryDirectory(prefix=f"bench-{cli}-") as tmp:
        home, project = Path(tmp) / "home", Path(tmp) / "project"
        home.mkdir()
        project.mkdir()
        env = recorder.seed(cli, home, project)
        argv = pty_command([*prefix, *recorder.argv_of(cli, binary)], ROWS, COLS, worker_profile)
        async with open_broker(event_capacity=1 << 16) as broker:
            run = CliRun(broker, cli, own, generic)
            result: dict[str, Any] = {"profile": worker_profile.name}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run.watch)
                run.t0 = time.monotonic()
                await broker.spawn(
                    run.agent, argv, env=env, cwd=str(project), profile=worker_profile.name
                )
                if generic:
                    nursery.start_soon(run.poll_screen)
                nursery.start_soon(run.answer_dialogs)
                if not await run.until(lambda: run.first_idle is not None, START_SECONDS):
                    await run.screen()
                    raise RuntimeError(
                        f"{run.agent}: not idle within {START_SECONDS:g} s ({run.activity}: "
                        f"{run.activity_text[:100]}); changes {run.changes}, dialogs answered "
                        f"{run.dialogs}; the screen:\n{run.screen_text}"
                    )
                result["spawn_to_idle"] = run.first_idle
                result["first_attention"] = next(
                    (t for t, to, _ in run.changes if to == "attention"), None
                )
                sent = await run.messages(count, idle_wait)
                nursery.cancel_scope.cancel()
            result["activity_changes"] = run.changes
            result["dialogs"] = run.dialogs
            result["unanswered"] = run.unanswered
            result["silent_dialogs"] = run.silent_dialogs
            result["escapes"] = run.escapes
            run._set_activity("(end)", "", run.now())
            result["output_kb_s"] = {
                activity: size / 1024 / run.time_by_activity[activity]
                for activity, size in run.output_by_activity.items()
                if run.time_by_activity.get(activity, 0) > 1
            }
            result["messages"] = [{**asdict(s), "latency": s.latency, "sent": None} for s in sent]
            with trio.move_on_after(10):
                await broker.release(run.agent)
    return summarize(result)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    messages = result["messages"]
    done = [
        m["latency"] for m in messages if m["latency"] is not None and m["outcome"] == "verified"
    ]
    levels: dict[str, int] = {}
    for m in messages:
        level = m["verification"] or m["outcome"] or "none"
        levels[level] = levels.get(level, 0) + 1
    result["levels"] = levels
    result["p50"] = pct(done, 0.5) if done else None
    result["p99"] = pct(done, 0.99) if done else None
    injected = [m["injected"] for m in messages if m["injected"] is not None]
    result["injected_p50"] = pct(injected, 0.5) if injected else None
    result["sent_while"] = {
        a: sum(m["activity"] == a for m in messages) for a in {m["activity"] for m in messages}
    }
    result["left_in_input"] = sum(m["left_in_input"] for m in messages)
    return result


def installed_clis(names: list[str]) -> tuple[list[tuple[str, Path]], list[str]]:
    """The CLIs to run (name, binary) and the skipped ones, with why."""
    run, skipped = [], []
    node = shutil.which("node")
    for name in names:
        cli = next(c for c in agent_clis.CLIS if c.name == name)
        version = agent_clis.installed_version(cli, agent_clis.DEFAULT_DIR)
        if node is None:
            skipped.append(f"{name} (node is not on PATH)")
        elif version != cli.version:
            found = f"{version} is installed" if version else "not installed"
            skipped.append(
                f"{name} ({cli.package}@{cli.version} {found}; run "
                "`python3 tools/dev.py run python tools/agent_clis.py`)"
            )
        else:
            run.append((name, agent_clis.binary_of(cli, agent_clis.DEFAULT_DIR)))
    return run, skipped


# ---------------------------------------------------------------------- detection cost

#: A profile that knows the workload's screen: its input box, its busy signs, two dialogs.
SPINNER_PROFILE = Profile(
    name="spinner",
    summary="tools/spinner_tui.py",
    prompt=Prompt(pattern=r"^─{20,}\n> ?(?P<input>.*)$", empty=[r"^Type your message$"]),
    busy=[r"esc to interrupt", r"^[⠁-⣿] Working"],
    busy_title=[r"^[⠁-⣿]"],
    dialogs=[
        Dialog(name="trust", pattern=r"Do you trust the files in this folder\?", text="trust?"),
        Dialog(name="approval", pattern=r"(?i)allow (?:command|execution)\?", text="approve?"),
    ],
)
DETECT_PROFILES = ("generic", "claude", "codex", "gemini", "spinner")


def profile_named(name: str) -> Profile:
    return SPINNER_PROFILE if name == "spinner" else Catalog().get(name)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) / MB
    return out


async def detect_once(broker: Broker, name: str, seconds: float, tag: str) -> dict[str, Any]:
    profile = profile_named(name)
    argv = pty_command([sys.executable, str(TOOLS / "spinner_tui.py")], ROWS, COLS, profile)
    agent = f"spin-{name}-{tag}"
    await broker.spawn(agent, argv, profile=name)
    info = broker.supervisor.get(agent)
    assert info.hello is not None and info.pid is not None
    pid, program = info.pid, info.hello.program_pid
    await trio.sleep(WARMUP)
    counts = {"activity": 0, "output": 0}

    async def count() -> None:
        async for event in broker.events.subscribe(None):
            if getattr(event, "agent", None) == agent:
                counts["activity"] += isinstance(event, AgentActivity)
                counts["output"] += len(event.data) if isinstance(event, AgentOutput) else 0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(count)
        c0, p0, t0 = cpu_seconds(pid), cpu_seconds(program), time.monotonic()
        await trio.sleep(seconds)
        c1, p1, t1 = cpu_seconds(pid), cpu_seconds(program), time.monotonic()
        nursery.cancel_scope.cancel()
    mem = memory_mb(pid)
    activity, output = counts["activity"], counts["output"]
    activity_now = broker.agent(agent).activity
    with trio.move_on_after(10):
        await broker.release(agent)
    wall = t1 - t0
    return {
        "profile": name,
        "cpu_s": c1 - c0,
        "cpu_pct": 100 * (c1 - c0) / wall,
        "rss_mb": mem.get("VmRSS"),
        "hwm_mb": mem.get("VmHWM"),
        "program_cpu_s": p1 - p0,
        "activity_events": activity,
        "output_kb_s": output / 1024 / wall,
        "activity": activity_now,
    }


def replay(profile: Profile, seconds: float, profiler: cProfile.Profile | None = None) -> dict:
    """The workload's byte stream through the sans-IO core with virtual time (no I/O, no
    broker): CPU seconds, classify calls, and one classify timed alone on the final screen."""
    core = PtyCore(Options(argv=["spinner_tui"], rows=ROWS, cols=COLS, profile=profile))
    calls, inside = 0, 0.0
    inner = core.classify

    def counted(now: float) -> None:
        nonlocal calls, inside
        calls += 1
        t = time.process_time()
        inner(now)
        inside += time.process_time() - t

    core.classify = counted  # type: ignore[method-assign]
    core._handlers["classify"] = core._handlers["settle"] = counted
    stream = list(spinner_tui.frames(ROWS, COLS, 20.0, 2048, 1.0, seconds))
    gc.collect()
    start = time.process_time()
    if profiler:
        profiler.enable()
    core.start(1, 2, 0.0)
    for t, data in stream:
        while (due := core.next_deadline()) is not None and due <= t:
            core.timer(due)
        core.output(data, t)
        while core.backlogged:
            core.parse_slice(t)
        core.outbox.frames.clear()
        core.outbox.logs.clear()
    if profiler:
        profiler.disable()
    cpu = time.process_time() - start
    return {
        "profile": profile.name,
        "cpu_s": cpu,
        "classify_calls": calls,
        "classify_s": inside,
        "bytes": sum(len(d) for _, d in stream),
    }


def single_calls(profile: Profile, seconds: float) -> dict[str, Any]:
    """One classify, one screen.lines() and each pattern, timed alone over the workload's
    screen at the end of its stream."""
    screen = TerminalScreen(ROWS, COLS)
    for _, data in spinner_tui.frames(ROWS, COLS, 20.0, 2048, 1.0, seconds):
        screen.feed(data.decode())
    lines, row, title = screen.lines(), screen.cursor[0], screen.title

    def one() -> Any:
        return classify(
            profile, lines, row, title, quiet=False, reading=False, was_idle=True, settle=0.25
        )

    return {
        "classify_us": best_us(one),
        "lines_us": best_us(screen.lines),
        "activity": one().activity,
        "patterns": [
            (label, round(us, 1)) for label, us in pattern_costs(profile, "\n".join(lines), title)
        ],
    }


def best_us(call: Callable[[], object], n: int = 200, rounds: int = 5) -> float:
    """Microseconds one ``call`` takes: the best of ``rounds`` batches of ``n`` (the machine is
    shared: the best batch is the least disturbed)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e6


def pattern_costs(profile: Profile, text: str, title: str) -> list[tuple[str, float]]:
    """Microseconds one search of each of the profile's patterns takes over ``text`` (the
    prompt: a finditer to the last match, as input_line does), slowest first."""
    compiled = profile.compiled
    jobs: list[tuple[str, Callable[[], object]]] = []
    for dialog, pattern in compiled.dialogs:
        jobs.append((f"dialog {dialog.name}", lambda p=pattern: p.search(text)))
    for pattern in compiled.busy:
        jobs.append((f"busy {pattern.pattern[:30]!r}", lambda p=pattern: p.search(text)))
    for pattern in compiled.busy_title:
        jobs.append((f"busy_title {pattern.pattern[:20]!r}", lambda p=pattern: p.search(title)))
    if compiled.prompt is not None:
        jobs.append(("prompt (finditer)", lambda p=compiled.prompt: list(p.finditer(text))))
    out = [(label, best_us(job)) for label, job in jobs]
    return sorted(out, key=lambda item: -item[1])


def top_functions(profiler: cProfile.Profile, count: int = 14) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(count)
    text = out.getvalue()
    return text[text.find("   ncalls") :].rstrip()


async def detection(seconds: float, repeat: int, names: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    async with open_broker(event_capacity=1 << 16) as broker:
        for rep in range(repeat):
            order = names if rep % 2 == 0 else tuple(reversed(names))
            for name in order:
                figures = await detect_once(broker, name, seconds, str(rep))
                figures["run"] = rep + 1
                log(
                    f"  detection run {rep + 1} {name:8s} CPU {figures['cpu_s']:.2f} s "
                    f"RSS {figures['rss_mb']:.1f} MB, program CPU {figures['program_cpu_s']:.2f} s"
                )
                out.append(figures)
    return out


# ---------------------------------------------------------------------- printing


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def levels_text(levels: dict[str, int]) -> str:
    return ", ".join(f"{n} {level}" for level, n in sorted(levels.items(), key=lambda kv: -kv[1]))


def print_clis(results: dict[str, list[dict[str, Any]]], skipped: list[str], count: int) -> None:
    print(f"\nReal CLIs, 40x120, offline; {count} messages each; times in ms unless noted")
    for line in skipped:
        print(f"  skipped: {line}")
    header = (
        "| CLI | run | spawn to idle | dialogs (key presses) | send to end p50 / p99 | levels "
        "| generic: p50 / p99 | generic levels (left in box) | ratio p50 / p99 | sent while (own) |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for cli, runs in results.items():
        for i, pair in enumerate(runs, 1):
            own, base = pair["own"], pair.get("generic")
            dialogs = f"{len(own['dialogs'])} ({sum(d['presses'] for d in own['dialogs'])})"
            sent_while = ", ".join(f"{n} {a}" for a, n in sorted(own["sent_while"].items()))
            if own["escapes"]:
                sent_while += f"; {own['escapes']} Esc"
            row = [
                cli,
                str(i),
                f"{own['spawn_to_idle']:.2f} s",
                dialogs,
                f"{ms(own['p50'])} / {ms(own['p99'])}",
                levels_text(own["levels"]),
            ]
            if base:
                row += [
                    f"{ms(base['p50'])} / {ms(base['p99'])}",
                    f"{levels_text(base['levels'])} ({base['left_in_input']})",
                    f"{ratio(own['p50'], base['p50'])} / {ratio(own['p99'], base['p99'])}",
                ]
            else:
                row += ["-", "-", "-"]
            row.append(sent_while)
            print("| " + " | ".join(row) + " |")
    for cli, runs in results.items():
        if len(runs) > 1:
            own = [pair["own"] for pair in runs]
            base = [pair["generic"] for pair in runs if "generic" in pair]
            print(
                f"  {cli}, median (min-max) of {len(runs)} runs: spawn to idle "
                f"{spread([r['spawn_to_idle'] for r in own])} s; send to submitted p50 "
                f"{spread([r['p50'] * 1000 for r in own if r['p50']], '{:.0f}')} ms, p99 "
                f"{spread([r['p99'] * 1000 for r in own if r['p99']], '{:.0f}')} ms"
                + (
                    f"; generic echo p50 {spread([r['p50'] * 1000 for r in base if r['p50']], '{:.0f}')}"
                    f" ms, p99 {spread([r['p99'] * 1000 for r in base if r['p99']], '{:.0f}')} ms"
                    if base
                    else ""
                )
            )
    for cli, runs in results.items():
        for i, pair in enumerate(runs, 1):
            for mode, r in pair.items():
                waits = sorted({w[:70] for m in r["messages"] for w in m["waiting"]})
                bad = [m for m in r["messages"] if m["outcome"] != "verified"]
                if waits:
                    print(f"  {cli} run {i} {mode}: deliveries waited because: {'; '.join(waits)}")
                for m in bad:
                    print(
                        f"  {cli} run {i} {mode}: message {m['index']} {m['outcome']} {m['verification']}: {m['reason']}"
                    )
                if r["unanswered"]:
                    print(f"  {cli} run {i} {mode}: unanswered dialogs: {r['unanswered']}")
                if r["silent_dialogs"] and mode == "own":
                    print(
                        f"  {cli} run {i}: dialogs with no agent_activity event (one after "
                        f"another; found on the screen): {r['silent_dialogs']}"
                    )


def print_detection(
    live: list[dict[str, Any]], replays: list[dict[str, Any]], seconds: float
) -> None:
    print(
        f"\nActivity detection: tools/spinner_tui.py under the PTY worker, 40x120, 20 Hz, "
        f"2 KB burst/s; {seconds:g} s per run after {WARMUP:g} s of warm-up; median (min-max) "
        "over the runs"
    )
    print(
        "| profile | wrapper CPU s | CPU % of a core | CPU ratio to generic | VmRSS MB | VmHWM MB "
        "| RSS ratio | workload CPU s | activity events | output KB/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = [r for r in live if r["profile"] == "generic"]
    base_by_run = {r["run"]: r for r in base}
    names = list(dict.fromkeys(r["profile"] for r in live))
    for name in names:
        rows = [r for r in live if r["profile"] == name]
        ratios = [
            r["cpu_s"] / base_by_run[r["run"]]["cpu_s"]
            for r in rows
            if base_by_run[r["run"]]["cpu_s"]
        ]
        rss_ratios = [r["rss_mb"] / base_by_run[r["run"]]["rss_mb"] for r in rows]
        print(
            f"| {name} | {spread([r['cpu_s'] for r in rows])} | {spread([r['cpu_pct'] for r in rows], '{:.1f}')} "
            f"| {spread(ratios, '{:.2f}x')} | {spread([r['rss_mb'] for r in rows], '{:.1f}')} "
            f"| {spread([r['hwm_mb'] for r in rows], '{:.1f}')} | {spread(rss_ratios, '{:.3f}x')} "
            f"| {spread([r['program_cpu_s'] for r in rows])} | {spread([r['activity_events'] for r in rows], '{:.0f}')} "
            f"| {spread([r['output_kb_s'] for r in rows], '{:.1f}')} |"
        )
    print(
        f"\nThe same {seconds:g} s stream replayed into the sans-IO PtyCore (no I/O), per "
        f"profile, the least CPU of {REPLAYS} replays; single calls: the best of 5 batches"
    )
    print(
        "| profile | core CPU s | ratio to generic | classify calls | CPU in classify ms (share) "
        "| one screen.lines() µs | one classify µs (its patterns) | patterns, % of a core "
        "| ratio from the single calls |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    gen = next(r for r in replays if r["profile"] == "generic")
    for r in replays:
        extra = r["classify_calls"] * (r["classify_us"] - gen["classify_us"]) / 1e6  # seconds
        share = 100 * r["classify_calls"] * r["classify_us"] / 1e6 / seconds
        print(
            f"| {r['profile']} | {r['cpu_s']:.3f} | {ratio(r['cpu_s'], gen['cpu_s'])} "
            f"| {r['classify_calls']} | {r['classify_s'] * 1000:.0f} "
            f"({100 * r['classify_s'] / r['cpu_s']:.0f}%) | {r['lines_us']:.0f} "
            f"| {r['classify_us']:.0f} | {share:.2f}% "
            f"| {(gen['cpu_s'] + extra) / gen['cpu_s']:.3f}x |"
        )
    for r in replays:
        if r["patterns"]:
            slowest = ", ".join(f"{label} {us:.0f}" for label, us in r["patterns"][:4])
            print(f"  {r['profile']}: slowest patterns over the final screen (µs): {slowest}")


# ---------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"commit": git_head()}
    if not args.skip_clis:
        wanted = args.clis.split(",") if args.clis else [c.name for c in agent_clis.CLIS]
        clis, skipped = installed_clis(wanted)
        for line in skipped:
            log(f"skipped: {line}")
        prefix = recorder.no_network_prefix()
        if not prefix:
            log("unshare -rn does not work here: relying on the dead base URLs")
        for var in recorder.own_variables(os.environ):
            del os.environ[var]
        results: dict[str, list[dict[str, Any]]] = {}
        for cli, binary in clis:
            for rep in range(args.repeat):
                pair = {}
                modes = [False] if args.no_baseline else [False, True]
                for generic in modes if rep % 2 == 0 else reversed(modes):
                    log(f"{cli} run {rep + 1}: {'generic' if generic else 'own'} profile")
                    pair["generic" if generic else "own"] = await run_cli(
                        cli, binary, prefix, generic, args.messages, args.idle_wait
                    )
                results.setdefault(cli, []).append(
                    {
                        "own": pair["own"],
                        **({"generic": pair["generic"]} if "generic" in pair else {}),
                    }
                )
        out["clis"] = results
        out["skipped"] = skipped
        out["versions"] = {c.name: c.version for c in agent_clis.CLIS}
    if not args.skip_detection:
        log("activity detection")
        live = await detection(args.detect_seconds, args.repeat, DETECT_PROFILES)
        profiles = [profile_named(name) for name in DETECT_PROFILES]
        replay(profiles[0], args.detect_seconds)  # warm-up: the first replay is slower
        best: dict[str, dict[str, Any]] = {}
        for i in range(REPLAYS):  # each round in another order
            for profile in profiles[i % len(profiles) :] + profiles[: i % len(profiles)]:
                figures = replay(profile, args.detect_seconds)
                if profile.name not in best or figures["cpu_s"] < best[profile.name]["cpu_s"]:
                    best[profile.name] = figures
        replays = [{**best[p.name], **single_calls(p, args.detect_seconds)} for p in profiles]
        profilers: dict[str, cProfile.Profile] = {}
        if args.cprofile:
            for profile in profiles:
                profilers[profile.name] = cProfile.Profile()
                replay(profile, args.detect_seconds, profilers[profile.name])
        out["detection"] = {"live": live, "replay": replays}
        gen = statistics.median(r["cpu_s"] for r in live if r["profile"] == "generic")
        costs = {
            name: statistics.median(r["cpu_s"] for r in live if r["profile"] == name)
            for name in DETECT_PROFILES
        }
        worst = max(costs, key=costs.__getitem__)
        if not args.cprofile and costs[worst] > 1.2 * gen:
            profiler = cProfile.Profile()
            replay(profile_named(worst), args.detect_seconds, profiler)
            profilers[worst] = profiler
        out["cprofile"] = {name: top_functions(p) for name, p in profilers.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--clis", help="comma-separated: claude,codex,gemini (default: those installed)"
    )
    parser.add_argument("--messages", type=int, default=10, help="messages per CLI (default 10)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement")
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=5.0,
        help="seconds to wait for idle after a message before sending while busy (Claude Code) "
        "or pressing Esc (the others); default 5",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the generic-profile runs")
    parser.add_argument("--skip-clis", action="store_true", help="only the detection cost")
    parser.add_argument("--skip-detection", action="store_true", help="only the real CLIs")
    parser.add_argument("--detect-seconds", type=float, default=10.0, help="per detection run")
    parser.add_argument("--cprofile", action="store_true", help="profile each replay")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.clis and (unknown := set(args.clis.split(",")) - set(ANSWERS)):
        parser.error(f"unknown CLI(s): {', '.join(sorted(unknown))}")
    out = trio.run(main_async, args)
    if args.json:
        print(json.dumps(out, indent=1, default=str))
        return
    print(f"trio-relay {out['commit']}")
    if "clis" in out:
        print_clis(out["clis"], out["skipped"], args.messages)
    if "detection" in out:
        print_detection(out["detection"]["live"], out["detection"]["replay"], args.detect_seconds)
        for name, text in out["cprofile"].items():
            print(f"\ncProfile of the replay with the {name} profile (by own time):\n{text}")


if __name__ == "__main__":
    main()
