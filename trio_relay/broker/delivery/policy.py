"""What the delivery engine is told and what it answers: its settings, the receipt of a send,
the transport it hands frames to, and the checks on a send's arguments. Pure; no Trio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class DeliveryPolicy:
    """Queue and retry settings (seconds). A delivery handed to a worker that reports no
    progress for ``ack_timeout`` (times ``backoff`` per attempt, at most ``max_ack_timeout``)
    is sent again; after ``max_attempts`` sends, or ``deadline`` after it was queued, it
    becomes a dead letter. At most ``window`` are handed to a worker at once; at most
    ``cap`` wait (queued) per agent, the oldest evicted beyond that."""

    cap: int = 256
    window: int = 8
    ack_timeout: float = 30.0
    backoff: float = 2.0
    max_ack_timeout: float = 300.0
    max_attempts: int = 5
    deadline: float = 3600.0
    max_body: int = 256 * 1024
    store_retry: float = 1.0

    def __post_init__(self) -> None:
        if self.cap < 1 or self.window < 1 or self.max_attempts < 1:
            raise ValueError("cap, window and max_attempts must be at least 1")
        if min(self.ack_timeout, self.max_ack_timeout, self.deadline, self.store_retry) <= 0:
            raise ValueError("timeouts must be positive")
        if self.backoff < 1:
            raise ValueError("backoff must be at least 1")

    def ack_wait(self, attempts: int) -> float:
        """How long attempt number ``attempts`` (1-based) waits for progress."""
        return min(self.max_ack_timeout, self.ack_timeout * self.backoff ** max(attempts - 1, 0))


@dataclass(frozen=True)
class Receipt:
    """The answer to a send: committed as ``state`` (``queued``); ``evicted`` are the ids
    of older deliveries dropped to make room."""

    delivery_id: str
    agent: str
    state: str
    evicted: tuple[str, ...] = ()


class Transport(Protocol):
    """What the engine needs from the supervisor."""

    def active(self, agent: str) -> bool:
        """Running, starting or restarting: a delivery for it will be handed over."""

    def deliver(self, agent: str, frame: bytes) -> None:
        """Queue one frame to the agent's worker. Raises WorkerNotFound, ChannelClosed
        or InputQueueFull."""

    def fate(self, agent: str) -> str | None:
        """None if the agent is running or coming back (or was released); otherwise why it
        will not come back."""

    def waiting(self, agent: str) -> str | None:
        """Why the agent's worker holds the deliveries it was handed (the agent is not
        ready for a message), or None: their wait for progress runs."""

    def gave_up(self, agent: str) -> bool:
        """Whether the agent gave up restarting (an ``agent_gave_up`` event says so)."""


def check_send(sender: str, body: str, thread: str | None, max_body: int) -> None:
    """Raises ValueError naming the first argument of a send that is out of bounds."""
    if not isinstance(sender, str) or not sender or len(sender) > 128 or not sender.isprintable():
        raise ValueError(f"bad sender {sender!r}: 1 to 128 printable characters")
    if not isinstance(body, str):
        raise ValueError("a delivery's body must be a string")
    if len(body.encode("utf-8", "surrogatepass")) > max_body:
        raise ValueError(f"body of more than {max_body} bytes")
    if thread is not None and (not isinstance(thread, str) or len(thread) > 256):
        raise ValueError("a thread is a string of at most 256 characters")
