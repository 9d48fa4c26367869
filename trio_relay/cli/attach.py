"""Mirror an agent's terminal in yours, and optionally drive it (``trio-relay attach``).

The screen is painted from an ANSI snapshot, then kept up to date from the agent's raw
``agent_output`` events, starting exactly at the byte offset the snapshot reflects, so
nothing is shown twice or skipped. With ``drive``, your terminal is put in raw mode and
every keystroke goes to the agent, except the detach key (Ctrl-], as in telnet), which
leaves the agent running.
"""

from __future__ import annotations

import os
import termios
import tty
from dataclasses import dataclass
from typing import Any

import trio

from trio_relay.client import RelayClient
from trio_relay.wire import AgentExited, AgentOutput, Gap, ScreenSnapshot

DETACH_KEY = b"\x1d"  # Ctrl-]
#: What an attach leaves the terminal as it found it with, whatever the agent's program set:
#: attributes reset, the normal screen (not the alternate one), the cursor keys and keypad
#: in normal mode, mouse reports and bracketed paste off, the cursor visible, a clean line.
RESTORE = (
    b"\x1b[0m\x1b[?1049l\x1b[?1l\x1b>\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l"
    b"\x1b[?2004l\x1b[?25h\r\n"
)


def paint(snapshot: ScreenSnapshot) -> bytes:
    """The bytes that draw ``snapshot`` (an ANSI snapshot) on a terminal and place the cursor."""
    row, col = snapshot.cursor
    lines = snapshot.text.split("\n")
    body = "\r\n".join(lines)
    return f"\x1b[0m\x1b[H\x1b[2J{body}\x1b[{row + 1};{col + 1}H".encode()


def unseen_part(event: AgentOutput, offset: int) -> bytes:
    """The part of an output event past byte ``offset`` (what a snapshot did not show)."""
    data = event.data.encode()
    end = event.offset + len(data)
    if end <= offset:
        return b""
    return data[max(0, offset - event.offset) :]


@dataclass
class Attached:
    """How an attach ended: the agent's ``agent_exited`` event (None: detached or stopped
    watching), and what a person should know about the picture they saw (``notice``)."""

    exited: AgentExited | None = None
    notice: str | None = None


async def attach(
    client: RelayClient,
    name: str,
    *,
    drive: bool,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
) -> Attached:
    """Mirror agent ``name`` until it exits or, when driving, until the detach key is
    pressed. However it ends (cancellation included), the terminal is restored
    (:data:`RESTORE`). Raises RemoteError (for example not_found) and BrokerUnreachable
    like any client call."""
    # A Trio stream, not a blocking write: with --drive, stdin and stdout are one open
    # terminal, and reading it the Trio way makes both non-blocking.
    out = trio.lowlevel.FdStream(os.dup(stdout_fd))
    attached = Attached()
    try:
        attached.exited = await _mirror(client, name, drive, stdin_fd, out, attached, stdout_fd)
        return attached
    finally:
        with trio.CancelScope(shield=True):
            try:
                await out.send_all(RESTORE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the terminal is gone: nothing left to restore
            await out.aclose()


def size_notice(name: str, snapshot: ScreenSnapshot, fd: int) -> str | None:
    """What to tell a person whose terminal (``fd``) is smaller than the agent's, or None."""
    try:
        local = os.get_terminal_size(fd)
    except OSError:  # not a terminal
        return None
    if not local.lines or not local.columns:  # a terminal that does not know its size
        return None
    if local.lines >= snapshot.rows and local.columns >= snapshot.cols:
        return None
    return (
        f"the agent's terminal is {snapshot.rows}x{snapshot.cols}, larger than yours"
        f" ({local.lines}x{local.columns}): part of it was not shown"
        f" (make yours larger, or `trio-relay resize {name} {local.lines} {local.columns}`)"
    )


async def _mirror(
    client: RelayClient,
    name: str,
    drive: bool,
    stdin_fd: int,
    out: trio.lowlevel.FdStream,
    attached: Attached,
    stdout_fd: int,
) -> AgentExited | None:
    async with client.subscribe(
        agent=name, kinds=["agent_output", "agent_exited", "gap"]
    ) as events:
        snapshot = await client.snapshot(name, ansi=True)
        attached.notice = size_notice(name, snapshot, stdout_fd)
        await out.send_all(paint(snapshot))
        offset = snapshot.offset or 0
        async with trio.open_nursery() as nursery:
            outcome: list[AgentExited | None] = [None]
            if drive:
                nursery.start_soon(_forward_keys, client, name, stdin_fd, nursery.cancel_scope)
            async for event in events:
                if isinstance(event, AgentOutput):
                    chunk = unseen_part(event, offset)
                    offset = max(offset, event.offset + len(event.data.encode()))
                    if chunk:
                        await out.send_all(chunk)
                elif isinstance(event, Gap):  # fell behind: repaint from a fresh snapshot
                    snapshot = await client.snapshot(name, ansi=True)
                    await out.send_all(paint(snapshot))
                    offset = snapshot.offset or 0
                elif isinstance(event, AgentExited):
                    outcome[0] = event
                    break
            nursery.cancel_scope.cancel()
    return outcome[0]


async def _forward_keys(client: RelayClient, name: str, fd: int, done: trio.CancelScope) -> None:
    """Send what is typed to the agent until the detach key; then end the attach."""
    stream = trio.lowlevel.FdStream(os.dup(fd))
    try:
        while True:
            data = await stream.receive_some(4096)
            if not data:
                break
            before, detach, _ = data.partition(DETACH_KEY)
            if before:
                await client.input(name, before.decode("utf-8", "replace"))
            if detach:
                break
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
    done.cancel()


class RawTerminal:
    """Puts a terminal in raw mode for the block (if it is a terminal), restoring it after."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[Any] | None = None

    def __enter__(self) -> RawTerminal:
        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
