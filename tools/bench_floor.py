"""What relaying a busy workload's frames costs at the least, in Trio and in a plain loop.

    .venv/bin/python tools/bench_floor.py [--agents 6] [--rate 28] [--seconds 20] [--repeat 3]

The broker's CPU with busy agents (``tools/bench_scale.py --busy``) is mostly the work of
taking each worker's frames and forwarding them to a watching client. This measures the
floor of that work, without the broker: ``--agents`` writer processes each write
``--rate`` output frames a second (about what one ``spinner_tui.py`` agent sends: its
redraws at 20 Hz and its bursts) to a pipe of their own, and one relay reads them,
decodes each frame, and sends what came to a watcher over a Unix socket at most every
16 ms, as one JSON message. Three relays, one after the other, on fresh writers each:

- ``trio``: a Trio task per pipe (``wait_readable``, ``os.read``) and one forwarding task
  that sleeps out the 16 ms, the broker's shape with nothing else;
- ``trio+thread``: one thread reading every pipe with a ``selectors`` loop, handing Trio
  what it read at most every 16 ms, and one Trio task sending each hand-over;
- ``selectors``: one plain ``selectors`` loop doing it all, the baseline.

Prints each relay's CPU as a percentage of a core (least of ``--repeat`` runs), the frames
and messages it relayed, and the ratios to the baseline. What Trio adds is its scheduler's
work per wake-up, which a broker on Trio pays whatever it does with the frames.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

import msgspec
import trio

COALESCE = 0.016
WRITER = r"""
import json, os, random, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
random.seed(os.getpid())
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    data = "\x1b[2;1H\x1b[38;5;39m" + "x" * random.randint(60, 1500) + "\x1b[0m"
    line = json.dumps({"kind": "output", "offset": n, "data": data}) + "\n"
    os.write(1, line.encode())
    n += len(data)
    time.sleep(random.expovariate(rate))
"""

WATCHER = """
import socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
while sock.recv(1 << 16):
    pass
