"""The broker: composes the event log, the correlator and the supervisor into the operations
the control channel exposes. Open one with :func:`open_broker`."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from .correlator import Correlator, CorrelatorStatistics
from .events import EventLog
from .framing import DEFAULT_MAX_LINE
from .protocol import Resize, WriteInput, encode
from .supervisor import Agent, AgentSpec, RestartPolicy, Supervisor

DEFAULT_REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class AgentInfo:
    """A snapshot of one agent's state, for listing."""

    name: str
    state: str
    pid: int | None
    argv: list[str]
    restarts: int
    started_at: float | None
    last_exit: str | None
    last_reason: str
    pending_requests: int
    protocol_errors: int


class Broker:
    """The operations on agents. Every request/response operation goes through
    :meth:`request_worker`; fire-and-forget ones write one frame and return."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        event_capacity: int = 4096,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_line: int = DEFAULT_MAX_LINE,
        rng: random.Random | None = None,
    ) -> None:
        self.events = EventLog(event_capacity)
        self.correlator = Correlator()
        self.supervisor = Supervisor(
            nursery, self.correlator, self.events, max_line=max_line, rng=rng
        )
        self.request_timeout = request_timeout

    async def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        restart: RestartPolicy | None = None,
        **timing: float,
    ) -> AgentInfo:
        """Start a worker program as agent ``name``; return once it said hello.

        ``env`` is added to the broker's own environment, with ``TRIO_RELAY_AGENT`` set to
        the agent's name. ``timing`` may set ``hello_timeout``, ``grace`` and ``kill_grace``
        (seconds). Raises AgentExists, SpawnFailed, or ValueError for a bad name or command.
        """
        child_env = {**os.environ, **(env or {}), "TRIO_RELAY_AGENT": name}
        spec = AgentSpec(
            name, tuple(argv), cwd=cwd, env=child_env,
            restart=restart or RestartPolicy(), **timing,
        )
        return self._info(await self.supervisor.spawn(spec))

    async def release(self, name: str) -> AgentInfo:
        """Stop agent ``name`` (see :meth:`Supervisor.release`). Raises WorkerNotFound."""
        return self._info(await self.supervisor.release(name))

    async def request_worker(
        self,
        name: str,
        kind: str,
        payload: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a request to a worker and return its answer's payload.

        The one helper for every request/response operation; exactly one outcome per call:
        the payload, WorkerNotFound, RequestTimeout (``timeout`` defaults to the broker's
        ``request_timeout``), WorkerError, WorkerExited, ChannelClosed, or Cancelled.
        """
        return await self.correlator.request(
            name, kind, payload, timeout=self.request_timeout if timeout is None else timeout
        )

    async def write_input(self, name: str, data: str) -> None:
        """Type ``data`` into the agent's terminal; return once the frame is written.
        Raises WorkerNotFound or ChannelClosed."""
        await self.supervisor.running(name).writer.send(encode(WriteInput(data=data)))

    async def resize(self, name: str, rows: int, cols: int) -> None:
        """Resize the agent's terminal; return once the frame is written.
        Raises WorkerNotFound, ChannelClosed, or ValueError for a size out of range."""
        if not (1 <= rows <= 1000 and 1 <= cols <= 1000):
            raise ValueError(f"terminal size {rows}x{cols} out of range 1..1000")
        await self.supervisor.running(name).writer.send(encode(Resize(rows=rows, cols=cols)))

    def agent(self, name: str) -> AgentInfo:
        """Raises WorkerNotFound."""
        return self._info(self.supervisor.get(name))

    def agents(self) -> list[AgentInfo]:
        return [self._info(agent) for agent in self.supervisor.agents()]

    def logs(self, name: str) -> list[str]:
        """The last lines the agent's worker wrote to stderr. Raises WorkerNotFound."""
        return self.supervisor.get(name).stderr_lines

    def statistics(self) -> CorrelatorStatistics:
        return self.correlator.statistics()

    async def shutdown(self) -> None:
        """Release every agent (``agent_exited`` with ``intended: true``); return when all
        are reaped."""
        await self.supervisor.shutdown()

    def _info(self, agent: Agent) -> AgentInfo:
        return AgentInfo(
            name=agent.name,
            state=agent.state,
            pid=agent.pid,
            argv=list(agent.spec.argv),
            restarts=agent.restarts,
            started_at=agent.started_at,
            last_exit=agent.last_exit.describe() if agent.last_exit else None,
            last_reason=agent.last_reason,
            pending_requests=self.correlator.pending_count(agent.name),
            protocol_errors=agent.protocol_errors,
        )


@asynccontextmanager
async def open_broker(**options: Any) -> AsyncIterator[Broker]:
    """Run a broker for the duration of the block; its worker nursery lives inside.

    Leaving the block, however it is left, releases every agent under a shield, so no
    child outlives it. ``options`` are :class:`Broker`'s keyword arguments.
    """
    async with trio.open_nursery() as nursery:
        broker = Broker(nursery, **options)
        try:
            yield broker
        finally:
            with trio.CancelScope(shield=True):
                await broker.shutdown()
            nursery.cancel_scope.cancel()
