#!/usr/bin/env python3
"""Set up the project's virtual environment if needed, then run a command in it.

    python3 tools/dev.py up [ARGS...]     start the broker (trio-relay up) for this directory
    python3 tools/dev.py test [ARGS...]   run the test suite (pytest)
    python3 tools/dev.py run CMD [ARGS...] run any command from the venv's bin/

Needs only python3 (3.11+). The venv lives in .venv/ at the repository root and
is reinstalled whenever pyproject.toml changes.
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".installed-from"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"trio-relay needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    if not (BIN / "python").exists():
        print(f"dev.py: creating {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing trio-relay and its test dependencies", file=sys.stderr)
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-e", f"{ROOT}[test]"],
        check=True,
    )
    STAMP.write_text(wanted)


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    ensure_venv()
    if command == "up":
        program = [str(BIN / "trio-relay"), "up", *rest]
    elif command == "test":
        program = [str(BIN / "python"), "-m", "pytest", *rest]
        os.chdir(ROOT)  # where pytest's configuration and the tests are
    elif command == "run" and rest:
        program = [str(BIN / rest[0]), *rest[1:]]
    else:
        sys.exit(f"dev.py: unknown command {command!r}; try --help")
    os.execv(program[0], program)


if __name__ == "__main__":
    main(sys.argv[1:])
