"""The screen model's cost on a busy agent CLI's output, against pyte's own code paths.

    .venv/bin/python tools/bench_screen.py [--seconds 20] [--repeat 5]

Replays ``--seconds`` of ``tools/spinner_tui.py``'s output (a 40x120 screen redrawn 20
times a second with colours, cursor moves and a title, plus a 200 KB burst of coloured
transcript every 10 s: the busy workload of ``tools/bench_scale.py``) into a
``TerminalScreen``, without I/O, twice per repetition: as the PTY worker does it (simple
CSI and OSC sequences dispatched at once, SGRs remembered, runs of one-cell characters
drawn with shared cells), and with pyte's own parser, SGR and drawing, the baseline.
Prints the least CPU of ``--repeat`` runs of each, the throughput, and the ratio.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import pyte

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))
sys.path.insert(0, str(TOOLS))

import spinner_tui

from trio_relay.worker.pty.screen import TerminalScreen

ROWS, COLS = 40, 120


def replay(chunks: list[str], pyte_paths: bool) -> float:
    """CPU seconds to feed ``chunks`` to a fresh screen."""
    screen = TerminalScreen(ROWS, COLS)
    if pyte_paths:  # pyte's own parser, SGR and drawing
        stream, inner = screen._stream, screen._screen
        stream.feed = pyte.Stream.feed.__get__(stream)  # type: ignore[method-assign]
        inner.select_graphic_rendition = (  # type: ignore[method-assign]
            lambda *attrs, private=False: None if private else inner._apply_sgr(attrs)
        )
        inner.draw = lambda data: pyte.Screen.draw(inner, data)  # type: ignore[method-assign]
        stream._initialize_parser()
    gc.collect()
    start = time.process_time()
    for chunk in chunks:
        screen.feed(chunk)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="of output replayed")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each (least CPU shown)")
    args = parser.parse_args()
    chunks = [
        data.decode()
        for _, data in spinner_tui.frames(ROWS, COLS, 20.0, 204800, 10.0, args.seconds, 1.0)
    ]
    size = sum(len(c.encode()) for c in chunks) / 1e6
    ours, theirs = [], []
    for _ in range(args.repeat):  # alternating, so drift affects both
        ours.append(replay(chunks, pyte_paths=False))
        theirs.append(replay(chunks, pyte_paths=True))
    best, base = min(ours), min(theirs)
    print(f"{args.seconds:g} s of busy output: {len(chunks)} writes, {size:.2f} MB")
    print(f"{'parser':<32}{'CPU s':>8}{'MB/s':>8}")
    print(f"{'trio-relay':<32}{best:>8.3f}{size / best:>8.2f}")
    print(f"{'pyte (baseline)':<32}{base:>8.3f}{size / base:>8.2f}")
    print(f"ratio: {best / base:.2f}x the baseline's CPU")


if __name__ == "__main__":
    main()
