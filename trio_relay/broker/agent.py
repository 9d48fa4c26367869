"""An agent: what to run (:class:`AgentSpec`), the supervisor's record of it (:class:`Agent`)
and of its current run (:class:`Run`).

An agent's state changes only in :meth:`Agent.change_state`, which also emits the
lifecycle events that announce it, so a listener always finds the agent in the state its
event reports. Its activity (what its worker reads off the screen: starting, attention,
idle, busy; exited once a run ended) changes in :meth:`Agent.set_activity`, each change an
``agent_activity`` event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import trio

from trio_relay.broker.process import ExitStatus, WorkerProcess
from trio_relay.broker.restart import RestartPolicy, RestartTracker
from trio_relay.broker.screens import LastScreens
from trio_relay.wire import AgentActivity, Event, Exited, WorkerHello


@dataclass(frozen=True)
class AgentSpec:
    """What to run as an agent. ``env`` is the child's whole environment (None: inherit)."""

    name: str
    argv: Sequence[str]
    cwd: str | None = None
    env: Mapping[str, str] | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    hello_timeout: float = 10.0
    grace: float = 2.0
    kill_grace: float = 2.0
    #: The name of the agent's profile (None: it has none, e.g. a native worker).
    profile: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.isprintable() or len(self.name) > 128:
            raise ValueError(f"bad agent name {self.name!r}")
        if not self.argv:
            raise ValueError("an agent needs a command")


AgentState = Literal["starting", "running", "restarting", "exited", "released", "gave_up", "failed"]
#: States in which an agent runs or will run again.
LIVE_STATES = frozenset({"starting", "running", "restarting"})


class Agent:
    """The supervisor's record of one agent, kept a while after it ends (for listing).

    ``emit`` is the event log's: :meth:`change_state` announces through it.
    """

    def __init__(
        self, spec: AgentSpec, tracker: RestartTracker, emit: Callable[[Event], object]
    ) -> None:
        self.spec = spec
        self.tracker = tracker
        self._emit = emit
        self.state: AgentState = "starting"
        self.proc: WorkerProcess | None = None
        self.hello: WorkerHello | None = None
        self.restarts = 0
        self.last_exit: ExitStatus | None = None
        self.last_reason = ""
        self.started_at: float | None = None  # wall clock of the current run's hello
        self.last_activity: float | None = None  # wall clock of the worker's last frame
        self.protocol_errors = 0
        self.stop_requested = False
        self.stop_reason = ""
        self.next_delay: float | None = None  # the restart delay decided when a run ended
        self.done = trio.Event()
        self.backoff_scope: trio.CancelScope | None = None
        self.activity = "starting"
        self.activity_text = "not started yet"
        self.activity_since = time.time()
        #: Why deliveries handed to the worker wait there (None: they are typed as they come).
        self.waiting: str | None = None
        #: The current run's last snapshots (a new run starts with none).
        self.screens = LastScreens()

    def change_state(self, state: AgentState, *events: Event, reason: str | None = None) -> None:
        """Put the agent in ``state`` (with ``reason`` as its ``last_reason``, if given),
        then emit ``events`` in order. The one place either happens. Never raises (the
        event log logs a failing listener)."""
        self.state = state
        if reason is not None:
            self.last_reason = reason
        for event in events:
            self._emit(event)
        if state == "running":
            self.set_activity("starting", "spawned: nothing drawn yet")
        elif state != "starting":
            self.set_activity("exited", self.last_reason)

    def set_activity(self, activity: str, text: str, waiting: str | None = None) -> None:
        """Record what the agent is doing, and why deliveries wait; a change of activity,
        or of the dialog it waits in (attention, then another question), is emitted as
        ``agent_activity``. Never raises."""
        self.waiting = waiting
        if activity == self.activity and (activity != "attention" or text == self.activity_text):
            return
        event = AgentActivity(agent=self.name, from_=self.activity, to=activity, text=text)
        self.activity, self.activity_text, self.activity_since = activity, text, time.time()
        self._emit(event)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def active(self) -> bool:
        """Its task is alive (the name is taken), even if its last run has ended."""
        return not self.done.is_set()

    @property
    def live(self) -> bool:
        """It runs, or will run again (its restart policy brings it back)."""
        return self.state in LIVE_STATES

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.state == "running" else None

    @property
    def stderr_lines(self) -> list[str]:
        return self.proc.stderr_ring.lines() if self.proc is not None else []

    def request_stop(self, reason: str) -> None:
        self.stop_requested = True
        self.stop_reason = self.stop_reason or reason


@dataclass
class Run:
    """One run of an agent's child: what the frame reader learned, and how it ended."""

    attempt: int = 0
    began: float = 0.0
    hello: WorkerHello | None = None
    failure: str | None = None
    eof: bool = False
    attached: bool = False
    reported_exit: Exited | None = None
    note: str = ""
    #: Whether the broker had asked for the exit when the death was seen (None: not yet).
    intended: bool | None = None
    #: Its one terminal event (agent_exited or spawn_failed) was emitted.
    ended: bool = False
    #: Cancelled from outside (a broker shutdown, or a spawn whose caller gave up).
    cancelled: bool = False
    #: The spawn stopped waiting for the hello (released or cancelled; a timeout sets
    #: ``failure``): a hello from now on is too late.
    gave_up: bool = False
    #: The spawn's caller was told it started (``task_status.started``).
    reported: bool = False
