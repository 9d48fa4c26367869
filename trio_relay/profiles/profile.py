"""The profile format: :class:`Profile`, as TOML files hold it and the PTY worker reads it.

A profile says, as data, how one kind of agent behaves: where its prompt and input line are
(:class:`Prompt`), what it shows while working (``busy``, ``busy_title``), the dialogs that
wait for a person (:class:`Dialog`), how to type a message to it (:class:`Typing`) and how
long it takes to show that it took one (:class:`Submitted`). Every pattern is a Python
regular expression, searched in the screen text: the visible rows joined by newlines, each
without its trailing spaces.

Pure data: decoding is msgspec's (:func:`decode_profile` raises ProfileError naming the
field); :meth:`Profile.compiled` compiles the patterns once. No I/O, no TOML (the worker
gets a profile as JSON on its command line; :mod:`.catalog` reads the files).
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Literal

import msgspec

from trio_relay.errors import ProfileError


class Prompt(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the program shows that it waits for a message.

    ``pattern`` matches the prompt; its last match on screen is the input line, and its
    named group ``input`` (if any) is the text in it. ``empty``: patterns of text shown in an
    empty input line (a placeholder such as "Type your message"). ``cursor``: the prompt
    counts only on the cursor's row (shells and REPLs, whose old prompts stay on screen).
    ``quiet``: idle only once the output was quiet for ``--settle`` seconds as well."""

    pattern: str
    empty: list[str] = []
    cursor: bool = False
    quiet: bool = False


class Dialog(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A screen that waits for a person (trust, sign-in, approval): while ``pattern``
    matches, the agent is in ``attention`` and ``text`` tells the person what it asks.
    ``cursor``: only on the cursor's row (a line-oriented program's question, which stays
    on screen once answered)."""

    name: str
    pattern: str
    text: str
    cursor: bool = False


class Typing(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a message is typed.

    ``paste``: ``auto`` pastes it (bracketed paste) when the program enabled bracketed paste,
    ``never`` types it as keys. ``newlines``: ``keep`` keeps line breaks inside a paste,
    ``spaces`` turns them into spaces (a shell would run each line). ``enter_delay``: the
    pause between the text appearing and Enter (some programs take an Enter right after a
    paste as a line break). ``collapsed``: how the program shows a long paste instead of its
    text. ``while_busy``: typing while the agent is busy is fine (it queues the message).
    ``clear``: the keys that empty the input line."""

    paste: Literal["auto", "never"] = "auto"
    newlines: Literal["keep", "spaces"] = "keep"
    enter_delay: float = 0.1
    collapsed: str | None = None
    while_busy: bool = False
    clear: str = "\u0015"


class Submitted(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long after Enter the program has to show it took the message (the text left the
    input line, and the agent turned busy or shows it above) before Enter is pressed once
    more; as long again after that, the line is cleared and the delivery is unverified."""

    window: float = 3.0


#: How an agent CLI takes an extra MCP server for one run (see trio_relay.profiles.mcp_config):
#: as Claude Code does (``--plugin-dir``), as Codex does (``-c`` overrides), as Gemini CLI
#: does (a ``GEMINI_CLI_HOME`` overlay).
McpWay = Literal["claude", "codex", "gemini"]


class Profile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, dict=True):
    """One kind of agent. ``commands``: the command names (shell-style patterns over the file
    name of the program run) that choose it; ``interactive_only``: only when no argument but
    options follows (``bash``, not ``bash script.sh``). Without a ``prompt`` the profile knows no input line: idle means quiet
    for ``--settle`` seconds. ``idle_when_reading``: a program that has drawn nothing but
    is blocked reading its terminal (a ``cat``) is idle: it waits for input. ``mcp``: how
    its program takes the ``trio-relay mcp`` server (``spawn --mcp``); None: it cannot."""

    name: str
    summary: str = ""
    commands: list[str] = []
    interactive_only: bool = False
    prompt: Prompt | None = None
    idle_when_reading: bool = False
    busy: list[str] = []
    busy_title: list[str] = []
    dialogs: list[Dialog] = []
    typing: Typing = Typing()
    submitted: Submitted = Submitted()
    mcp: McpWay | None = None

    @cached_property
    def compiled(self) -> CompiledProfile:
        """The patterns, compiled (once). Raises ProfileError naming a bad pattern."""
        return CompiledProfile(self)


def _compile(where: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.MULTILINE)
    except re.error as exc:
        raise ProfileError(f"{where}: bad regular expression {pattern!r}: {exc}") from None


class CompiledProfile:
    """A profile's patterns compiled with ``re.MULTILINE`` (``^``/``$`` at each row)."""

    def __init__(self, profile: Profile) -> None:
        name = profile.name
        prompt = profile.prompt
        self.prompt = _compile(f"{name}: prompt.pattern", prompt.pattern) if prompt else None
        self.empty = [
            _compile(f"{name}: prompt.empty", p) for p in (prompt.empty if prompt else [])
        ]
        self.busy = [_compile(f"{name}: busy", p) for p in profile.busy]
        self.busy_title = [_compile(f"{name}: busy_title", p) for p in profile.busy_title]
        self.dialogs = [
            (d, _compile(f"{name}: dialog {d.name!r}", d.pattern)) for d in profile.dialogs
        ]
        collapsed = profile.typing.collapsed
        self.collapsed = _compile(f"{name}: typing.collapsed", collapsed) if collapsed else None


_decoder = msgspec.json.Decoder(Profile)


def decode_profile(data: bytes | str) -> Profile:
    """A profile from its JSON form; raises ProfileError naming what is wrong (a missing or
    unknown field, a wrong type, a bad pattern)."""
    try:
        profile = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProfileError(f"bad profile: {exc}") from None
    profile.compiled  # noqa: B018 - compiles the patterns now, so a bad one is reported here
    return profile


def encode_profile(profile: Profile) -> str:
    """The JSON form of ``profile`` (what the worker's ``--profile`` takes)."""
    return msgspec.json.encode(profile).decode()
