"""The delivery engine's view of the supervisor: whether an agent takes deliveries, how
to hand it one, and why it never will again."""

from __future__ import annotations

from trio_relay.broker.agent import Agent
from trio_relay.broker.supervisor import Supervisor
from trio_relay.errors import WorkerNotFound


class SupervisorTransport:
    """Answers the delivery engine's questions about agents from the supervisor's records."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def active(self, agent: str) -> bool:
        """Whether ``agent`` runs or will run again."""
        record = self._record(agent)
        return record is not None and record.live

    def deliver(self, agent: str, frame: bytes) -> None:
        """Queue ``frame`` for the running agent's worker. Raises WorkerNotFound,
        ChannelClosed, InputQueueFull."""
        self._supervisor.running(agent).writer.send_nowait(frame)

    def fate(self, agent: str) -> str | None:
        """Why ``agent`` will not run again, or None if it may (it runs, will restart, or
        was released on purpose)."""
        record = self._record(agent)
        if record is None:
            return "it is no longer supervised"
        if record.live or record.state == "released":
            return None
        if record.state == "gave_up":
            return f"it gave up after {record.restarts} restarts"
        if record.state == "failed":
            return f"it could not be restarted ({record.last_reason})"
        return f"its restart policy is {record.spec.restart.mode!r}"

    def waiting(self, agent: str) -> str | None:
        """Why the deliveries handed to ``agent``'s worker wait there, as it reported (the
        agent is busy, starting, waits for a person, or holds a draft), or None."""
        record = self._record(agent)
        return record.waiting if record is not None and record.state == "running" else None

    def gave_up(self, agent: str) -> bool:
        """Whether ``agent`` gave up restarting."""
        record = self._record(agent)
        return record is not None and record.state == "gave_up"

    def _record(self, agent: str) -> Agent | None:
        try:
            return self._supervisor.get(agent)
        except WorkerNotFound:
            return None
