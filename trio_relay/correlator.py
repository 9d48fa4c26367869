"""Request/response correlation: request_id -> the caller waiting for its answer.

One pending table for every request kind. Each request parks a one-slot memory channel in
the table and waits on it inside a cancel scope whose deadline is the request's timeout;
there is no sweep. The entry leaves the table in a ``finally``, whatever the outcome.

The correlator does no I/O: a worker is attached as a *route*, an async callable that writes
one encoded frame (and raises :class:`ChannelClosed` if it cannot).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import outcome
import trio

from .errors import ChannelClosed, RelayError, RequestTimeout, WorkerError, WorkerNotFound
from .protocol import ErrorInfo, encode_request

Route = Callable[[bytes], Awaitable[None]]


@dataclass(slots=True)
class _Pending:
    worker: str
    send: trio.MemorySendChannel[tuple[bool, outcome.Outcome[Any]]]


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
            entry = self._pending.pop(rid)
            entry.send.send_nowait((False, outcome.Error(make_error())))
        return len(doomed)

    def is_attached(self, worker: str) -> bool:
        return worker in self._routes

    # -- requests

    async def request(
        self, worker: str, kind: str, payload: dict[str, Any] | None = None, *, timeout: float
    ) -> Any:
        """Send a ``kind`` request to ``worker`` and return the answer's payload.

        Exactly one outcome per call:

        - the payload, if the worker answered in time;
        - :class:`WorkerNotFound` if no worker by that name is attached;
        - :class:`RequestTimeout` if ``timeout`` seconds passed (writing the frame included);
        - :class:`WorkerError` if the worker answered with an error;
        - :class:`WorkerExited` (whatever :meth:`detach` makes) if the worker went away
          while the request was in flight;
        - :class:`ChannelClosed` if the frame could not be written;
        - ``trio.Cancelled`` if the caller's own scope was cancelled.

        Raises ValueError for a kind that is not a request kind.
        """
        route = self._routes.get(worker)
        if route is None:
            await trio.lowlevel.checkpoint()
            raise WorkerNotFound(worker)
        request_id = format(next(self._ids), "x")
        frame = encode_request(kind, request_id, payload)
        send, receive = trio.open_memory_channel[tuple[bool, outcome.Outcome[Any]]](1)
        self._pending[request_id] = _Pending(worker, send)
        result: outcome.Outcome[Any] | None = None
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await route(frame)
                _, result = await receive.receive()
        except ChannelClosed:
            self._failed += 1
            raise
        except trio.Cancelled:
            self._cancelled += 1
            raise
        finally:
            self._pending.pop(request_id, None)
            try:
                is_answer, _ = receive.receive_nowait()
            except trio.WouldBlock:
                pass
            else:
                # An answer that reached the channel after its waiter stopped waiting.
                self._late_dropped += is_answer
        if result is None:
            self._timed_out += 1
            raise RequestTimeout(worker, kind, timeout)
        if isinstance(result, outcome.Error):
            self._failed += 1
        else:
            self._completed += 1
        return result.unwrap()

    def resolve(
        self, worker: str, request_id: str, payload: Any, error: ErrorInfo | None
    ) -> bool:
        """Hand a worker's answer to its waiting caller. An answer that nobody waits for (it
        timed out, was cancelled, is unknown, or came from another worker) is dropped and
        counted; returns whether it was delivered."""
        entry = self._pending.get(request_id)
        if entry is None or entry.worker != worker:
            self._late_dropped += 1
            return False
        del self._pending[request_id]
        if error is None:
            answer: outcome.Outcome[Any] = outcome.Value(payload)
        else:
            answer = outcome.Error(WorkerError(error.code, error.message))
        entry.send.send_nowait((True, answer))
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
