"""Reading ``/proc``: a process's stat line, its environment, its open descriptors.

Plain blocking reads with no Trio (the worker imports this too): run the scans off the Trio
thread. A process that ends while it is read is skipped or reported as gone (None), never
an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple


class ProcStat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` that are read here."""

    state: str
    ppid: int
    pgrp: int
    session: int

    @property
    def zombie(self) -> bool:
        return self.state == "Z"


def process_stat(pid: int | str) -> ProcStat | None:
    """``/proc/<pid>/stat``, or None if there is no such process (any more)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name, in parentheses, may hold anything: the fields follow its last ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    return ProcStat(fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]))


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but unreaped, counts as gone)."""
    stat = process_stat(pid)
    return stat is not None and not stat.zombie


def pids() -> Iterator[int]:
    """Every process id in ``/proc``."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def session_members(sid: int, *, zombies: bool = False) -> list[int]:
    """The processes whose session id is ``sid``, in ``/proc`` order; zombies only if
    asked for."""
    members = []
    for pid in pids():
        stat = process_stat(pid)
        if stat is not None and stat.session == sid and (zombies or not stat.zombie):
            members.append(pid)
    return members


def environ(pid: int) -> list[bytes] | None:
    """The ``NAME=value`` entries of ``/proc/<pid>/environ``, or None if it is gone or not
    ours to read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def holds(pid: int, target: str) -> bool:
    """Whether one of ``pid``'s open descriptors links to ``target`` (``socket:[inode]``)."""
    try:
        fds = os.scandir(f"/proc/{pid}/fd")
    except OSError:
        return False
    with fds:
        for fd in fds:
            try:
                if os.readlink(fd.path) == target:
                    return True
            except OSError:
                continue  # closed meanwhile
    return False


#: The number of the read system call, by machine (``/proc/<pid>/syscall`` gives numbers).
_READ_SYSCALL = {"x86_64": 0, "aarch64": 63, "riscv64": 63, "i686": 3, "armv7l": 3}


def reads_terminal(pid: int, *, descendants: int = 16) -> bool:
    """Whether ``pid``, or one of its first ``descendants`` descendants (a shell's child),
    is blocked in ``read`` on a terminal (``/dev/pts/N`` or ``/dev/tty*``): it waits for
    input. False if that cannot be told (gone, not ours to look at, another machine)."""
    todo, seen = [pid], 0
    while todo and seen <= descendants:
        current = todo.pop(0)
        seen += 1
        if _blocked_reading_terminal(current):
            return True
        try:
            with open(f"/proc/{current}/task/{current}/children") as f:
                todo += [int(child) for child in f.read().split()]
        except (OSError, ValueError):
            continue
    return False


def _blocked_reading_terminal(pid: int) -> bool:
    number = _READ_SYSCALL.get(os.uname().machine)
    if number is None:
        return False
    try:
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read().split()
        if len(fields) < 2 or fields[0] != str(number):
            return False
        target = os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}")
    except (OSError, ValueError):
        return False
    return target.startswith(("/dev/pts/", "/dev/tty"))
