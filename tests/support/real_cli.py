"""Running a real agent CLI (Claude Code, Codex, Gemini CLI) under a broker, for the tests.

:func:`skip_unless_installed` skips a test, naming what is missing and the command that
installs it, unless node and the CLI's pinned version (``tools/agent_clis.py``) are there.
:func:`run_cli` spawns one CLI under the PTY worker with its built-in profile (the argv the
control channel's ``spawn`` builds, :func:`~trio_relay.control.operations.pty_command`), in a
fresh HOME and project directory seeded as ``tools/record_agent_screens.py`` does (dummy
keys, base URLs at a closed local port), without network where ``unshare -rn`` works; it
yields a :class:`CliSession`, which waits on events and screen conditions, each with a
deadline, and writes keys as a person would.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_relay import Broker, open_broker
from trio_relay.control.auth import Principal
from trio_relay.control.operations import Operations, pty_command
from trio_relay.control.server import ControlServer
from trio_relay.linux.procfs import environ, pids, session_members
from trio_relay.profiles.catalog import Catalog
from trio_relay.wire import AgentActivity, AgentSummary, DeliveryRecord, Event, SpawnOp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import agent_clis  # noqa: E402 - tools/ is not a package
import record_agent_screens  # noqa: E402

ROWS, COLS = 40, 120
INSTALL = "python3 tools/dev.py run python tools/agent_clis.py"
#: Arrows as SS3 (application cursor keys), as the CLIs read them.
ENTER, DOWN, UP = "\r", "\x1bOB", "\x1bOA"


def skip_unless_installed(name: str) -> Path:
    """The binary of CLI ``name`` at its pinned version; skips the test (saying what is
    missing and how to install it) if node, npm or the CLI is not there."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not on PATH: the real-CLI tests need Node.js 20+ with "
            f"npm, then `{INSTALL}`"
        )
    cli = next(c for c in agent_clis.CLIS if c.name == name)
    cache = agent_clis.DEFAULT_DIR
    version = agent_clis.installed_version(cli, cache)
    if version != cli.version:
        found = f"version {version} is" if version else "nothing is"
        pytest.skip(
            f"{cli.package}@{cli.version} is not installed ({found} in {cache}): run `{INSTALL}`"
        )
    return agent_clis.binary_of(cli, cache)


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the tester's own agent-CLI settings (keys, base URLs, config dirs, ``CI``) from
    the environment the broker passes on."""
    for variable in record_agent_screens.own_variables(os.environ):
        monkeypatch.delenv(variable)


@dataclass
class CliSession:
    """One CLI, agent ``name`` of ``broker``, spawned at ``t0`` (monotonic)."""

    broker: Broker
    name: str
    project: Path
    t0: float
    spawned_at: float  #: wall clock (events' ``time``)
    since: int  #: the event seq before the spawn
    times: dict[str, float] = field(default_factory=dict)
    last_text: str = ""
    #: The control operations it was spawned through (``run_cli(mcp=True)``), else None.
    operations: Operations | None = None

    # ------------------------------------------------------------ what it shows

    def agent(self) -> AgentSummary:
        return self.broker.agent(self.name)

    async def screen(self) -> str:
        snap = await self.broker.request_worker(self.name, "snapshot", {}, timeout=5)
        self.last_text = snap["text"]
        return self.last_text

    async def wait_screen(self, pattern: str, timeout: float = 20, what: str = "") -> str:
        """The screen once ``pattern`` (a regular expression, re.M) matches it; fails the
        test with the last screen after ``timeout`` seconds."""
        regex = re.compile(pattern, re.M)
        with trio.move_on_after(timeout):
            while not regex.search(await self.screen()):
                await trio.sleep(0.05)
            return self.last_text
        raise AssertionError(
            f"{self.name}: {what or pattern!r} not on screen within {timeout:g} s; "
            f"the screen:\n{self.last_text}"
        )

    async def wait_event(
        self,
        predicate: Callable[[Event], bool],
        timeout: float,
        what: str,
        since: int | None = None,
    ) -> Any:
        """The first event of this agent after ``since`` (default: its spawn) that
        ``predicate`` takes; fails naming ``what`` after ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            return await self.broker.events.wait_for(
                lambda e: getattr(e, "agent", None) == self.name and predicate(e),
                since=self.since if since is None else since,
            )
        screen = await self.screen()
        raise AssertionError(
            f"{self.name}: no {what} within {timeout:g} s (activity "
            f"{self.agent().activity}: {self.agent().activity_text}); the screen:\n{screen}"
        )

    async def activity(
        self, to: str, timeout: float = 20, text: str = "", since: int | None = None
    ) -> AgentActivity:
        """The first ``agent_activity`` event to ``to`` (whose text matches ``text``)."""
        regex = re.compile(text)
        return await self.wait_event(
            lambda e: isinstance(e, AgentActivity) and e.to == to and bool(regex.search(e.text)),
            timeout,
            f"activity {to!r} matching {text!r}",
            since,
        )

    async def waiting(self, pattern: str, timeout: float = 10) -> str:
        """The agent's ``waiting`` (why its deliveries wait) once it matches ``pattern``."""
        regex = re.compile(pattern)
        with trio.move_on_after(timeout):
            while not regex.search(self.agent().waiting or ""):
                await trio.sleep(0.02)
            return self.agent().waiting or ""
        raise AssertionError(
            f"{self.name}: waiting is {self.agent().waiting!r}, not {pattern!r}, after "
            f"{timeout:g} s"
        )

    def mark(self, what: str) -> float:
        """Note the time since spawn of ``what`` (the first time)."""
        return self.times.setdefault(what, time.monotonic() - self.t0)

    # ------------------------------------------------------------ what a person does

    async def keys(self, data: str) -> None:
        await self.broker.write_input(self.name, data)

    async def answer(self, keys: str, until: str, still: str, timeout: float = 20) -> str:
        """Answer a dialog: write ``keys``, then wait until ``until`` (a regular expression,
        re.M) matches the screen. Whenever the dialog (``still``) is on screen and ``until``
        has not come 2 s after the keys, write them again: a CLI may draw a dialog a moment
        before it reads keys and drop the keys typed meanwhile, or draw it twice (Gemini CLI
        relaunches itself after its trust dialog and shows its auth choice again). The
        screen."""
        done, asked = re.compile(until, re.M), re.compile(still, re.M)
        with trio.move_on_after(timeout):
            while True:
                await self.keys(keys)
                with trio.move_on_after(2):
                    while not done.search(await self.screen()):
                        await trio.sleep(0.05)
                    return self.last_text
                while not asked.search(self.last_text):  # elsewhere: until it comes back
                    if done.search(self.last_text):
                        return self.last_text
                    await trio.sleep(0.05)
                    await self.screen()
        raise AssertionError(
            f"{self.name}: {until!r} not on screen within {timeout:g} s of {keys!r}; the "
            f"screen:\n{self.last_text}"
        )

    async def send(self, body: str) -> tuple[str, float]:
        """Queue ``body`` for the agent; its delivery id and when it was sent."""
        receipt = await self.broker.send(self.name, body, sender="tester")
        return receipt.delivery_id, time.monotonic()

    async def delivered(self, delivery_id: str, timeout: float = 30) -> DeliveryRecord:
        """The delivery once it ended (verified, unverified, failed...)."""
        return await self.broker.wait_delivery(delivery_id, timeout=timeout)


