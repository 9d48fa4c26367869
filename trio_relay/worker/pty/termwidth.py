"""Terminal cell widths of characters, from the standard library's ``unicodedata``.

pyte needs one function of the ``wcwidth`` package: ``wcwidth(char)``. Importing that package
loads all of it (text wrapping, grapheme tables, ``secrets``, ``hashlib``, ``urllib`` ...):
about 5.5 MB of RSS and 35 ms per process, a third of the PTY worker's memory budget. The PTY
worker therefore calls :func:`install` before it imports pyte, so pyte's
``from wcwidth import wcwidth`` finds this module instead.

The rules follow wcwidth's in outline but are not the same tables: they are computed from
Python's own Unicode database (whose version differs from the tables wcwidth ships), and
wcwidth has special cases this module does not (for example emoji that are not East Asian
Wide, some zero-width and prepended characters): a few thousand code points, almost all
rarely drawn by terminal programs, get a different width. The rules: -1 for C0/C1 control
characters, 0 for NUL, combining marks, format characters (except the soft hyphen), line and
paragraph separators and Hangul medial vowels and final consonants, 2 for East Asian Wide
and Fullwidth characters and regional indicators, 1 otherwise.
"""

from __future__ import annotations

import sys
import unicodedata
from functools import lru_cache

_ZERO_CATEGORIES = frozenset({"Mn", "Me", "Cf", "Zl", "Zp"})


@lru_cache(maxsize=4096)
def wcwidth(char: str) -> int:
    """The number of terminal cells ``char`` (one code point) occupies; -1 if it is a control
    character. Raises TypeError if ``char`` is not a single character."""
    code = ord(char)
    if 32 <= code < 0x7F:
        return 1
    if code == 0:
        return 0
    if code < 32 or 0x7F <= code < 0xA0:
        return -1
    if code == 0xAD:  # the soft hyphen is a format character that terminals draw
        return 1
    if (
        unicodedata.category(char) in _ZERO_CATEGORIES
        or 0x1160 <= code <= 0x11FF
        or 0xD7B0 <= code <= 0xD7FF
    ):
        return 0
    if unicodedata.east_asian_width(char) in ("W", "F") or 0x1F1E6 <= code <= 0x1F1FF:
        return 2
    return 1


def install() -> None:
    """Make ``import wcwidth`` resolve to this module, unless the real package is already
    imported (then it is left alone). Call it before importing pyte; it affects the whole
    process, so only programs that own their process (the PTY worker) should call it."""
    sys.modules.setdefault("wcwidth", sys.modules[__name__])
