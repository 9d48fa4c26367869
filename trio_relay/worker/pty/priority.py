"""The PTY worker's own CPU priority: below its program's, the broker's and the user's.

A worker leads a session of its own and its program another, and where the kernel groups
processes by session for scheduling (``sched_autogroup_enabled``, on by default in most
distributions), CPU time is shared among sessions first. Fifty busy agents are then a
hundred groups beside the broker's one, and once they fill the cores the broker gets a
hundredth of them: its answers take seconds. A nice value alone does nothing across
groups, so the worker raises both its own nice value and its session's autogroup's
(``/proc/self/autogroup``). Its program keeps its own priority: it is the user's work, the
worker only relays it. Where the cores are not full, nothing changes.

Called once, after the program was started (which would otherwise inherit the nice
value). Blocking file I/O on /proc, a moment.
"""

from __future__ import annotations

import os

MAX_NICE = 19
AUTOGROUP = "/proc/self/autogroup"


def step_aside(nice: int) -> str | None:
    """Raise this process's nice value by ``nice`` (capped at 19; 0: leave it), and its
    autogroup's if it leads its session (as the broker starts it; run by hand in a terminal,
    the group is the terminal's). Returns what could not be done, for the log, or None; a
    kernel without autogroups is not a problem."""
    if nice <= 0:
        return None
    try:
        mine = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, 0) + nice)
        os.setpriority(os.PRIO_PROCESS, 0, mine)
    except OSError as exc:
        return f"cannot lower its own priority: {exc}"
    if os.getsid(0) != os.getpid():
        return None  # run by hand in someone's session: its autogroup is not ours to lower
    try:
        with open(AUTOGROUP) as f:  # "/autogroup-N nice K"
            group = int(f.read().split()[-1])
        with open(AUTOGROUP, "w") as f:
            f.write(str(min(MAX_NICE, group + nice)))
    except FileNotFoundError:
        return None  # a kernel built without autogroups
    except (OSError, ValueError, IndexError) as exc:
        return f"cannot lower its session's priority ({AUTOGROUP}): {exc}"
    return None
