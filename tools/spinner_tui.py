#!/usr/bin/env python3
"""A stand-in for a busy agent CLI: it redraws its screen like one, 20 times a second.

    python3 tools/spinner_tui.py [--rate 20] [--seconds S] [--burst 2048] [--burst-every 1]
                                 [--burst-first S]

The workload of ``tools/bench_agents.py``'s activity-detection benchmark. Like Claude Code or
Codex while they work, each frame (one write, inside synchronized-output marks) sets the window
title to a spinner, moves the cursor to the spinner row and redraws it in colour
(``⠹ Working… (12s · esc to interrupt)``), redraws the status row under the input box and
parks the cursor after the ``> `` of the input box (a rule above it and below it). Every
``--burst-every`` seconds, ``--burst`` bytes of coloured transcript text scroll through the
region above (a tool's output arriving). It reads nothing; the size is the terminal's
(40x120 when the output is not a terminal). ``--seconds`` 0 (the default) runs until killed.

:func:`frames` yields the same bytes with their times, for a replay without a terminal.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Iterator

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
COLOURS = (31, 32, 33, 34, 35, 36)
WORDS = (
    "reading src/app/handlers.py for the request path",
    "def handle(request): return respond(request.body)",
    "  + assert response.status == 200",
    "running pytest -q tests/test_handlers.py",
    "3 passed, 1 warning in 0.42s",
    "editing README.md: the configuration section",
)


def _transcript(count: int, size: int, cols: int) -> bytes:
    """About ``size`` bytes of coloured transcript lines (each ends with CR LF)."""
    out, total, i = [], 0, count
    while total < size:
        colour = COLOURS[i % len(COLOURS)]
        text = f"{i:6d} {WORDS[i % len(WORDS)]}"[: cols - 4]
        line = f"\x1b[2m│\x1b[0m \x1b[{colour}m{text}\x1b[0m\x1b[K\r\n".encode()
        out.append(line)
        total += len(line)
        i += 1
    return b"".join(out)


def frames(
    rows: int,
    cols: int,
    rate: float,
    burst: int,
    every: float,
    seconds: float,
    first: float | None = None,
) -> Iterator[tuple[float, bytes]]:
    """(seconds from the start, bytes) of each write, the first one the screen's set-up;
    forever if ``seconds`` is 0. The first burst comes at ``first`` seconds (default
    ``every``)."""
    top = rows - 5  # the transcript scrolls in rows 1..top
    spin, rule, box, rule2, status = rows - 4, rows - 3, rows - 2, rows - 1, rows
    line = "─" * cols
    setup = (
        f"\x1b[?1049h\x1b[H\x1b[2J\x1b[1;{top}r"
        f"\x1b[{rule};1H\x1b[2m{line}\x1b[0m\x1b[{box};1H> "
        f"\x1b[{rule2};1H\x1b[2m{line}\x1b[0m"
    ).encode()
    yield 0.0, setup + _transcript(0, 1024, cols)
    period, n, lines_out = 1.0 / rate, 0, 40
    next_burst = every if first is None else first
    while not seconds or n * period < seconds:
        n += 1
        t = n * period
        glyph = SPINNER[n % len(SPINNER)]
        elapsed = int(t)
        parts = [
            "\x1b[?2026h",
            f"\x1b]0;{glyph} spinner_tui\x07",
            f"\x1b[{spin};1H\x1b[2K\x1b[38;5;208m{glyph}\x1b[0m \x1b[1mWorking…\x1b[0m "
            f"\x1b[2m({elapsed}s · esc to interrupt)\x1b[0m",
            f"\x1b[{status};1H\x1b[2K\x1b[2m  ? for shortcuts · frame {n} · "
            f"{lines_out} lines\x1b[0m",
        ]
        data = "".join(parts).encode()
        if every and t >= next_burst:
            next_burst += every
            chunk = _transcript(lines_out, burst, cols)
            lines_out += chunk.count(b"\n")
            data += f"\x1b7\x1b[{top};1H".encode() + chunk + b"\x1b8"
        data += f"\x1b[{box};3H\x1b[?2026l".encode()
        yield t, data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=20.0, help="frames per second")
    parser.add_argument("--seconds", type=float, default=0.0, help="how long (0: until killed)")
    parser.add_argument("--burst", type=int, default=2048, help="bytes of each burst")
    parser.add_argument("--burst-every", type=float, default=1.0, help="seconds between bursts")
    parser.add_argument(
        "--burst-first", type=float, default=None, help="seconds until the first burst"
    )
    args = parser.parse_args()
    try:
        size = os.get_terminal_size(1)
        rows, cols = size.lines, size.columns
    except OSError:
        rows, cols = 40, 120
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    start = time.monotonic()
    try:
        for t, data in frames(
            rows, cols, args.rate, args.burst, args.burst_every, args.seconds, args.burst_first
        ):
            delay = start + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            os.write(1, data)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        try:
            os.write(1, b"\x1b[r\x1b[?1049l")
        except OSError:
            pass


if __name__ == "__main__":
    main()
