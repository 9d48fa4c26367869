"""One malloc arena for the whole process.

glibc gives each thread that allocates its own arena (up to eight per core), and every
arena keeps pages of its own: 0.4 MB of RSS in the broker, whose threads (Trio's thread
cache, for SQLite) allocate little. The broker's program calls :func:`one_malloc_arena`
first, before any thread starts; a library must not, as it changes the whole process.
"""

from __future__ import annotations

_M_ARENA_MAX = -8  # glibc's malloc.h


def one_malloc_arena() -> bool:
    """Ask the C library to keep one arena for all threads; return whether it agreed.

    False with a C library that has no ``mallopt`` (musl) or refuses the setting: the
    process then runs as before. Raises nothing else."""
    import ctypes  # Trio's thread cache imports it anyway

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt is not None and mallopt(_M_ARENA_MAX, 1) == 1
