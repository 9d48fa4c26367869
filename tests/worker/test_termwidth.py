"""The wcwidth stand-in of the PTY worker."""

from __future__ import annotations

import subprocess
import sys

from trio_relay.worker.pty.termwidth import wcwidth


def test_widths() -> None:
    assert wcwidth("a") == 1 and wcwidth(" ") == 1 and wcwidth("~") == 1
    assert wcwidth("\x00") == 0
    assert wcwidth("\x1b") == -1 and wcwidth("\x7f") == -1 and wcwidth("\x85") == -1
    assert wcwidth("\u0301") == 0  # a combining acute accent
    assert wcwidth("\u200b") == 0  # zero width space (a format character)
    assert wcwidth("\u00ad") == 1  # the soft hyphen is drawn
    assert wcwidth("\u1160") == 0 and wcwidth("\ud7b0") == 0  # Hangul medial / final jamo
    assert wcwidth("日") == 2 and wcwidth("Ａ") == 2  # wide, fullwidth
    assert wcwidth("\U0001f1e6") == 2  # a regional indicator
    assert wcwidth("é") == 1 and wcwidth("│") == 1


def test_install_makes_pyte_use_it() -> None:
    probe = (
        "from trio_relay.worker.pty import termwidth; termwidth.install()\n"
        "import pyte, sys\n"
        "print(sys.modules['wcwidth'] is termwidth)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stderr
