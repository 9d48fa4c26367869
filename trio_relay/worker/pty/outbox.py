"""What the PTY worker's sans-IO core asks its loop to do: frames to send, log lines to
write, signals for the program's session and terminal sizes to set. Appending never blocks
and does no I/O; the loop takes everything after each call into the core."""

from __future__ import annotations

from typing import Any

from trio_relay.wire import ErrorInfo, Response, encode


class Outbox:
    """Everything the core produced since the loop last emptied it."""

    __slots__ = ("frames", "logs", "program")

    def __init__(self) -> None:
        self.frames: list[bytes] = []  # encoded frames for stdout, in order
        self.logs: list[str] = []  # lines for stderr
        # for the program, in order: an int is a signal for its session, a pair a new size
        self.program: list[int | tuple[int, int]] = []

    def send(self, frame: Any) -> None:
        self.frames.append(encode(frame))

    def answer(self, rid: str, payload: Any = None, error: ErrorInfo | None = None) -> None:
        self.send(Response(request_id=rid, payload=payload, error=error))

    def log(self, message: str) -> None:
        self.logs.append(message)
