"""The death signal: a child that gets SIGKILL when the thread that forked it ends.

``PR_SET_PDEATHSIG`` follows the *thread* that forked, not the process: fork from a thread
that lives as long as the parent does.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1


def death_signal(parent_pid: int) -> Callable[[], bool]:
    """Prepare, in the parent before it forks, what the child calls right after the fork.

    The returned ``arm()`` asks the kernel for SIGKILL when the parent ends and returns
    whether ``parent_pid`` is still the parent: False means it died before the request took
    effect, and the child should exit at once. ``arm()`` raises OSError if the kernel
    refuses. ctypes is loaded by this call, not at module import (0.4 MB of RSS): a
    threaded parent calls it before the fork (a forked child of one must not import); a
    single-threaded one may call it in the child, keeping ctypes out of its own memory.
    """
    import ctypes

    libc = _libc()

    def arm() -> bool:
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        return os.getppid() == parent_pid

    return arm


def _libc() -> Any:
    """The C library, loaded once per process."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


_LIBC: Any = None
