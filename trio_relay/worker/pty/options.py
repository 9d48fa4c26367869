"""The command line of ``python -m trio_relay.worker.pty``: :class:`Options` and :func:`parse_args`.

A hand-written parser rather than argparse, which would cost every agent 0.4 MB of RSS for a
command line read once. It does no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import msgspec

from trio_relay.errors import ProfileError
from trio_relay.profiles.profile import Profile, decode_profile
from trio_relay.wire.vocabulary import INJECT_MODES, TERMINAL_SIZE_RANGE, InjectMode

MAX_SIZE = TERMINAL_SIZE_RANGE[1]
USAGE = "usage: python -m trio_relay.worker.pty [options] -- CMD [ARGS...]"


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """What ``python -m trio_relay.worker.pty`` was asked to do (see :func:`parse_args`)."""

    argv: list[str]
    #: How the program looks and wants to be typed to (default: the built-in ``generic``).
    profile: Profile | None = None
    # the terminal
    rows: int = 24
    cols: int = 80
    term: str = "xterm-256color"
    cwd: str | None = None
    # ready and idle
    settle: float = 0.25
    prompt: re.Pattern[str] | None = None
    ready_timeout: float = 15.0
    idle: float = 2.0
    # typing deliveries
    mode: InjectMode = "auto_inject"
    verify_timeout: float = 5.0
    chunk: int = 128
    key_delay: float = 0.005
    enter_delay: float | None = None  # None: the profile's
    # stopping
    kill_grace: float = 1.0
    # the worker's own CPU priority, below its program's (see .priority)
    nice: int = 10

    @property
    def agent_profile(self) -> Profile:
        """The profile in use: ``--profile``, else the built-in ``generic``."""
        if self.profile is not None:
            return self.profile
        return _generic()

    @property
    def pause_before_enter(self) -> float:
        """``--enter-delay``, else the profile's."""
        if self.enter_delay is not None:
            return self.enter_delay
        return self.agent_profile.typing.enter_delay


@functools.cache
def _generic() -> Profile:
    """The built-in generic profile, read once."""
    from trio_relay.profiles.catalog import BUILTIN_DIR, load_profile_file

    return load_profile_file(BUILTIN_DIR / "generic.toml")


class UsageError(Exception):
    """A bad command line."""


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must not be negative")
    return value


def _size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_SIZE:
        raise ValueError(f"must be in 1..{MAX_SIZE}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _nice(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 19:
        raise ValueError("must be in 0..19")
    return value


def _mode(text: str) -> str:
    if text not in INJECT_MODES:
        raise ValueError(f"must be one of {', '.join(INJECT_MODES)}")
    return text


def _profile(text: str) -> Profile:
    """A profile as JSON (what the broker passes), or the name of a built-in one."""
    try:
        if text.lstrip().startswith("{"):
            return decode_profile(text)
        from trio_relay.profiles.catalog import Catalog

        return Catalog().get(text)
    except ProfileError as exc:
        raise ValueError(str(exc)) from None


def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text, re.MULTILINE)


# option -> (Options field, parser, help)
OPTIONS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "--profile": (
        "profile",
        _profile,
        "the agent's profile, as JSON or a built-in's name (default generic)",
    ),
    "--rows": ("rows", _size, "terminal rows (default 24)"),
    "--cols": ("cols", _size, "terminal columns (default 80)"),
    "--term": ("term", str, "TERM for CMD (default xterm-256color)"),
    "--cwd": ("cwd", str, "working directory for CMD (default: the worker's)"),
    "--settle": (
        "settle",
        _positive,
        "ready once the output was quiet this long, in seconds (default 0.25)",
    ),
    "--prompt": ("prompt", _pattern, "ready as soon as this regular expression matches the screen"),
    "--ready-timeout": (
        "ready_timeout",
        _positive,
        "ready after this many seconds even if never quiet (default 15)",
    ),
    "--idle": (
        "idle",
        _positive,
        "idle after this many seconds of silence with nothing pending (default 2)",
    ),
    "--mode": ("mode", _mode, "injection mode at start: auto_inject (default) or hold"),
    "--verify-timeout": (
        "verify_timeout",
        _positive,
        "seconds to wait for a typed message to appear (default 5)",
    ),
    "--chunk": ("chunk", _count, "characters typed per write when injecting (default 128)"),
    "--key-delay": (
        "key_delay",
        _non_negative,
        "pause between typed chunks, in seconds (default 0.005)",
    ),
    "--enter-delay": (
        "enter_delay",
        _non_negative,
        "pause before the Enter that ends a message, in seconds (default: the profile's)",
    ),
    "--kill-grace": (
        "kill_grace",
        _positive,
        "seconds between SIGHUP and SIGKILL when stopping CMD (default 1)",
    ),
    "--nice": (
        "nice",
        _nice,
        "run the worker this much below CMD: its own nice value and its session's"
        " autogroup's go up by it, CMD's stay (0..19, default 10; 0: as CMD)",
    ),
}


def help_text() -> str:
    lines = [
        USAGE,
        "",
        "Run CMD in a pseudo-terminal as a trio-relay agent (the worker protocol on",
        "stdin/stdout, a log on stderr).",
        "",
        "options:",
        f"  {'-h, --help':26s}show this help and exit",
    ]
    lines += [f"  {name + ' VALUE':26s}{text}" for name, (_, _, text) in OPTIONS.items()]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> Options:
    """Parse the command line (``--name value`` or ``--name=value``, then ``--`` and the
    command). Raises UsageError naming the problem."""
    values: dict[str, Any] = {}
    rest = list(argv)
    while rest and rest[0] != "--" and rest[0].startswith("-"):
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if name not in OPTIONS:
            raise UsageError(f"unknown option {name!r}")
        if not eq:
            if not rest:
                raise UsageError(f"{name} needs a value")
            value = rest.pop(0)
        field, convert, _ = OPTIONS[name]
        try:
            values[field] = convert(value)
        except (ValueError, re.error) as exc:
            raise UsageError(f"{name} {value!r}: {exc}") from None
    if rest[:1] == ["--"]:
        rest.pop(0)
    if not rest:
        raise UsageError("no command: give it after --")
    return Options(argv=rest, **values)
