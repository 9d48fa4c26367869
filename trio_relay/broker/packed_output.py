"""Agent output events kept compressed: the event log's older output, packed into blocks.

A :class:`PackedOutput` holds a run of :class:`~trio_relay.wire.AgentOutput` events as
one zlib stream of their UTF-8 text and arrays of their numbers, and gives each back on
demand, equal to the event packed. Terminal output repeats itself (escape sequences,
colours, redraws of the same rows): an agent CLI's output takes a tenth or less of what it
takes as Python strings, which spend two or four bytes on a character as soon as one is
not Latin-1, and keep a UTF-8 copy once the text was sent.

Pure data; no I/O.
"""

from __future__ import annotations

import sys
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Sequence

from trio_relay.wire import AgentOutput

LEVEL = 1
"""zlib's fastest level: hundreds of MB/s, and most of what a higher level would save."""


class PackedOutput:
    """The output events ``events`` (in sequence order), compressed. ``size`` is the memory
    the block takes; ``first`` and ``last`` are the sequence numbers it spans (the events
    between them that are not output are not in it)."""

    __slots__ = ("_seqs", "_times", "_agents", "_offsets", "_ends", "_blob", "size")

    def __init__(self, events: Sequence[AgentOutput]) -> None:
        if not events:
            raise ValueError("a block packs one event or more")
        texts = [event.data.encode() for event in events]
        ends = array("q")
        end = 0
        for text in texts:
            end += len(text)
            ends.append(end)
        self._seqs = array("q", [event.seq for event in events])
        self._times = array("d", [event.time for event in events])
        self._agents = tuple(event.agent for event in events)  # each agent's one name string
        self._offsets = array("q", [event.offset for event in events])
        self._ends = ends
        self._blob = zlib.compress(b"".join(texts), LEVEL)
        self.size = sum(
            sys.getsizeof(part)
            for part in (self, self._seqs, self._times, self._agents, self._offsets, ends)
        ) + sys.getsizeof(self._blob)

    @property
    def first(self) -> int:
        return self._seqs[0]

    @property
    def last(self) -> int:
        return self._seqs[-1]

    @property
    def seqs(self) -> array[int]:
        """The sequence numbers of the events packed, ascending."""
        return self._seqs

    def text(self) -> bytes:
        """All the events' text, UTF-8, decompressed (give it back to :meth:`event`)."""
        return zlib.decompress(self._blob)

    def event(self, seq: int, text: bytes) -> AgentOutput:
        """A new event equal to the one numbered ``seq`` when it was packed; ``text`` is
        :meth:`text`. Raises KeyError if ``seq`` is not in the block."""
        i = self._index(seq)
        start = self._ends[i - 1] if i else 0
        return self._event(i, text[start : self._ends[i]].decode())

    def header(self, seq: int) -> AgentOutput:
        """The event numbered ``seq`` without its text (``data`` empty), unpacking nothing.
        Raises KeyError if ``seq`` is not in the block."""
        return self._event(self._index(seq), "")

    def _index(self, seq: int) -> int:
        i = bisect_left(self._seqs, seq)
        if i == len(self._seqs) or self._seqs[i] != seq:
            raise KeyError(seq)
        return i

    def _event(self, i: int, data: str) -> AgentOutput:
        return AgentOutput(
            seq=self._seqs[i],
            time=self._times[i],
            agent=self._agents[i],
            offset=self._offsets[i],
            data=data,
        )