@asynccontextmanager
async def run_cli(
    name: str, binary: Path, *, mcp: bool = False, **broker_options: Any
) -> AsyncIterator[CliSession]:
    """Spawn CLI ``name`` (``binary``) as agent ``name`` with its profile, in a fresh HOME and
    project directory; release it at the end and check that nothing of its session is left.
    With ``mcp`` it is spawned as ``trio-relay spawn --mcp`` does, through a control server
    (on a Unix socket in the temporary directory) that gives agents its address."""
    prefix = record_agent_screens.no_network_prefix()
    profile = Catalog().get(name)
    with tempfile.TemporaryDirectory(prefix=f"relay-{name}-") as tmp:
        home, project = Path(tmp) / "home", Path(tmp) / "project"
        home.mkdir()
        project.mkdir()
        env = record_agent_screens.seed(name, home, project)
        command = [*prefix, *record_agent_screens.argv_of(name, binary)]
        async with (
            open_broker(event_capacity=1 << 16, **broker_options) as broker,
            trio.open_nursery() as nursery,
        ):
            since = broker.events.last_seq
            t0, spawned_at = time.monotonic(), time.time()
            operations = None
            if mcp:
                server = await serve_control(broker, Path(tmp), nursery)
                operations = server.operations
                op = SpawnOp(
                    id=1, name=name, command=command, env=env, cwd=str(project), rows=ROWS,
                    cols=COLS, profile=name, mcp=True,
                )  # fmt: skip
                info = await server.operations.perform(op, Principal())
            else:
                argv = pty_command(command, ROWS, COLS, profile)
                info = await broker.spawn(name, argv, env=env, cwd=str(project), profile=name)
            assert info.profile == name
            hello = broker.supervisor.get(name).hello
            assert hello is not None and hello.program_pid
            yield CliSession(broker, name, project, t0, spawned_at, since, operations=operations)
            nursery.cancel_scope.cancel()
        # The broker released it: nothing of the program's session is left, nor anything it
        # started elsewhere (Codex's app-server daemon leaves the session).
        with trio.fail_after(10):
            while left := session_members(hello.program_pid) + processes_with_home(home):
                await trio.sleep(0.05)
        assert not left


async def serve_control(broker: Broker, tmp: Path, nursery: trio.Nursery) -> ControlServer:
    """A control server for ``broker`` on a Unix socket in ``tmp`` (its overlays there too),
    whose address and scoped tokens the agents get, as the daemon does."""
    server = ControlServer(broker, "owner-token", overlays=tmp / "mcp")
    socket = tmp / "control.sock"
    await nursery.start(functools.partial(server.serve, "127.0.0.1", 0, socket_path=socket))
    broker.agent_environment = lambda agent: {
        "TRIO_RELAY_URL": f"ws+unix://{socket}",
        "TRIO_RELAY_TOKEN": server.agent_token(agent),
    }
    return server


def processes_with_home(home: Path) -> list[int]:
    """The processes whose environment has ``HOME=home``."""
    wanted = f"HOME={home}".encode()
    return [pid for pid in pids() if wanted in (environ(pid) or [])]
