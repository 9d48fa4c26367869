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

import trio

from trio_relay.errors import ChannelClosed, RelayError, RequestTimeout, WorkerError, WorkerNotFound
from trio_relay.wire import ErrorInfo, encode_request

Route = Callable[[bytes], Awaitable[None]]
Channel = tuple[trio.MemorySendChannel[Any], trio.MemoryReceiveChannel[Any]]

#: How many idle one-slot channels are kept for reuse (creating one costs ~10 us).
CHANNEL_POOL_SIZE = 1024


class _Failure:
    """An error outcome in a request's channel (payloads travel bare)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_NOTHING: Any = object()


class _Pending:
    __slots__ = ("worker", "send", "answered")

    def __init__(self, worker: str, send: trio.MemorySendChannel[Any]) -> None:
        self.worker = worker
        self.send = send
        self.answered = False  # the worker's answer (not a failure we made) was sent


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
        self._pool: list[Channel] = []
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
            self._pending.pop(rid).send.send_nowait(_Failure(make_error()))
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
        channel = self._pool.pop() if self._pool else trio.open_memory_channel(1)
        entry = _Pending(worker, channel[0])
        self._pending[request_id] = entry
        answer = _NOTHING
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        try:
            with trio.CancelScope(deadline=deadline):
                await route(frame)
                answer = await channel[1].receive()
        except ChannelClosed:
            self._failed += 1
            raise
        except trio.Cancelled:
            self._cancelled += 1
            raise
        finally:
            if self._pending.pop(request_id, None) is not None or answer is not _NOTHING:
                # Nothing is left in the channel: it can serve another request.
                if len(self._pool) < CHANNEL_POOL_SIZE:
                    self._pool.append(channel)
            elif entry.answered:
                # The answer reached the channel after its waiter stopped waiting.
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
        if error is None:
            entry.send.send_nowait(payload)
        else:
            entry.send.send_nowait(_Failure(WorkerError(error.code, error.message)))
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
