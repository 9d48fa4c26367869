"""Reading a worker's frames and routing them: answers to the correlator, its hello to the
supervisor, everything else to the event log (or the delivery engine's hook)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import aclosing

from trio_relay.broker.agent import Agent, Run
from trio_relay.broker.correlator import Correlator
from trio_relay.broker.events import EventLog
from trio_relay.broker.lines import read_lines
from trio_relay.broker.process import WorkerProcess
from trio_relay.errors import ProtocolError
from trio_relay.wire import (
    ActivityChanged,
    AgentIdle,
    AgentOutput,
    AgentReady,
    DeliveryFailed,
    DeliveryFailedEvent,
    DeliveryInjected,
    DeliveryInjectedEvent,
    DeliveryUnverifiedEvent,
    DeliveryVerified,
    DeliveryVerifiedEvent,
    Exited,
    Idle,
    Output,
    Ready,
    Response,
    WorkerHello,
    WorkerProtocolError,
    decode_worker_frame,
)
from trio_relay.wire.lines import OversizedLine
from trio_relay.wire.vocabulary import VERIFIED_LEVELS

log = logging.getLogger(__name__)

DeliveryReport = DeliveryInjected | DeliveryVerified | DeliveryFailed
_DELIVERY_REPORTS = (DeliveryInjected, DeliveryVerified, DeliveryFailed)


def protocol_error(events: EventLog, agent: Agent, error: str, line: bytes) -> None:
    """Count, log and announce (``worker_protocol_error``) a frame the worker got wrong."""
    agent.protocol_errors += 1
    excerpt = line[:200].decode("utf-8", "replace")
    log.warning("%s: protocol error: %s: %r", agent.name, error, excerpt)
    events.emit(WorkerProtocolError(agent=agent.name, error=error, excerpt=excerpt))


class FrameReader:
    """Routes every frame one run of a worker writes, until its stdout ends.

    ``on_hello(hello)`` is called on the worker's first hello, before the next frame is
    read (so ``agent_spawned`` precedes every event of the run); ``reports()`` gives the
    hook that takes the worker's delivery reports (``hook(agent, frame)``) instead of the
    event log, or None; it is asked at each report, so a hook set later applies at once. Nothing is
    routed after the run's terminal event but answers to requests.
    """

    def __init__(
        self,
        agent: Agent,
        proc: WorkerProcess,
        run: Run,
        *,
        correlator: Correlator,
        events: EventLog,
        max_line: int,
        on_hello: Callable[[WorkerHello], None],
        reports: Callable[[], Callable[[str, DeliveryReport], None] | None],
    ) -> None:
        self._agent, self._proc, self._run = agent, proc, run
        self._correlator, self._events = correlator, events
        self._max_line = max_line
        self._on_hello = on_hello
        self._reports = reports

    async def read(self) -> None:
        """Read until end of file, then set ``run.eof`` and poke the process's waiters.
        Cancellation: a cancel point at each read. Raises what the stream raises, and any
        fault of the routing (the supervisor ends the agent on it)."""
        agent, run = self._agent, self._run
        name = agent.name
        resolve = self._correlator.resolve
        async with aclosing(read_lines(self._proc.stdout, self._max_line)) as batches:
            async for batch in batches:
                agent.last_activity = time.time()
                for line in batch:
                    if type(line) is OversizedLine:
                        self._error(
                            f"line of {line.length} bytes exceeds the {self._max_line} byte"
                            " limit; discarded",
                            line.head,
                        )
                        continue
                    try:
                        frame = decode_worker_frame(line)  # type: ignore[arg-type]
                    except ProtocolError as exc:
                        self._error(str(exc), line)  # type: ignore[arg-type]
                        continue
                    if type(frame) is Response:
                        resolve(name, frame.request_id, frame.payload, frame.error)
                    elif run.hello is None:
                        if type(frame) is WorkerHello:
                            self._on_hello(frame)
                        else:
                            self._error(f"{type(frame).__name__} before hello", line)
                    elif run.attached and not run.ended:  # nothing follows agent_exited
                        self._route(frame)
        run.eof = True
        self._proc.poke()

    def _route(self, frame: object) -> None:
        name = self._agent.name
        emit = self._events.emit
        if type(frame) is Output:
            self._agent.screens.saw_output(frame)
            emit(AgentOutput(agent=name, offset=frame.offset, data=frame.data))
        elif type(frame) is Ready:
            emit(AgentReady(agent=name))
            hello = self._run.hello
            if hello is not None and hello.worker != "pty":  # it reads no screen: ready is idle
                self._agent.set_activity("idle", f"its {hello.worker} worker said it is ready")
        elif type(frame) is Idle:
            emit(AgentIdle(agent=name))
        elif type(frame) is ActivityChanged:
            self._agent.set_activity(frame.activity, frame.text, frame.waiting)
        elif type(frame) is Exited:
            if frame.code is None and frame.signal is None:
                self._error("an exited frame with neither code nor signal", b"")
            else:
                self._run.reported_exit = frame
        elif type(frame) in _DELIVERY_REPORTS and (hook := self._reports()) is not None:
            hook(name, frame)  # type: ignore[arg-type]
        elif type(frame) is DeliveryInjected:
            emit(DeliveryInjectedEvent(agent=name, delivery_id=frame.delivery_id))
        elif type(frame) is DeliveryVerified:
            verdict = (
                DeliveryVerifiedEvent
                if frame.verification in VERIFIED_LEVELS
                else DeliveryUnverifiedEvent
            )
            emit(
                verdict(
                    agent=name,
                    delivery_id=frame.delivery_id,
                    verification=frame.verification,
                    reason=frame.reason,
                )
            )
        elif type(frame) is DeliveryFailed:
            emit(
                DeliveryFailedEvent(agent=name, delivery_id=frame.delivery_id, reason=frame.reason)
            )
        elif type(frame) is WorkerHello:
            self._error("a second hello", b"")
        else:  # pragma: no cover - every WorkerFrame kind is handled above
            raise AssertionError(f"unhandled frame {frame!r}")

    def _error(self, error: str, line: bytes) -> None:
        protocol_error(self._events, self._agent, error, line)
