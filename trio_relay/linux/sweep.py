"""Finding the processes a broker's workers left behind, and killing them.

Three nets, all needed because a wrapped program's own children are in neither the worker's
process group nor reach of ``PR_SET_PDEATHSIG``:

- :func:`kill_session`: when a worker ends, whatever is left in its program's session (the
  PTY worker reports that session in its hello, and the broker checks the claim with
  :func:`is_child_session` before it trusts it) is killed.
- :func:`kill_tagged`: every worker's environment carries ``TRIO_RELAY_RUN=<run id>`` and
  ``TRIO_RELAY_AGENT=<name>``, which its descendants inherit; when the worker ends, whatever
  still carries both (a daemon that left the session, say) is killed.
- :func:`kill_run`: a broker killed outright (SIGKILL) cannot clean up, so the next broker on
  the same state directory kills every process still tagged with the dead run's id.

The tags, not recorded pids, are the test, so a recycled pid is never mistaken for ours.
All read ``/proc`` and send only SIGKILL. A process the broker may not signal (another
user's, such as a ``sudo`` in an agent's terminal) is left alone and reported, never an error.
"""

from __future__ import annotations

import logging
import os
import signal

from trio_relay.linux.procfs import environ, pids, process_stat, session_members

log = logging.getLogger(__name__)

RUN_ENV = "TRIO_RELAY_RUN"
AGENT_ENV = "TRIO_RELAY_AGENT"


def _kill(pid: int, refused: list[str]) -> bool:
    """SIGKILL ``pid``; a process we may not signal goes into ``refused``."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False  # it ended on its own meanwhile
    except PermissionError as exc:
        refused.append(f"pid {pid}: {exc.strerror}")
        return False
    return True


def is_child_session(parent: int, leader: int) -> bool:
    """Whether ``leader`` is a child of ``parent`` that leads a session of its own (what a
    wrapper's hello claims of its program)."""
    stat = process_stat(leader)
    return stat is not None and leader != parent and stat.ppid == parent and stat.session == leader


def kill_session(sid: int) -> list[str]:
    """SIGKILL every process still in session ``sid``. Returns those we may not signal."""
    refused: list[str] = []
    killed = sum(_kill(pid, refused) for pid in session_members(sid) if pid != os.getpid())
    if killed:
        log.info("killed %d process(es) left in session %d", killed, sid)
    if refused:
        log.warning("not allowed to kill what is left in session %d: %s", sid, "; ".join(refused))
    return refused


def tagged(*tags: str) -> list[int]:
    """Processes (but this one) whose environment carries every one of ``tags``
    (``NAME=value`` strings)."""
    wanted = {tag.encode() for tag in tags}
    found = []
    for pid in pids():
        if pid != os.getpid() and wanted <= set(environ(pid) or ()):
            found.append(pid)
    return found


def run_members(run_id: str) -> list[int]:
    """Processes whose environment carries ``TRIO_RELAY_RUN=run_id``."""
    return tagged(f"{RUN_ENV}={run_id}")


def kill_tagged(run_id: str, agent: str) -> list[str]:
    """SIGKILL what carries both agent ``agent``'s and broker run ``run_id``'s tags.
    Returns those we may not signal."""
    refused: list[str] = []
    killed = sum(
        _kill(pid, refused) for pid in tagged(f"{RUN_ENV}={run_id}", f"{AGENT_ENV}={agent}")
    )
    if killed:
        log.info("killed %d process(es) of %s that had left its session", killed, agent)
    if refused:
        log.warning("not allowed to kill what %s left: %s", agent, "; ".join(refused))
    return refused


def kill_run(run_id: str) -> int:
    """SIGKILL every process tagged with broker run ``run_id``; returns how many."""
    refused: list[str] = []
    killed = sum(_kill(pid, refused) for pid in run_members(run_id))
    if killed:
        log.warning("killed %d process(es) left behind by broker run %s", killed, run_id)
    if refused:
        log.warning("not allowed to kill what broker run %s left: %s", run_id, "; ".join(refused))
    return killed
