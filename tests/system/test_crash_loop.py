"""SIGKILL the broker at random moments while it streams messages to ``cat`` agents (PTY
worker), restart it, and check that nothing acknowledged is lost, nothing verified is typed
again, and nothing of a killed broker lives on. See tests/support/crash_harness.py; the longer
version is ``tools/crash_loop.py --iterations N``."""

from __future__ import annotations

import random
from pathlib import Path

from crash_harness import crash_loop

ITERATIONS = 20


async def test_sigkill_loop_with_cat_agents(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    report = await crash_loop(tmp_path, ITERATIONS, seed, kill_window=2.0, max_messages=6)
    print(report)  # shown with -rP / on failure, with the seed to replay it
    assert report["acknowledged"] > 0
