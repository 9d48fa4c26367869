"""What the PTY worker's process does to its imports before it imports anything else.

Each of its processes (one per agent by default) pays for every module it loads, so
:func:`install` keeps out what it does not need:

- the ``wcwidth`` package: ``import wcwidth`` resolves to :mod:`.termwidth` (see there);
- ``typing_extensions``: msgspec then takes ``get_type_hints``, ``Required`` and
  ``NotRequired`` from ``typing``, which has them since Python 3.11, and the worker never
  loads ``inspect`` (with ``ast``, ``dis`` and ``tokenize``), which only typing_extensions
  imported. No frame type of ours uses a typing_extensions construct;
- msgspec's inspect, JSON-schema, TOML and YAML modules are deferred until first used
  (:func:`trio_relay.lean_imports.defer`), which the worker never does;
- ``decimal`` and ``uuid`` (with ``platform``, which uuid imports): msgspec's C module
  imports both when it is imported, to know ``Decimal`` and ``UUID`` when it meets them.
  :func:`install` imports msgspec with placeholder modules in their place and removes them
  at once, so a later ``import decimal`` or ``import uuid`` gets the real one. msgspec in
  this process then takes no real Decimal or UUID for one (encoding one raises TypeError):
  the worker's frames hold neither. About 0.6 MB;
- ``json`` and ``copy`` (with ``weakref``), which pyte imports for its debugging screen
  and to save the cursor (``DECSC``): pyte is imported with stand-ins that import the real
  module on their first attribute read, seen by pyte alone (removed from ``sys.modules``
  right after). About 0.25 MB while no program saves its cursor.

Together with no dataclasses in the modules the worker imports, this is about 2.3 MB of
RSS per worker (``tools/bench_imports.py``). It affects the whole process, so only
programs that own their process call :func:`install`: ``python -m trio_relay.worker.pty``.
"""

from __future__ import annotations

import importlib
import sys
import types

from trio_relay import lean_imports
from trio_relay.worker.pty import termwidth

#: What msgspec's C module reads of these modules when it is imported.
MSGSPEC_READS = {"decimal": ("Decimal",), "uuid": ("UUID", "SafeUUID")}


def install() -> None:
    """Call it first: it also imports msgspec. A module already imported is left as it is;
    afterwards, ``import typing_extensions`` raises ImportError in this process. Raises
    what importing msgspec raises (AttributeError: a msgspec that reads more of decimal or
    uuid than :data:`MSGSPEC_READS`)."""
    termwidth.install()
    sys.modules.setdefault("typing_extensions", None)  # type: ignore[arg-type]
    for name in lean_imports.MSGSPEC_UNUSED:
        lean_imports.defer(name)
    _import_msgspec_with_placeholders()
    _import_pyte_with_stand_ins()


def _import_msgspec_with_placeholders() -> None:
    placeholders = {}
    for name, classes in MSGSPEC_READS.items():
        module = placeholders[name] = types.ModuleType(name, "a placeholder for msgspec")
        for cls in classes:  # SafeUUID.unknown: what msgspec gives a UUID it makes
            setattr(module, cls, type(cls, (), {"__module__": name, "unknown": None}))
    _import_with("msgspec", placeholders)


class _OnFirstUse(types.ModuleType):
    """Imports the module of its name on the first attribute read, and answers from it
    (AttributeError while it still stands in for that module in ``sys.modules``). Unlike
    :class:`trio_relay.lean_imports.DeferredModule` it is never left in ``sys.modules``,
    so it may stand in for a package (json) too."""

    def __getattr__(self, attr: str) -> object:
        if sys.modules.get(self.__name__) is self:
            raise AttributeError(f"{self.__name__!r} is not imported yet: {attr!r}")
        return getattr(importlib.import_module(self.__name__), attr)


#: What pyte imports at once but uses seldom.
PYTE_SELDOM_USED = ("json", "copy")


def _import_pyte_with_stand_ins() -> None:
    _import_with("pyte", {name: _OnFirstUse(name) for name in PYTE_SELDOM_USED})


def _import_with(name: str, stand_ins: dict[str, types.ModuleType]) -> None:
    """Import ``name`` (unless it is imported) with ``stand_ins`` in ``sys.modules`` for the
    modules not imported yet, and take them out right after: only ``name`` holds them."""
    if name in sys.modules:
        return
    placed = {key: module for key, module in stand_ins.items() if key not in sys.modules}
    sys.modules.update(placed)
    try:
        importlib.import_module(name)
    finally:
        for key, module in placed.items():
            if sys.modules.get(key) is module:
                del sys.modules[key]
