"""The long SIGKILL crash loop: tests/support/crash_harness.py with as many iterations as asked.

    .venv/bin/python tools/crash_loop.py --iterations 200 [--seed N] [--kill-window 2.0]

Exits 1 (with the seed) if any promise is broken: an acknowledged delivery lost or left
open, a delivery read twice by one cat or retyped after being verified, or a process of a
killed broker still alive.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from crash_harness import crash_loop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--kill-window",
        type=float,
        default=2.0,
        help="kill at a uniform random moment in [0, this] s after start",
    )
    parser.add_argument(
        "--max-messages", type=int, default=8, help="messages sent per life, at most"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"seed {seed}", flush=True)
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="crash-loop-")
    try:
        try:
            report = trio.run(
                lambda: crash_loop(
                    Path(tmp),
                    args.iterations,
                    seed,
                    kill_window=args.kill_window,
                    max_messages=args.max_messages,
                    log=lambda line: print(line, flush=True),
                )
            )
        except AssertionError as exc:
            print(f"FAILED: {exc} (work directory {tmp}, kept)", file=sys.stderr)
            args.keep = True
            return 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
