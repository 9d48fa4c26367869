"""The injection throttle: an adaptive pause between two injections into one agent.

Each injection ends in one of three outcomes, and the pause before the next one adapts:

- ``SUCCESS`` (the text was echoed): the success streak grows; from the ``shrink_after``-th
  consecutive success on, each success shortens the pause by ``shrink``, down to ``minimum``.
- ``UNVERIFIED`` (timeout fallback: typed, but never seen): the streak is broken, the pause
  is left as it is. An agent that does not echo is not a reason to slow down.
- ``FAILED`` (the bytes could not be written): the streak is broken and the pause backs off
  one step (times ``backoff``, at least ``initial``), up to ``maximum``.

The throttle does no I/O, never sleeps and reads no clock: it is told the time and answers
how long to wait, so it is tested deterministically.
"""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    SUCCESS = "success"
    UNVERIFIED = "unverified"
    FAILED = "failed"


class InjectionThrottle:
    """The pause between injections. Raises ValueError for inconsistent settings."""

    def __init__(
        self,
        *,
        initial: float = 0.05,
        minimum: float = 0.005,
        maximum: float = 5.0,
        shrink: float = 0.5,
        backoff: float = 2.0,
        shrink_after: int = 2,
    ) -> None:
        if not (0 <= minimum <= initial <= maximum):
            raise ValueError("need 0 <= minimum <= initial <= maximum")
        if not (0 < shrink < 1) or backoff <= 1 or shrink_after < 1:
            raise ValueError("need 0 < shrink < 1, backoff > 1 and shrink_after >= 1")
        self.initial, self.minimum, self.maximum = initial, minimum, maximum
        self.shrink, self.backoff, self.shrink_after = shrink, backoff, shrink_after
        self.delay = initial
        self.streak = 0
        self._not_before = float("-inf")

    def record(self, outcome: Outcome, now: float) -> None:
        """Adapt the pause to ``outcome`` and start it at ``now``: the next injection may
        begin :attr:`delay` seconds later. Raises TypeError for what is not an Outcome."""
        if outcome is Outcome.SUCCESS:
            self.streak += 1
            if self.streak >= self.shrink_after:
                self.delay = max(self.minimum, self.delay * self.shrink)
        elif outcome is Outcome.UNVERIFIED:
            self.streak = 0
        elif outcome is Outcome.FAILED:
            self.streak = 0
            self.delay = min(self.maximum, max(self.delay, self.initial) * self.backoff)
        else:
            raise TypeError(f"not an Outcome: {outcome!r}")
        self._not_before = now + self.delay

    def wait_time(self, now: float) -> float:
        """Seconds from ``now`` until the next injection may begin (0.0: it may begin now)."""
        return max(0.0, self._not_before - now)
