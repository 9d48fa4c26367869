"""What the agent is doing, read off its screen with its profile: :func:`classify`.

The activity is decided, in this order, by what is on screen now:

1. ``starting``: nothing drawn yet (no text, no window title). A profile with
   ``idle_when_reading`` (generic) takes a program that drew nothing but is blocked reading
   its terminal as ``idle``: a ``cat`` shows nothing until it reads something;
2. ``attention``: one of the profile's dialogs matches; the text is the dialog's message;
3. ``busy``: one of its busy signs matches the screen or the window title;
4. ``idle``: its prompt is visible (on the cursor's row if the profile says so; after
   ``--settle`` seconds of quiet if it says so). Without a prompt in the profile: quiet
   for ``--settle`` seconds;
5. otherwise ``starting`` if the agent was never idle (its prompt has not appeared yet),
   else ``busy`` (its prompt is gone: it is doing something).

:class:`InputLine` is what the prompt's ``input`` group holds, with the profile's
placeholders counted as empty. Pure: no I/O, no clock (it is told what it needs).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from trio_relay.profiles.profile import Profile

MAX_TEXT = 300  # characters of screen text an activity change carries


class InputLine(NamedTuple):
    """The input line the prompt shows: ``text`` ("" when empty or a placeholder),
    ``found``: whether the prompt is on screen at all, and ``row``: the row it is on."""

    text: str
    found: bool
    row: str = ""


class Verdict(NamedTuple):
    activity: str
    text: str
    input: InputLine
    drawn: bool = True  # the program has drawn something (text or a window title)
    dialog: str = ""  # in attention: the name of the dialog on screen


NO_INPUT = InputLine("", False)


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _row_of(text: str, match: re.Match[str]) -> str:
    """The whole screen row (or rows) a match is on."""
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", match.end())
    return text[start : end if end >= 0 else len(text)]


def _cursor_row(lines: list[str], cursor_row: int) -> str:
    return lines[cursor_row] if 0 <= cursor_row < len(lines) else ""


def input_line(profile: Profile, lines: list[str], cursor_row: int) -> InputLine:
    """The input line on screen (``lines``: the visible rows), or NO_INPUT."""
    compiled = profile.compiled
    pattern = compiled.prompt
    if pattern is None or profile.prompt is None:
        return NO_INPUT
    if profile.prompt.cursor:
        text = _cursor_row(lines, cursor_row)
        match = pattern.search(text)
    else:
        text = "\n".join(lines)
        match = None
        for match in pattern.finditer(text):  # noqa: B007 - the last match is the input line
            pass
    if match is None:
        return NO_INPUT
    typed = (match.groupdict().get("input") or "").strip()
    if any(empty.search(typed) for empty in compiled.empty):
        typed = ""
    return InputLine(typed, True, _row_of(text, match))


def classify(
    profile: Profile,
    lines: list[str],
    cursor_row: int,
    title: str,
    *,
    quiet: bool,
    reading: bool,
    was_idle: bool,
    settle: float,
) -> Verdict:
    """The activity the screen shows (see the module's doc). ``quiet``: no output for
    ``settle`` seconds; ``reading``: the program is blocked reading its terminal;
    ``was_idle``: it has been idle before."""
    compiled = profile.compiled
    text = "\n".join(lines)
    if not text.strip() and not title.strip():
        if profile.idle_when_reading and reading and quiet:
            return Verdict("idle", "nothing drawn; it waits reading its terminal", NO_INPUT, False)
        return Verdict("starting", "nothing drawn yet", NO_INPUT, False)
    for dialog, pattern in compiled.dialogs:
        where = _cursor_row(lines, cursor_row) if dialog.cursor else text
        match = pattern.search(where)
        if match is not None:
            asks = _excerpt(f"{dialog.text}: {_row_of(where, match)}")
            return Verdict("attention", asks, NO_INPUT, dialog=dialog.name)
    line = input_line(profile, lines, cursor_row)
    for pattern in compiled.busy:
        match = pattern.search(text)
        if match is not None:
            return Verdict("busy", _excerpt(_row_of(text, match)), line)
    for pattern in compiled.busy_title:
        if pattern.search(title):
            return Verdict("busy", _excerpt(f"window title {title}"), line)
    prompt = profile.prompt
    if prompt is None:
        if quiet:
            return Verdict("idle", f"drawn, then quiet for {settle:g} s", NO_INPUT)
        return Verdict("busy", "drawing", NO_INPUT)
    if line.found and (quiet or not prompt.quiet):
        return Verdict("idle", _excerpt(line.row), line)
    if line.found:
        return Verdict("busy" if was_idle else "starting", "drawing", line)
    if was_idle:
        return Verdict("busy", "its prompt is not visible", line)
    return Verdict("starting", "its prompt is not visible yet", line)
