"""A tiny Ink-style TUI for the tests: an input box drawn with box-drawing borders, its text
wrapped inside the borders at word boundaries. Enter clears the box and prints the line
above it as ``got: <line>``; Ctrl-C quits. Usage: box_tui.py [WIDTH]."""

import os
import sys
import textwrap
import tty

width = int(sys.argv[1]) if len(sys.argv) > 1 else 40
tty.setraw(0)
buffer = ""
last = ""


def draw() -> None:
    lines = textwrap.wrap(buffer, width - 4) or [""]
    out = "\x1b[H\x1b[2J" + f"got: {last[-60:]}\r\n"
    out += "╭" + "─" * (width - 2) + "╮\r\n"
    for line in lines:
        out += "│ " + line.ljust(width - 4) + " │\r\n"
    out += "╰" + "─" * (width - 2) + "╯\r\n"
    os.write(1, out.encode())


draw()
while True:
    for char in os.read(0, 1024).decode(errors="replace"):
        if char == "\r":
            buffer, last = "", buffer
        elif char == "\x03":
            sys.exit(0)
        else:
            buffer += char
    draw()
