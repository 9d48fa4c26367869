"""What the PTY worker's process does to its imports before it imports anything else.

Each of its processes (one per agent by default) pays for every module it loads, so
:func:`install` keeps out what it does not need:

- the ``wcwidth`` package: ``import wcwidth`` resolves to :mod:`.termwidth` (see there);
- msgspec's inspect, JSON-schema, TOML and YAML modules are deferred until first used
  (:func:`trio_relay.lean_imports.defer`), which the worker never does;
- ``typing_extensions``, ``decimal`` and ``uuid`` (with ``inspect``, ``ast``, ``dis``,
  ``tokenize`` and ``platform``): msgspec is imported without them
  (:func:`trio_relay.lean_imports.import_msgspec`). The worker's frames hold no Decimal or
  UUID and use no typing_extensions construct. About 0.6 MB;
- ``json`` and ``copy`` (with ``weakref``), which pyte imports for its debugging screen
  and to save the cursor (``DECSC``): pyte is imported with stand-ins that import the real
  module on their first attribute read, seen by pyte alone
  (:class:`trio_relay.lean_imports.OnFirstUse`). About 0.25 MB while no program saves its cursor.

Together with no dataclasses in the modules the worker imports, this is about 2.3 MB of
RSS per worker (``tools/bench_imports.py``). It affects the whole process, so only
programs that own their process call :func:`install`: ``python -m trio_relay.worker.pty``.
"""

from __future__ import annotations

from trio_relay import lean_imports
from trio_relay.worker.pty import termwidth


def install() -> None:
    """Call it first: it also imports msgspec and pyte. A module already imported is left
    as it is. Raises what importing msgspec raises (see
    :func:`trio_relay.lean_imports.import_msgspec`)."""
    termwidth.install()
    for name in lean_imports.MSGSPEC_UNUSED:
        lean_imports.defer(name)
    lean_imports.import_msgspec()
    lean_imports.import_with(
        "pyte", {name: lean_imports.OnFirstUse(name) for name in PYTE_SELDOM_USED}
    )


#: What pyte imports at once but uses seldom.
PYTE_SELDOM_USED = ("json", "copy")
