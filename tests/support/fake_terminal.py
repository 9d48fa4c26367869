"""A fake terminal around the PTY worker's sans-IO core, on a clock the test moves: frames and
program output in, frames, terminal input and signals out. No process, no terminal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trio_relay.wire import Ready, decode_worker_frame, encode
from trio_relay.worker.pty.core import PtyCore
from trio_relay.worker.pty.options import Options


class Terminal:
    """A fake terminal around a :class:`PtyCore`: it takes up to ``room`` bytes of input
    (None: all), echoes what it took if ``echo`` (Enter as CR LF, as a terminal in cooked
    mode does), or fails every write with ``refuse``. With ``program``, what the terminal
    took goes to ``program(data)`` instead, and the bytes it returns are its output."""

    def __init__(
        self,
        echo: bool = True,
        program: Callable[[bytes], bytes] | None = None,
        **options: Any,
    ) -> None:
        self.core = PtyCore(Options(argv=["prog"], **options))
        self.now = 100.0
        self.echo = echo
        self.program_reads = program
        self.room: int | None = None
        self.refuse: OSError | None = None
        self.frames: list[Any] = []
        self.times: list[float] = []  # when each frame was sent
        self.written: list[tuple[float, bytes]] = []  # what the terminal took, when
        self.program: list[int | tuple[int, int]] = []
        self.logs: list[str] = []
        self.core.start(pid=10, program_pid=11, now=self.now)
        self.step()

    def step(self) -> None:
        """One pass of a loop: run the due deadlines, then write input, echo it and parse
        until no input waits (or the terminal takes no more)."""
        core = self.core
        core.timer(self.now)
        while True:
            while core.backlogged:
                core.parse_slice(self.now)
            data = core.pending_input()
            if data is None or self.room == 0:
                break
            if self.refuse is not None:
                core.input_failed(self.refuse, self.now)
                continue
            taken = bytes(data[: self.room])
            self.room = None if self.room is None else self.room - len(taken)
            self.written.append((self.now, taken))
            core.input_written(len(taken), self.now)
            if self.program_reads is not None:
                if drawn := self.program_reads(taken):
                    core.output(drawn, self.now)
            elif self.echo:
                core.output(taken.replace(b"\r", b"\r\n"), self.now)
        outbox = core.outbox
        self.frames += [decode_worker_frame(frame) for frame in outbox.frames]
        self.times += [self.now] * len(outbox.frames)
        self.program += outbox.program
        self.logs += outbox.logs
        outbox.frames.clear(), outbox.program.clear(), outbox.logs.clear()

    def send(self, frame: Any) -> None:
        self.core.receive(encode(frame), self.now)
        self.step()

    def output(self, data: bytes) -> None:
        self.core.output(data, self.now)
        self.step()

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, stopping at every deadline on the way."""
        end = self.now + seconds
        while (deadline := self.core.next_deadline()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            self.step()
        self.now = end
        self.step()

    def of(self, kind: type, **fields: Any) -> list[Any]:
        return [
            f
            for f in self.frames
            if isinstance(f, kind) and all(getattr(f, k) == v for k, v in fields.items())
        ]

    def time_of(self, kind: type, **fields: Any) -> float:
        frame = self.of(kind, **fields)[0]
        return self.times[next(i for i, f in enumerate(self.frames) if f is frame)]


def ready(**options: Any) -> Terminal:
    """A Terminal whose program drew a prompt and went quiet: ready, its frames cleared."""
    terminal = Terminal(**options)
    terminal.output(b"$ ")  # ready never before something was drawn
    terminal.advance(0.25)  # the settle period, with no more output
    assert terminal.of(Ready)
    # What follows is what the test makes of it: the frames so far are dropped.
    terminal.frames.clear()
    terminal.times.clear()
    return terminal
