"""Named deadlines: at most one per name, each a point on the caller's clock.

The PTY worker's pieces arm deadlines by name (``settle``, ``coalesce``, ``key`` ...); its loop
sleeps until :meth:`Deadlines.next` and then runs :meth:`Deadlines.due`. No I/O, no clock:
every method is told the time.
"""

from __future__ import annotations

from collections.abc import Iterator


class Deadlines:
    """At most one deadline per name."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: dict[str, float] = {}

    def set(self, name: str, when: float) -> None:
        """Arm ``name`` for ``when``, replacing the deadline it had."""
        self._at[name] = when

    def at(self, name: str) -> float | None:
        """When ``name`` is due (None: not armed)."""
        return self._at.get(name)

    def cancel(self, *names: str) -> None:
        for name in names:
            self._at.pop(name, None)

    def clear(self) -> None:
        self._at.clear()

    def next(self) -> float | None:
        """The earliest deadline, or None if none is armed."""
        return min(self._at.values()) if self._at else None

    def due(self, now: float) -> Iterator[str]:
        """Disarm and yield the names due at ``now``, earliest first. Lazy: one that the
        caller cancels or re-arms while handling an earlier one is not yielded (a re-armed one
        waits for the next call)."""
        for name, when in sorted(self._at.items(), key=lambda item: item[1]):
            if when <= now and self._at.get(name) == when:
                del self._at[name]
                yield name
