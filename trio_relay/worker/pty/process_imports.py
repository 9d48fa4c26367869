"""What the PTY worker's process does to its imports before it imports anything else.

Each of its processes (one per agent by default) pays for every module it loads, so
:func:`install` keeps out what it does not need:

- the ``wcwidth`` package: ``import wcwidth`` resolves to :mod:`.termwidth` (see there);
- ``typing_extensions``: msgspec then takes ``get_type_hints``, ``Required`` and
  ``NotRequired`` from ``typing``, which has them since Python 3.11, and the worker never
  loads ``inspect`` (with ``ast``, ``dis`` and ``tokenize``), which only typing_extensions
  imported. No frame type of ours uses a typing_extensions construct;
- msgspec's inspect, JSON-schema, TOML and YAML modules are deferred until first used
  (:func:`trio_relay.lean_imports.defer`), which the worker never does.

Together with no dataclasses in the modules the worker imports, this is about 1.6 MB of
RSS per worker (``tools/bench_imports.py``). It affects the whole process, so only
programs that own their process call :func:`install`: ``python -m trio_relay.worker.pty``.
"""

from __future__ import annotations

import sys

from trio_relay import lean_imports
from trio_relay.worker.pty import termwidth


def install() -> None:
    """Call it first. A module already imported is left as it is; afterwards,
    ``import typing_extensions`` raises ImportError in this process."""
    termwidth.install()
    sys.modules.setdefault("typing_extensions", None)  # type: ignore[arg-type]
    for name in lean_imports.MSGSPEC_UNUSED:
        lean_imports.defer(name)
