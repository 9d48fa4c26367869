"""Start a program as a daemon: in its own session, not our child, with its output in a file.

Pure process plumbing (no click, no Trio), for ``trio-relay up --detach``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def spawn_detached(argv: Sequence[str], output: Path) -> int:
    """Start ``argv`` (``argv[0]`` a path) as a daemon and return its pid.

    A short-lived intermediate child starts a new session and spawns the program there,
    then exits: the program is not our child (nothing of ours waits for it, and it
    outlives us) and has no controlling terminal. Its stdin is /dev/null; its stdout and
    stderr are appended to ``output``. Blocks until the intermediate child has exited.

    Returns 0 if the intermediate child could not start it (for example, ``output``
    cannot be opened). Raises OSError if no intermediate child can be forked.
    """
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the intermediate: never returns, whatever happens
        try:
            os.close(read_end)
            os.setsid()
            with open(output, "ab") as out:
                pid = os.posix_spawn(
                    argv[0],
                    list(argv),
                    os.environ,
                    file_actions=[
                        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                        (os.POSIX_SPAWN_DUP2, out.fileno(), 2),
                    ],
                )
            os.write(write_end, str(pid).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end) as pipe:
        return int(pipe.read() or 0)
