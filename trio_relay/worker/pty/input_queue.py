"""Bytes waiting to be written to the terminal, in order: user keys, answers to terminal
queries and the chunks of a delivery being typed.

Sans-IO: the loop asks :meth:`InputQueue.head` for what to write, then reports what the
terminal took (:meth:`InputQueue.wrote`) or the error (:meth:`InputQueue.fail`). Each item may
carry a ``done(error, now)`` callback, run once all its bytes were written (error None) or once
it cannot be, and an ``owner`` (a delivery id) so the chunks of an aborted delivery can be
dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

Done = Callable[[OSError | None, float], None]


class _Item:
    __slots__ = ("data", "done", "owner")

    def __init__(self, data: bytes, done: Done | None, owner: str | None) -> None:
        self.data = memoryview(data)
        self.done = done
        self.owner = owner


class InputQueue:
    """Terminal input in order of arrival."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[_Item] = deque()

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, data: bytes, done: Done | None = None, owner: str | None = None) -> None:
        """Queue ``data`` after what is already queued."""
        self._items.append(_Item(data, done, owner))

    def head(self) -> memoryview | None:
        """The bytes to write next (None: nothing waits)."""
        return self._items[0].data if self._items else None

    def wrote(self, count: int, now: float) -> None:
        """The terminal took the first ``count`` bytes of :meth:`head`."""
        item = self._items[0]
        item.data = item.data[count:]
        if not item.data:
            self._items.popleft()
            if item.done is not None:
                item.done(None, now)

    def fail(self, error: OSError, now: float) -> None:
        """Nothing more can be written: drop everything, telling each owner of a callback."""
        while self._items:
            item = self._items.popleft()
            if item.done is not None:
                item.done(error, now)

    def drop(self, owner: str) -> bool:
        """Drop the items of ``owner`` the terminal took nothing of; the one it took part of
        is kept (to finish its character) but no longer owned. Returns whether the terminal
        took any of them in part."""
        started = False
        for item in [item for item in self._items if item.owner == owner]:
            if item.data.nbytes < len(item.data.obj):
                started = True
                item.owner = None
            else:
                self._items.remove(item)
        return started
