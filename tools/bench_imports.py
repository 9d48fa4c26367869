"""What our processes' imports cost in RSS, with and without trio_relay.lean_imports.

    .venv/bin/python tools/bench_imports.py [--repeat 3]

Each figure is the RSS of a fresh interpreter (this venv's) after its imports, the median
of ``--repeat`` processes, and what that adds to a bare interpreter measured in the same
run. First some modules alone (those lean_imports keeps out or defers, and the other large
ones the broker imports, as README's benchmark section cites them); then what the broker
(the program ``trio-relay up`` execs into, trio_relay.broker_process), a command such as
``trio-relay ps`` and the PTY worker (``python -m trio_relay.worker.pty``) import before
they start, as imported and lean (after
``lean_imports.install()``, or the worker's ``process_imports.install()``), and the ratio
of the two. It first compiles trio_relay/'s bytecode, which an installed package
has (see tools/dev.py).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from dev import compile_bytecode

PROBE = """
import sys
{setup}
{imports}
with open("/proc/self/statm") as f:
    print(int(f.read().split()[1]) * 4096)
"""
LEAN = "from trio_relay import lean_imports; lean_imports.install()"
BROKER = "import trio_relay.broker_process, trio_relay.daemon"  # what `up` execs into
COMMAND = "import trio_relay.cli.main"  # any other command: `trio-relay ps`, `send`, ...
WORKER_LEAN = "from trio_relay.worker.pty import process_imports; process_imports.install()"
WORKER = "import trio_relay.worker.pty.worker"
PROCESSES = [  # what each imports, and what it runs first to import lean
    ("broker (trio-relay up)", LEAN, BROKER),
    ("a command (trio-relay ps)", LEAN, COMMAND),
    ("PTY worker", WORKER_LEAN, WORKER),
]
ALONE = [
    ("_hashlib (OpenSSL's hashes)", "import _hashlib"),
    ("ssl, after _hashlib", "import _hashlib, ssl"),
    ("idna", "import idna"),
    ("importlib.metadata (trio-websocket)", "import importlib.metadata"),
    ("click", "import click"),
    ("msgspec", "import msgspec"),
    ("trio", "import trio"),
]


def rss_mb(setup: str, imports: str, repeat: int) -> float:
    code = PROBE.format(setup=setup, imports=imports)
    runs = [
        int(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)
        for _ in range(repeat)
    ]
    return statistics.median(runs) / 2**20  # MiB, as /proc and tools/bench_scale.py count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="processes per figure")
    args = parser.parse_args()
    compile_bytecode()  # what an installed trio-relay has: see tools/dev.py
    bare = rss_mb("", "", args.repeat)
    print(f"bare interpreter: {bare:.1f} MB RSS\n")
    print(f"{'imported alone':<40}{'RSS MB':>8}{'added':>8}")
    for label, imports in ALONE:
        mb = rss_mb("", imports, args.repeat)
        print(f"{label:<40}{mb:>8.1f}{mb - bare:>+8.1f}")
    print(f"\n{'process':<26}{'as imported':>13}{'lean':>14}{'saved':>8}{'ratio':>8}")
    for label, lean_setup, imports in PROCESSES:
        plain, lean = rss_mb("", imports, args.repeat), rss_mb(lean_setup, imports, args.repeat)
        print(
            f"{label:<26}{plain:>10.1f} MB{lean:>11.1f} MB{plain - lean:>8.1f}{lean / plain:>7.2f}x"
        )


if __name__ == "__main__":
    main()
