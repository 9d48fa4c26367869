"""Finding a profile: by name, or by the command an agent runs.

Profiles are TOML files named ``<name>.toml``, in the format of :mod:`.profile`. They are
looked up, first found wins, in

1. ``<state dir>/profiles/`` (this broker's own),
2. ``$XDG_CONFIG_HOME/trio-relay/profiles/`` (default ``~/.config/trio-relay/profiles/``),
3. the built-ins (``trio_relay/profiles/builtin/``): claude, codex, gemini, aider, shell,
   python and generic.

A user's file with a built-in's name replaces it. :meth:`Catalog.choose` picks the profile a
command asks for: the first (users' files first) whose ``commands`` match the program's
file name, else ``generic``. Reading is synchronous (small local files, read at spawn).
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path

import msgspec

from trio_relay.errors import ProfileError
from trio_relay.profiles.profile import Profile

BUILTIN_DIR = Path(__file__).parent / "builtin"
BUILTIN_NAMES = ("claude", "codex", "gemini", "aider", "shell", "python", "generic")
FALLBACK = "generic"
#: Commands that run another one (``env FOO=1 codex``, ``unshare -rn -- claude``, ``npx
#: @google/gemini-cli``): the profile is chosen by the one they run.
WRAPPERS = frozenset(
    {"env", "unshare", "nice", "nohup", "stdbuf", "setsid", "timeout", "sudo", "npx", "bunx"}
)
# What follows a wrapper before the command it runs: options, VAR=value, a duration or level.
_WRAPPER_ARG = re.compile(r"-.*|[A-Za-z_][A-Za-z0-9_]*=.*|\d+(?:\.\d+)?[smhd]?")


def program_of(command: Sequence[str]) -> tuple[str, list[str]]:
    """The file name of the program ``command`` runs, past any wrapper (for ``npx``: the
    package's name, without scope or version), and its arguments."""
    found = _locate(command)
    if found is None:
        return "", []
    index, package = found
    name = command[index].rsplit("/", 1)[-1]
    return (name.split("@", 1)[0] if package else name), list(command[index + 1 :])


def program_index(command: Sequence[str]) -> int | None:
    """Where in ``command`` the program it runs is named, past any wrapper and its options
    (for ``npx``: the package); None if it runs nothing."""
    found = _locate(command)
    return None if found is None else found[0]


def _locate(command: Sequence[str]) -> tuple[int, bool] | None:
    """The index of the program's name, and whether it is an npx/bunx package."""
    i = 0
    while i < len(command):
        name = os.path.basename(command[i])
        if name not in WRAPPERS:
            return i, False
        i += 1
        while i < len(command) and _WRAPPER_ARG.fullmatch(command[i]):
            i += 1
        if name in ("npx", "bunx") and i < len(command):
            return i, True
    return None


def user_profile_dirs(state_dir: Path | None) -> list[Path]:
    """Where a user's profiles are looked for, in order (they need not exist)."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    dirs = [Path(config) / "trio-relay" / "profiles"]
    if state_dir is not None:
        dirs.insert(0, Path(state_dir) / "profiles")
    return dirs


def load_profile_file(path: Path) -> Profile:
    """Read one profile file; its name must be its file's stem. Raises ProfileError naming
    the file and what is wrong with it."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from None
    data.setdefault("name", path.stem)
    try:
        profile = msgspec.convert(data, Profile)
        profile.compiled  # noqa: B018 - a bad pattern is reported now, naming the file
    except (msgspec.ValidationError, ProfileError) as exc:
        raise ProfileError(f"profile {path}: {exc}") from None
    if profile.name != path.stem:
        raise ProfileError(f"profile {path}: its name {profile.name!r} is not its file's name")
    return profile


class Catalog:
    """The profiles one broker can use (``dirs``: the users' directories, in order)."""

    def __init__(self, dirs: Sequence[Path] = ()) -> None:
        self.dirs = [*dirs, BUILTIN_DIR]

    def files(self) -> dict[str, Path]:
        """Every profile's file, by name (the first found of each name)."""
        found: dict[str, Path] = {}
        for folder in self.dirs:
            try:
                paths = sorted(folder.glob("*.toml"))
            except OSError:
                continue
            for path in paths:
                found.setdefault(path.stem, path)
        return found

    def names(self) -> list[str]:
        """The names of the profiles there are."""
        return sorted(self.files())

    def get(self, name: str) -> Profile:
        """The profile called ``name``. Raises ProfileError if there is none (naming those
        there are) or it cannot be read."""
        path = self.files().get(name)
        if path is None:
            known = ", ".join(self.names())
            raise ProfileError(f"no profile named {name!r} (there are: {known})")
        return load_profile_file(path)

    def choose(self, command: Sequence[str]) -> Profile:
        """The profile for ``command``: the first whose ``commands`` match its program's file
        name (past a wrapper such as ``env`` or ``npx``; users' profiles first), else
        ``generic``. Raises ProfileError for a profile
        file that cannot be read (never passed over in silence)."""
        program, args = program_of(command)
        interactive = all(arg.startswith("-") for arg in args)
        for path in self.files().values():
            profile = load_profile_file(path)
            if profile.interactive_only and not interactive:
                continue
            if any(fnmatch.fnmatchcase(program, pattern) for pattern in profile.commands):
                return profile
        return self.get(FALLBACK)
