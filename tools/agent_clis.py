#!/usr/bin/env python3
"""Install pinned versions of real agent CLIs (Claude Code, Codex, Gemini CLI) with npm.

    python3 tools/dev.py run python tools/agent_clis.py                install (or check), print paths
    python3 tools/dev.py run python tools/agent_clis.py --print-paths  only JSON {name: path}
    python3 tools/dev.py run python tools/agent_clis.py --dir DIR      another cache directory

Each CLI goes into its own npm prefix under the cache directory (default
``.cache/agent-clis/`` at the repository root, git-ignored): ``DIR/<name>/node_modules/``,
its binary at ``DIR/<name>/node_modules/.bin/<bin>``. Nothing is installed globally and
nothing outside DIR is touched (npm's own download cache, ``~/.npm``, aside). A CLI already
installed at the pinned version is skipped, so running this again is cheap. Needs node and
npm on PATH; exits 1 with a message naming what is missing or which install failed.

The versions are pinned here, so the screens recorded by ``tools/record_agent_screens.py``
(``tests/agents/screens/``) say which version drew them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".cache" / "agent-clis"


@dataclass(frozen=True)
class Cli:
    name: str  #: our name for it, also the fixtures' prefix
    package: str  #: the npm package
    version: str  #: the pinned version
    bin: str  #: the executable it installs in node_modules/.bin


CLIS = (
    Cli("claude", "@anthropic-ai/claude-code", "2.1.332", "claude"),
    Cli("codex", "@openai/codex", "0.171.0", "codex"),
    Cli("gemini", "@google/gemini-cli", "0.61.0", "gemini"),
)


def prefix_of(cli: Cli, cache: Path) -> Path:
    return cache / cli.name


def binary_of(cli: Cli, cache: Path) -> Path:
    return prefix_of(cli, cache) / "node_modules" / ".bin" / cli.bin


def installed_version(cli: Cli, cache: Path) -> str | None:
    """The version of ``cli`` installed under ``cache``, or None if it is not (whole)."""
    manifest = prefix_of(cli, cache) / "node_modules" / cli.package / "package.json"
    try:
        version = json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version if binary_of(cli, cache).exists() else None


def check_tools() -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"agent_clis: {' and '.join(missing)} not found on PATH; install Node.js 20+ "
            "(which brings npm) and run this again"
        )


def install(cli: Cli, cache: Path, *, quiet: bool) -> None:
    prefix = prefix_of(cli, cache)
    prefix.mkdir(parents=True, exist_ok=True)
    # A package.json of its own, so npm treats the prefix as a project and never walks up
    # to the repository (or installs globally).
    manifest = prefix / "package.json"
    if not manifest.exists():
        manifest.write_text(json.dumps({"name": f"agent-cli-{cli.name}", "private": True}) + "\n")
    command = [
        *("npm", "install", "--prefix", str(prefix), "--save-exact"),
        *("--no-audit", "--no-fund", "--loglevel=error"),
        f"{cli.package}@{cli.version}",
    ]
    if not quiet:
        print(f"installing {cli.package}@{cli.version} into {prefix} ...", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(
            f"agent_clis: `{' '.join(command)}` failed (exit {result.returncode}):\n"
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    got = installed_version(cli, cache)
    if got != cli.version:
        sys.exit(
            f"agent_clis: installed {cli.package} but found version {got!r} with binary "
            f"{binary_of(cli, cache)} (wanted {cli.version})"
        )


def ensure(cache: Path, *, quiet: bool = False) -> dict[str, Path]:
    """Install every CLI not yet at its pinned version; return {name: binary}."""
    check_tools()
    paths = {}
    for cli in CLIS:
        if installed_version(cli, cache) == cli.version:
            if not quiet:
                print(f"{cli.package}@{cli.version} already installed", file=sys.stderr)
        else:
            install(cli, cache, quiet=quiet)
        paths[cli.name] = binary_of(cli, cache)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"cache directory to install into (default: {DEFAULT_DIR.relative_to(ROOT)}/)",
    )
    parser.add_argument(
        "--print-paths",
        action="store_true",
        help="print only a JSON object {name: binary path} on stdout (progress goes nowhere)",
    )
    args = parser.parse_args()
    paths = ensure(args.dir.resolve(), quiet=args.print_paths)
    if args.print_paths:
        print(json.dumps({name: str(path) for name, path in paths.items()}))
    else:
        for cli in CLIS:
            print(f"{cli.name:7} {cli.package}@{cli.version}  {paths[cli.name]}")


if __name__ == "__main__":
    main()
