"""Request/response correlation: request_id -> the caller waiting for its answer.

One pending table for every request kind. Each request parks an entry in the table and
waits for its answer inside a cancel scope whose deadline is the request's timeout; there
is no sweep. The entry leaves the table in a ``finally``, whatever the outcome.

The correlator does no I/O: a worker is attached as a *route*, an async callable that writes
one encoded frame (and raises :class:`ChannelClosed` if it cannot).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from trio_relay.errors import ChannelClosed, RelayError, RequestTimeout, WorkerError, WorkerNotFound
from trio_relay.wire import ErrorInfo, encode_request

Route = Callable[[bytes], Awaitable[None]]


class _Failure:
    """An error outcome in a request's channel (payloads travel bare)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_NOTHING: Any = object()


class _Pending:
    """A request in flight: its answer (a payload or a _Failure) once it has one, and the
    task waiting for it while that task is parked. A one-slot channel without the channel:
    the hot path parks and wakes the task itself (``trio.lowlevel``), which is what a memory
    channel does underneath, minus its bookkeeping."""

    __slots__ = ("worker", "outcome", "task", "answered")

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.outcome: Any = _NOTHING  # the answer or failure, once given
        self.task: trio.lowlevel.Task | None = None  # the waiter, while parked
        self.answered = False  # the worker's answer (not a failure we made) was given

    def give(self, outcome: Any) -> None:
        """Hand ``outcome`` to the waiter (waking it if parked). Once per entry."""
        self.outcome = outcome
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task)

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED


@dataclass(frozen=True)
class CorrelatorStatistics:
    pending: int
    completed: int
    timed_out: int
    failed: int
    cancelled: int
    late_dropped: int


class Correlator:
    """Routes answers to the callers waiting for them. See :meth:`request`."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._completed = self._timed_out = self._failed = 0
        self._cancelled = self._late_dropped = 0

    # -- workers

    def attach(self, worker: str, route: Route) -> None:
        """Make ``worker`` reachable through ``route``."""
        self._routes[worker] = route

    def detach(self, worker: str, make_error: Callable[[], RelayError]) -> int:
        """Make ``worker`` unreachable and fail each of its in-flight requests now, each with
        its own ``make_error()``. Returns how many requests were failed."""
        self._routes.pop(worker, None)
        doomed = [rid for rid, entry in self._pending.items() if entry.worker == worker]
        for rid in doomed:
            self._pending.pop(rid).give(_Failure(make_error()))
        return len(doomed)

    def is_attached(self, worker: str) -> bool:
        return worker in self._routes

    # -- requests

    async def request(
        self,
        worker: str,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        timeout: float | None,
    ) -> Any:
        """Send a ``kind`` request to ``worker`` and return the answer's payload.

        Exactly one outcome per call:

        - the payload, if the worker answered in time;
        - :class:`WorkerNotFound` if no worker by that name is attached;
        - :class:`RequestTimeout` if ``timeout`` seconds passed (writing the frame included;
          None waits forever);
        - :class:`WorkerError` if the worker answered with an error;
        - :class:`WorkerExited` (whatever :meth:`detach` makes) if the worker went away
          while the request was in flight;
        - :class:`ChannelClosed` if the frame could not be written;
        - ``trio.Cancelled`` if the caller's own scope was cancelled.

        Raises ValueError for a kind that is not a request kind.
        """
        # One function on purpose: this is the hot path of every request (bench_requests),
        # and each helper call costs ~0.24 us here; the outcome bookkeeping reads best whole.
        route = self._routes.get(worker)
        if route is None:
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled:
                self._cancelled += 1
                raise
            raise WorkerNotFound(worker)
        request_id = format(next(self._ids), "x")
        frame = encode_request(kind, request_id, payload)
        entry = _Pending(worker)
        self._pending[request_id] = entry
        answer = _NOTHING
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        try:
            with trio.CancelScope(deadline=deadline):
                await route(frame)
                # What a one-slot channel's receive() does: a deadline already passed wins
                # over an answer already given; otherwise park until give() or the deadline.
                await trio.lowlevel.checkpoint_if_cancelled()
                if entry.outcome is _NOTHING:
                    entry.task = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(entry.abort)
                answer = entry.outcome
        except ChannelClosed:
            self._failed += 1
            raise
        except trio.Cancelled:
            self._cancelled += 1
            raise
        finally:
            if self._pending.pop(request_id, None) is None and answer is _NOTHING:
                if entry.answered:
                    # The answer was given after its waiter stopped waiting.
                    self._late_dropped += 1
        if answer is _NOTHING:
            self._timed_out += 1
            raise RequestTimeout(worker, kind, math.inf if timeout is None else timeout)
        if type(answer) is _Failure:
            self._failed += 1
            raise answer.error
        self._completed += 1
        return answer

    def resolve(self, worker: str, request_id: str, payload: Any, error: ErrorInfo | None) -> bool:
        """Hand a worker's answer to its waiting caller. An answer that nobody waits for (it
        timed out, was cancelled, is unknown, or came from another worker) is dropped and
        counted; returns whether it was delivered."""
        entry = self._pending.pop(request_id, None)
        if entry is None or entry.worker != worker:
            if entry is not None:
                self._pending[request_id] = entry  # not this worker's to answer
            self._late_dropped += 1
            return False
        entry.answered = True
        entry.give(payload if error is None else _Failure(WorkerError(error.code, error.message)))
        return True

    def pending_count(self, worker: str | None = None) -> int:
        if worker is None:
            return len(self._pending)
        return sum(1 for entry in self._pending.values() if entry.worker == worker)

    def statistics(self) -> CorrelatorStatistics:
        return CorrelatorStatistics(
            pending=len(self._pending),
            completed=self._completed,
            timed_out=self._timed_out,
            failed=self._failed,
            cancelled=self._cancelled,
            late_dropped=self._late_dropped,
        )
