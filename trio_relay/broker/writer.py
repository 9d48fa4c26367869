"""Writing whole frames to a worker's stdin pipe, with a bounded queue.

The pipe is non-blocking: a frame is written at once when the pipe has room, otherwise it
waits in a batch that the writer task writes when the pipe drains. At most ``max_queued``
bytes wait, so a worker that does not read its stdin cannot grow the broker.
"""

from __future__ import annotations

import os

import trio

from trio_relay.errors import ChannelClosed, InputQueueFull

#: Bytes of frames that may wait for a worker that does not read its stdin; beyond this a
#: send fails with InputQueueFull instead of growing the broker.
DEFAULT_MAX_QUEUED = 8 * 1024 * 1024


class _Batch:
    __slots__ = ("frames", "done", "error")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.done = trio.Event()
        self.error: BaseException | None = None


class FrameWriter:
    """Writes whole frames to a pipe, in order, never interleaved or cut.

    :meth:`send` writes at once when the pipe has room and nothing is queued (the common
    case, no task switch); otherwise the frame joins a batch that :meth:`run` (a task of the
    worker's nursery, the only other writer of the pipe) writes when the pipe drains. (A
    system call per frame costs less than a batch's task switches: with 1,000 requests in
    flight, batching the frames of one scheduler tick made 48,000 requests a second where
    writing each at once makes 55,000, ``tools/bench_requests.py``.) At most
    ``max_queued`` bytes wait: a worker that does not read cannot grow the broker.
    """

    def __init__(self, fd: int, name: str = "worker", max_queued: int = DEFAULT_MAX_QUEUED) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._name = name
        self._open = _Batch()
        self._busy = False
        self._error: BaseException | None = None
        self._lot = trio.lowlevel.ParkingLot()
        self.max_queued = max_queued
        #: Bytes of frames not yet written (queued, or in the batch being written).
        self.queued = 0

    async def send(self, frame: bytes) -> None:
        """Write one encoded frame; return once it is written.

        Raises ChannelClosed if the pipe is broken or closed before the frame is written,
        InputQueueFull if ``max_queued`` bytes already wait. Cancellation: a cancel point.
        If cancelled while its frame waits for the pipe, the frame is dropped unless its
        writing has begun; then it is still written whole, never cut.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._error is not None:
            raise self._closed(self._error)
        begun = False
        if not self._busy and not self._open.frames:
            try:
                written = os.write(self._fd, frame)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                self._fail(exc)
                raise self._closed(exc) from exc
            if written == len(frame):
                return
            frame, begun = frame[written:], written > 0
            # Begun: it must be finished whole, so it is queued whatever the bound says.
        elif self.queued + len(frame) > self.max_queued:
            raise self._full(len(frame))
        batch = self._enqueue(frame)
        try:
            await batch.done.wait()
        except BaseException:
            if batch is self._open and not begun:  # it never reaches the worker
                self._dequeue(batch, frame)
            raise
        if batch.error is not None:
            raise self._closed(batch.error) from batch.error

    def send_nowait(self, frame: bytes) -> None:
        """Queue one frame without waiting for it to be written (best effort).

        Raises ChannelClosed if the writer is already closed or broken, InputQueueFull if
        ``max_queued`` bytes already wait.
        """
        if self._error is not None:
            raise self._closed(self._error)
        if self.queued + len(frame) > self.max_queued:
            raise self._full(len(frame))
        self._enqueue(frame)

    def _enqueue(self, frame: bytes) -> _Batch:
        batch = self._open
        batch.frames.append(frame)
        self.queued += len(frame)
        if len(batch.frames) == 1:  # the writer parks only on an empty batch
            self._lot.unpark_all()
        return batch

    def _dequeue(self, batch: _Batch, frame: bytes) -> None:
        for i, queued in enumerate(batch.frames):
            if queued is frame:
                del batch.frames[i]
                self.queued -= len(frame)
                return

    async def run(self) -> None:
        """Write queued batches until closed. Never raises on a broken pipe: the pipe's
        error is handed to the batch's senders (as ChannelClosed) instead."""
        try:
            while self._error is None:
                if not self._open.frames:
                    await self._lot.park()
                    continue
                batch, self._open = self._open, _Batch()
                data = b"".join(batch.frames)
                self._busy = True
                try:
                    await self._write_all(data)
                except (OSError, trio.ClosedResourceError) as exc:
                    batch.error = exc
                    self._fail(exc)
                finally:
                    self._busy = False
                    self.queued -= len(data)
                    batch.done.set()
        finally:
            self._fail(ChannelClosed("writer stopped"))

    async def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._fd)
            else:
                view = view[written:]

    def _closed(self, cause: BaseException) -> ChannelClosed:
        return ChannelClosed(
            f"cannot write to agent {self._name!r} ({cause}): it has exited or closed its "
            f"stdin; see `trio-relay ps` and `trio-relay logs {self._name}`"
        )

    def _full(self, size: int) -> InputQueueFull:
        return InputQueueFull(self._name, self.queued, self.max_queued)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        batch, self._open = self._open, _Batch()
        self.queued -= sum(len(frame) for frame in batch.frames)
        batch.error = self._error
        batch.done.set()
        self._lot.unpark_all()

    def close(self) -> None:
        """Fail what is queued with ChannelClosed and close the pipe. Idempotent."""
        self._fail(ChannelClosed("worker stdin closed"))
        if self._fd >= 0:
            trio.lowlevel.notify_closing(self._fd)
            os.close(self._fd)
            self._fd = -1
