"""The PTY worker's own CPU priority: below its program's, the broker's and the user's.

A worker leads a session of its own and its program another, and where the kernel groups
processes by session for scheduling (``sched_autogroup_enabled``, on by default in most
distributions), CPU time is shared among sessions first. Fifty busy agents are then a
hundred groups beside the broker's one, and once they fill the cores the broker gets a
hundredth of them: its answers take seconds. A nice value alone does nothing across
groups, so the worker raises both its own nice value and its session's autogroup's
(``/proc/self/autogroup``). Its program keeps its own priority: it is the user's work, the
worker only relays it. Where the cores are not full, nothing changes.

The kernel lets a process without CAP_SYS_ADMIN set an autogroup's nice value only once per
100 ms, machine-wide (EAGAIN otherwise), so workers starting together take turns:
:class:`StepAside` retries on the worker's loop, never delaying its hello.
Blocking file I/O on /proc, a moment each try.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

MAX_NICE = 19
AUTOGROUP = "/proc/self/autogroup"
#: How long the worker keeps trying while the kernel says EAGAIN, in seconds.
GIVE_UP_AFTER = 60.0


class StepAside:
    """Lower this process's priority by ``nice`` (capped at 19; 0: leave it), once its
    program has started (which would otherwise inherit it): its nice value at once
    (:meth:`begin`), and its autogroup's if it leads its session (as the broker starts it;
    run by hand in a terminal, the group is the terminal's), retried by :meth:`retry` at
    :attr:`next_try` while the kernel says EAGAIN. What cannot be done goes to ``log``; a
    kernel without autogroups is not a problem."""

    def __init__(self, nice: int, log: Callable[[str], None]) -> None:
        self.nice, self.log = nice, log
        #: When to try the autogroup again (``time.monotonic()``), or None: done.
        self.next_try: float | None = None
        self._until = 0.0
        # Workers started together retry at different paces, 100 to 400 ms.
        self._pause = 0.1 + (os.getpid() % 7) * 0.05

    def begin(self, now: float) -> None:
        """Lower the nice value now, and try the autogroup's (see :meth:`retry`)."""
        if self.nice <= 0:
            return
        try:
            mine = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, 0) + self.nice)
            os.setpriority(os.PRIO_PROCESS, 0, mine)
        except OSError as exc:
            self.log(f"cannot lower its own priority: {exc}")
            return
        if os.getsid(0) == os.getpid():
            self._until = now + GIVE_UP_AFTER
            self.retry(now)

    def retry(self, now: float) -> None:
        """Try to lower the autogroup's priority; on EAGAIN set :attr:`next_try`."""
        self.next_try = None
        try:
            with open(AUTOGROUP) as f:  # "/autogroup-N nice K"
                group = int(f.read().split()[-1])
            with open(AUTOGROUP, "w") as f:
                f.write(str(min(MAX_NICE, group + self.nice)))
        except FileNotFoundError:
            pass  # a kernel built without autogroups
        except OSError as exc:
            if exc.errno == errno.EAGAIN and now < self._until:
                self.next_try = now + self._pause  # another process's turn: try again
            else:
                self.log(f"cannot lower its session's priority ({AUTOGROUP}): {exc}")
        except (ValueError, IndexError) as exc:
            self.log(f"cannot read its session's priority ({AUTOGROUP}): {exc!r}")
