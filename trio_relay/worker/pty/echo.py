"""What the PTY worker types for a delivery, and how it recognises the echo.

The typed text of a delivery is :func:`format_message`::

    Relay message from <from> [<delivery_id>]: <body>

followed by Enter (a carriage return, as a terminal sends). Control characters are replaced
by spaces, so the text cannot act as a key command (Escape, Ctrl-C, Enter). That includes
newlines, unless the program enabled bracketed paste (``ESC[?2004h``): then the worker pastes
the text between ``ESC[200~`` and ``ESC[201~`` and a newline is a line break in the pasted
text, not Enter (``format_message(..., multiline=True)``). Without bracketed paste a
multi-line body arrives as one line, its lines separated by spaces. (The text as a whole is
still what a program reads as input: a shell runs it as a command line when Enter follows.)

The echo is recognised by :class:`EchoMatcher`: the typed text must appear in the drawn text,
both compared without whitespace and without the decoration a TUI draws around and through
wrapped input: box drawing and block characters (U+2500-U+259F, as in ``│ text │`` or
``▌ text``) and ``|``. Escape sequences never reach it (the screen model parses them), so line
wrapping, a multi-line body, a TUI's padding and its input box's borders are irrelevant.
Punctuation is kept: the evidence needed is the whole formatted text, including the
``[<delivery_id>]`` header, so a short body is not verified by the same words elsewhere on
screen, nor by another delivery whose id and body run together the same way (``[d1]: 0 x``
against ``[d10]: x``).

Pure: no I/O.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_NOT_COMPARED = re.compile(r"[\s\u2500-\u259f|]+")


def format_message(sender: str, delivery_id: str, body: str, multiline: bool = False) -> str:
    """The text typed for a delivery (without the Enter that follows it). Every control
    character becomes a space; newlines (``\r\n``, ``\r`` or ``\n``) are kept as ``\n`` only
    if ``multiline`` (the program takes a bracketed paste)."""
    text = f"Relay message from {sender} [{delivery_id}]: {body}"
    if not multiline:
        return _CONTROL.sub(" ", text)
    return _CONTROL_BUT_NEWLINE.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))


def normalize(text: str) -> str:
    """``text`` without whitespace, box drawing and block characters (U+2500-U+259F) and
    ``|``: the form typed and drawn text are compared in."""
    return _NOT_COMPARED.sub("", text)


class EchoMatcher:
    """Watches drawn text for one expected message, across any number of pieces."""

    def __init__(self, expected: str) -> None:
        self.needle = normalize(expected)
        self.found = not self.needle
        self.seen = 0  # characters drawn since the matcher started (as compared)
        self.best = 0  # the longest start of the message seen drawn, in compared characters
        self._tail = ""

    def feed(self, drawn: str) -> bool:
        """Take the next piece of drawn text; return whether the message has appeared."""
        if self.found:
            return True
        piece = normalize(drawn)
        self.seen += len(piece)
        window = self._tail + piece
        if self.needle in window:
            self.found = True
        else:
            self._tail = window[-(len(self.needle) - 1) :] if len(self.needle) > 1 else ""
            self._note_prefix(window)
        return self.found

    def check_text(self, text: str) -> bool:
        """Whether the message is in ``text`` (for example the whole visible screen)."""
        if not self.found:
            normal = normalize(text)
            if self.needle in normal:
                self.found = True
            else:
                self._note_prefix(normal)
        return self.found

    def _note_prefix(self, text: str) -> None:
        """Record the longest start of the message in ``text`` (binary search: every
        shorter start of a start that is in ``text`` is in it too)."""
        needle = self.needle
        if self.best >= len(needle) - 1 or needle[self.best] not in text:
            return
        low, high = self.best, len(needle) - 1  # the answer is in low..high
        while low < high:
            mid = (low + high + 1) // 2
            if needle[:mid] in text:
                low = mid
            else:
                high = mid - 1
        self.best = low

    def describe_miss(self) -> str:
        """What was seen instead of the message, for a timeout's reason."""
        if not self.seen and not self.best:
            return "nothing was drawn"
        return (
            f"{self.seen} characters were drawn; at most the first {self.best} of the "
            f"message's {len(self.needle)} appeared"
        )
