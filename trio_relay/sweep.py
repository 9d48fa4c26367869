"""Finding the processes a broker's workers left behind, and killing them.

Two nets, both needed because a wrapped program's own children are in neither the worker's
process group nor reach of ``PR_SET_PDEATHSIG``:

- :func:`kill_session`: when a worker ends, whatever is left in its program's session (the
  PTY worker reports that session in its hello) is killed.
- :func:`kill_run`: every worker's environment carries ``TRIO_RELAY_RUN=<run id>``, which
  its descendants inherit. A broker killed outright (SIGKILL) cannot clean up, so the next
  broker on the same state directory kills every process still tagged with the dead run's
  id. The tag, not a recorded pid, is the test, so a recycled pid is never mistaken for ours.

Both read ``/proc``; both only send SIGKILL and count what they signalled.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

RUN_ENV = "TRIO_RELAY_RUN"


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False  # it ended on its own meanwhile
    return True


def session_members(sid: int) -> list[int]:
    """Live processes whose session id is ``sid``."""
    members = []
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # gone while we looked
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(pid)
    return members


def kill_session(sid: int) -> int:
    """SIGKILL every process still in session ``sid``; returns how many were signalled."""
    killed = sum(_kill(pid) for pid in session_members(sid) if pid != os.getpid())
    if killed:
        log.info("killed %d process(es) left in session %d", killed, sid)
    return killed


def run_members(run_id: str) -> list[int]:
    """Processes whose environment carries ``TRIO_RELAY_RUN=run_id``."""
    tag = f"{RUN_ENV}={run_id}".encode()
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if tag in environ.split(b"\0"):
            found.append(pid)
    return found


def kill_run(run_id: str) -> int:
    """SIGKILL every process tagged with broker run ``run_id``; returns how many."""
    killed = sum(_kill(pid) for pid in run_members(run_id))
    if killed:
        log.warning("killed %d process(es) left behind by broker run %s", killed, run_id)
    return killed
