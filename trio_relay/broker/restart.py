"""Restart policies: whether an agent that exited on its own is started again, and when.

Pure arithmetic, no processes and no Trio, so it is tested on its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from trio_relay.broker.process import ExitStatus
from trio_relay.wire.vocabulary import RESTART_MODES, RestartMode


@dataclass(frozen=True)
class RestartPolicy:
    """When and how fast an agent that exited on its own is started again.

    ``never``: not restarted. ``on-failure``: restarted after a non-zero exit or a signal.
    ``always``: restarted after any exit the broker did not ask for. The n-th consecutive
    restart waits ``initial_delay * 2**(n-1)`` seconds, capped at ``max_delay``, less a
    random ``jitter`` fraction; after ``max_attempts`` consecutive restarts it gives up. A run
    that lasted ``stable_after`` seconds resets the count.
    """

    mode: RestartMode = "never"
    initial_delay: float = 0.5
    max_delay: float = 30.0
    max_attempts: int = 10
    stable_after: float = 60.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.mode not in RESTART_MODES:
            raise ValueError(f"unknown restart mode {self.mode!r}")
        if not (0 <= self.jitter < 1) or self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("restart delays must be non-negative and jitter in [0, 1)")

    def wants_restart(self, status: ExitStatus | None, intended: bool) -> bool:
        """Whether an exit with ``status`` (None: the restart itself failed to spawn) calls
        for a restart."""
        if intended or self.mode == "never":
            return False
        return self.mode == "always" or status is None or status.failed

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before restart number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * 2 ** min(attempt - 1, 62))
        return base * (1 - self.jitter * rng.random())


class RestartTracker:
    """Counts consecutive restarts for one agent; pure, so it is tested without processes."""

    def __init__(self, policy: RestartPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self, ran_for: float) -> float | None:
        """After a run of ``ran_for`` seconds that wants a restart: the delay before it, or
        None when the attempts are spent (give up)."""
        if ran_for >= self.policy.stable_after:
            self.attempt = 0
        self.attempt += 1
        if self.attempt > self.policy.max_attempts:
            return None
        return self.policy.delay(self.attempt, self._rng)
