#!/usr/bin/env python3
"""Set up the project's virtual environment if needed, then run a command in it.

    python3 tools/dev.py up [ARGS...]      start the broker (trio-relay up) for this directory
    python3 tools/dev.py test [ARGS...]    run the test suite (pytest)
    python3 tools/dev.py lint              ruff check and ruff format --check over the tree
    python3 tools/dev.py run CMD [ARGS...] run any command from the venv's bin/
    python3 tools/dev.py lock [--upgrade]  re-resolve requirements.lock with hashes: keep its
                                           pins, or take the newest versions that
                                           pyproject.toml's ranges allow

Needs only python3 (3.11, 3.12 or 3.13). The venv lives in .venv/ at the repository root
(another Python version gets .venv-3.X/ beside it) and is reinstalled whenever
pyproject.toml or requirements.lock changes. It installs exactly the versions pinned in
requirements.lock, checked against their hashes, so every machine runs what CI ran.

The package is installed editable, so pip compiles none of its bytecode; each command first
brings trio_relay/'s ``__pycache__`` up to date (a few ms when it is), even where
PYTHONDONTWRITEBYTECODE is set. Without that, every PTY worker the broker starts compiles
the worker's source again: about 1.5 MB of RSS and 0.1 s of CPU per agent.
"""

import compileall
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
#: The resolver that writes the lock; installed into the venv only by `lock`.
UV = "uv==0.13.9"
SUPPORTED = ((3, 11), (3, 12), (3, 13))


def venv_dir() -> Path:
    """.venv/ for the Python that made it; another minor version gets its own."""
    default = ROOT / ".venv"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        config = (default / "pyvenv.cfg").read_text().splitlines()
    except FileNotFoundError:
        return default
    settings = dict(line.partition("=")[::2] for line in config)
    made_by = {key.strip(): value.strip() for key, value in settings.items()}
    made_with = made_by.get("version_info") or made_by.get("version") or ""
    if made_with.split(".")[:2] == version.split("."):
        return default
    return ROOT / f".venv-{version}"


VENV = venv_dir()
BIN = VENV / "bin"
STAMP = VENV / ".installed-from"
BROKER_IMPORTS = "import trio_relay.broker_process, trio_relay.daemon"


def pip(*args: str) -> None:
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "--quiet", "--disable-pip-version-check", *args],
        check=True,
    )


def check_python() -> None:
    if sys.version_info[:2] not in SUPPORTED:
        supported = ", ".join(f"{major}.{minor}" for major, minor in SUPPORTED)
        sys.exit(f"trio-relay supports Python {supported}; this is {sys.version.split()[0]}")


def create_venv() -> None:
    if not (BIN / "python").exists():
        print(f"dev.py: creating {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)


def ensure_venv() -> None:
    if not LOCK.exists():
        sys.exit(f"dev.py: {LOCK} is missing; `python3 tools/dev.py lock` writes it")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + LOCK.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    create_venv()
    print(
        f"dev.py: installing the locked dependencies ({LOCK.name}) and trio-relay", file=sys.stderr
    )
    pip("install", "--require-hashes", "-r", str(LOCK))
    pip("install", "--no-deps", "-e", str(ROOT))
    # The broker runs with -OO (see trio_relay.broker_process): importing what it imports
    # once that way writes their .opt-2.pyc files, as its first start would (whatever
    # PYTHONDONTWRITEBYTECODE says: compile_bytecode writes trio_relay's anyway).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([str(BIN / "python"), "-OO", "-c", BROKER_IMPORTS], check=True, env=env)
    STAMP.write_text(wanted)


def compile_bytecode() -> None:
    """Write trio_relay/'s missing or stale .pyc files, as an installed package has them,
    and their ``-OO`` ones, which the broker's first start would write (this is the venv's
    Python version: see venv_dir). A file that cannot be written is reported and left to
    be compiled in memory, as Python would anyway."""
    compileall.compile_dir(ROOT / "trio_relay", quiet=1, optimize=[0, 2])


def lock(upgrade: bool) -> None:
    """Resolve pyproject.toml's ranges (with the test and mcp extras) for every supported Python and
    platform, and write the pins with their hashes to requirements.lock. Pins already in the
    lock are kept unless ``upgrade`` (then the newest versions the ranges allow are taken)."""
    if not (BIN / "uv").exists():
        pip("install", UV)
    subprocess.run(
        [
            str(BIN / "uv"),
            "pip",
            "compile",
            "pyproject.toml",
            "--extra",
            "test",
            "--extra",
            "mcp",
            "--universal",
            "--python-version",
            "3.11",
            "--generate-hashes",
            *(["--upgrade"] if upgrade else []),
            "--no-header",
            "--quiet",
            "--output-file",
            str(LOCK),
        ],
        cwd=ROOT,
        check=True,
    )
    print(f"dev.py: wrote {LOCK}; the next command reinstalls the venv from it", file=sys.stderr)


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    check_python()
    if command == "lock" and rest in ([], ["--upgrade"]):
        create_venv()
        lock(upgrade=bool(rest))
        return
    ensure_venv()
    compile_bytecode()
    if command == "up":
        program = [str(BIN / "trio-relay"), "up", *rest]
    elif command == "test":
        program = [str(BIN / "python"), "-m", "pytest", *rest]
        os.chdir(ROOT)  # where pytest's configuration and the tests are
    elif command == "lint" and not rest:
        ruff = str(BIN / "ruff")
        os.chdir(ROOT)
        checked = subprocess.run([ruff, "check", "."]).returncode
        sys.exit(checked or subprocess.run([ruff, "format", "--check", "."]).returncode)
    elif command == "run" and rest:
        program = [str(BIN / rest[0]), *rest[1:]]
    else:
        sys.exit(f"dev.py: unknown command {command!r}; try --help")
    os.execv(program[0], program)


if __name__ == "__main__":
    main(sys.argv[1:])