"""


class Output(msgspec.Struct, tag="output", tag_field="kind"):
    offset: int
    data: str


class Event(msgspec.Struct):
    agent: str
    offset: int
    data: str


decoder = msgspec.json.Decoder(Output)
encoder = msgspec.json.Encoder()


def cpu() -> float:
    times = os.times()
    return times.user + times.system


def start_writers(agents: int, rate: float, seconds: float) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(rate), str(seconds)], stdout=subprocess.PIPE
        )
        for _ in range(agents)
    ]


def start_watcher() -> tuple[socket.socket, subprocess.Popen[bytes]]:
    ours, theirs = socket.socketpair()
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    return ours, watcher


def relay_trio(pipes: list[int], sock: socket.socket, seconds: float) -> tuple[int, int]:
    counts = [0, 0]

    async def main() -> None:
        pending: list[Event] = []
        lot = trio.lowlevel.ParkingLot()
        tsock = trio.socket.from_stdlib_socket(sock)

        async def read(name: str, fd: int) -> None:
            os.set_blocking(fd, False)
            rest = b""
            while True:
                await trio.lowlevel.wait_readable(fd)
                chunk = os.read(fd, 65536)
                if not chunk:
                    return
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    frame = decoder.decode(line)
                    pending.append(Event(name, frame.offset, frame.data))
                    counts[0] += 1
                lot.unpark_all()

        async def forward() -> None:
            sent = -1.0
            while True:
                while not pending:
                    await lot.park()
                wait = sent + COALESCE - trio.current_time()
                if wait > 0:
                    await trio.sleep(wait)
                batch = pending[:]
                pending.clear()
                await tsock.send(encoder.encode(batch))
                counts[1] += 1
                sent = trio.current_time()

        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for i, fd in enumerate(pipes):
                    nursery.start_soon(read, f"a{i}", fd)
                nursery.start_soon(forward)

    trio.run(main)
    return counts[0], counts[1]


def pump(
    pipes: list[int],
    hand_over: Callable[[list[Event]], None],
    *,
    until: float | None = None,
    stop: int | None = None,
) -> int:
    """Read every pipe with one ``selectors`` loop, decode each frame, and hand what came
    to ``hand_over`` at most every 16 ms, until ``until`` (``time.monotonic()``) or until
    ``stop`` is readable. Returns the frames read."""
    frames = 0
    pending: list[Event] = []
    rests = {fd: b"" for fd in pipes}
    names = {fd: f"a{i}" for i, fd in enumerate(pipes)}
    sent = -1.0
    with selectors.DefaultSelector() as sel:
        for fd in pipes if stop is None else [*pipes, stop]:
            sel.register(fd, selectors.EVENT_READ)
        while until is None or (now := time.monotonic()) < until:
            timeout = None if until is None else until - now
            if pending:
                due = max(0.0, sent + COALESCE - time.monotonic())
                timeout = due if timeout is None else min(timeout, due)
            for key, _ in sel.select(timeout):
                fd = key.fd
                if fd == stop:
                    return frames
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                    continue
                *lines, rests[fd] = (rests[fd] + chunk).split(b"\n")
                for line in lines:
                    frame = decoder.decode(line)
                    pending.append(Event(names[fd], frame.offset, frame.data))
                    frames += 1
            now = time.monotonic()
            if pending and now >= sent + COALESCE:
                hand_over(pending)
                pending = []
                sent = now
    return frames


def relay_thread(pipes: list[int], sock: socket.socket, seconds: float) -> tuple[int, int]:
    """One thread reads every pipe (:func:`pump`) and hands what it read to Trio at most
    every 16 ms (``run_sync_soon``); one Trio task sends each hand-over."""
    counts = [0, 0]

    async def main() -> None:
        token = trio.lowlevel.current_trio_token()
        handed: list[list[Event]] = []
        lot = trio.lowlevel.ParkingLot()
        tsock = trio.socket.from_stdlib_socket(sock)

        def take(batch: list[Event]) -> None:  # in Trio's thread, no task
            counts[0] += len(batch)
            handed.append(batch)
            lot.unpark_all()

        async def forward() -> None:
            while True:
                while not handed:
                    await lot.park()
                batch = [event for part in handed for event in part]
                handed.clear()
                await tsock.send(encoder.encode(batch))
                counts[1] += 1

        stop_r, stop_w = os.pipe()

        def read_all() -> None:  # in the thread
            try:
                pump(pipes, partial(token.run_sync_soon, take), stop=stop_r)
            finally:
                os.close(stop_r)

        try:
            with trio.move_on_after(seconds):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(forward)
                    nursery.start_soon(
                        partial(trio.to_thread.run_sync, read_all, abandon_on_cancel=True)
                    )
        finally:
            os.write(stop_w, b"x")  # the abandoned thread returns at its next select
            os.close(stop_w)

    trio.run(main)
    return counts[0], counts[1]


def relay_selectors(pipes: list[int], sock: socket.socket, seconds: float) -> tuple[int, int]:
    """One plain loop (:func:`pump`) that sends each hand-over itself."""
    messages = [0]

    def send(batch: list[Event]) -> None:
        sock.send(encoder.encode(batch))
        messages[0] += 1

    frames = pump(pipes, send, until=time.monotonic() + seconds)
    return frames, messages[0]


def run_once(
    relay: Callable[[list[int], socket.socket, float], tuple[int, int]], args: argparse.Namespace
) -> tuple[float, int, int]:
    writers = start_writers(args.agents, args.rate, args.seconds + 2)
    sock, watcher = start_watcher()
    try:
        time.sleep(0.5)  # the writers' interpreters start
        pipes = [w.stdout.fileno() for w in writers if w.stdout is not None]
        before = cpu()
        frames, messages = relay(pipes, sock, args.seconds)
        used = cpu() - before
    finally:
        sock.close()
        for w in writers:
            w.kill()
            w.wait()
        watcher.wait(timeout=10)
    return 100 * used / args.seconds, frames, messages


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=6, help="writer processes")
    parser.add_argument("--rate", type=float, default=28.0, help="frames a second per writer")
    parser.add_argument("--seconds", type=float, default=20.0, help="of relaying per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (least CPU shown)")
    args = parser.parse_args()
    relays = {"trio": relay_trio, "trio+thread": relay_thread, "selectors": relay_selectors}
    results: dict[str, list[tuple[float, int, int]]] = {name: [] for name in relays}
    for _ in range(args.repeat):  # alternating, so drift affects all
        for name, relay in relays.items():
            results[name].append(run_once(relay, args))
    print(f"{args.agents} writers x {args.rate:g} frames/s, {args.seconds:g} s per run")
    print(f"{'relay':<12}{'CPU %':>8}{'frames/s':>10}{'messages/s':>12}")
    best = {}
    for name, runs in results.items():
        cpu_pct, frames, messages = min(runs)
        best[name] = cpu_pct
        print(
            f"{name:<12}{cpu_pct:>8.2f}{frames / args.seconds:>10.0f}{messages / args.seconds:>12.0f}"
        )
    for name in ("trio", "trio+thread"):
        print(f"ratio: {name} {best[name] / best['selectors']:.2f}x the plain loop's CPU")


if __name__ == "__main__":
    main()
