"""Leaving out of our own processes' memory what they import but seldom use.

:func:`install` is called first by our entry points (the ``trio-relay`` command and the
broker it runs; ``trio-relay-agent-relay``), never on ``import trio_relay``: it changes the
whole process, which a library must not do to its host. The PTY worker imports neither
OpenSSL nor ssl: it uses :func:`defer`, :func:`import_msgspec` and :func:`import_with`
alone (see :mod:`trio_relay.worker.pty.process_imports`).

- **OpenSSL's hashes.** ``_hashlib`` is made unimportable, so :mod:`hashlib` and
  :mod:`hmac` use CPython's own SHA-1, SHA-2, SHA-3, BLAKE2 and MD5. The broker hashes a
  WebSocket key per connection and an agent's token per request, a few bytes each. Loading
  OpenSSL's libcrypto costs a process 3.5 MB of RSS.
- **Deferred until first used:** :mod:`ssl` (Trio and trio-websocket import it for TLS,
  which our processes do not use: the cluster's TLS is libpq's own; another 2 MB) and
  msgspec's ``inspect``, JSON-schema, TOML and YAML modules, which msgspec imports whether
  used or not. Such a module is bound at once to a stand-in; the first attribute read
  imports the real module and copies its namespace into the stand-in, so a user of it sees
  no difference but the delay. Two module objects exist then, the stand-in and the real
  one (in ``sys.modules``): a name set on one later is not seen on the other, and
  ``importlib.reload`` of a stand-in fails. A package is never deferred (its submodules
  could be imported twice).
- **Imported with stand-ins** (:func:`import_with`: only the importing module sees them):
  msgspec without ``typing_extensions`` (it then takes ``get_type_hints``, ``Required`` and
  ``NotRequired`` from ``typing``, which has them since Python 3.11) and with placeholder
  ``decimal`` and ``uuid`` modules (:func:`import_msgspec`); trio-websocket with an
  ``importlib.metadata`` that knows Trio's version, all it asks of it (it loads ``email``,
  ``zipfile`` and ``csv``; 1.5 MB); and :data:`ON_FIRST_USE`, with stand-ins that import
  the real module on first use (:class:`OnFirstUse`): shutil's ``bz2`` and ``lzma`` (for
  its archives; Trio imports shutil), logging.handlers' ``pickle`` (for its
  SocketHandler), 0.6 MB, and Trio's ``idna`` (for host names that are not ASCII), 0.2 MB.

Measured by ``tools/bench_imports.py`` (each module alone, and the broker's and the PTY
worker's imports with and without this) and ``tools/bench_scale.py`` (the running broker).
"""

from __future__ import annotations

import _thread
import importlib
import importlib.machinery
import importlib.util
import sys
import types

MSGSPEC_UNUSED = ("msgspec.inspect", "msgspec._json_schema", "msgspec.toml", "msgspec.yaml")
"""The modules msgspec imports whether used or not, which ours never use at start."""
DEFERRED = ("ssl", *MSGSPEC_UNUSED)
"""The modules :func:`install` defers."""
MSGSPEC_READS = {"decimal": ("Decimal",), "uuid": ("UUID", "SafeUUID")}
"""What msgspec's C module reads of these modules when it is imported."""
ON_FIRST_USE = {"shutil": ("bz2", "lzma"), "logging.handlers": ("pickle",), "trio": ("idna",)}
"""Modules :func:`install` imports with stand-ins for what they import at once but seldom
use (the archives of shutil, the SocketHandler of logging.handlers, Trio's encoding of a
host name that is not ASCII)."""

_load_lock = _thread.RLock()  # re-entrant: a module imported may read another stand-in


class DeferredModule(types.ModuleType):
    """A stand-in bound in ``sys.modules`` for a module not imported yet.

    Reading any attribute it does not have imports the real module (under a re-entrant
    lock, so two threads import it once), puts that in ``sys.modules``, copies its
    namespace into the stand-in and answers from it. Raises what the real import raises,
    leaving the stand-in in place so that a later read tries again.
    """

    def __getattr__(self, attr: str) -> object:
        return getattr(_load(self), attr)


def _load(stand_in: DeferredModule) -> types.ModuleType:
    name = stand_in.__name__
    with _load_lock:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
            try:
                real = importlib.import_module(name)
            except BaseException:
                sys.modules.setdefault(name, stand_in)
                raise
            stand_in.__dict__.update(real.__dict__)
        return sys.modules[name]


def defer(name: str) -> bool:
    """Bind ``name`` to a :class:`DeferredModule` unless it is imported already, cannot be
    found or is a package (then nothing changes, and an import of it behaves as before).
    A submodule's package is not imported. Returns whether it was deferred."""
    if name in sys.modules:
        return False
    package, _, _ = name.rpartition(".")
    if package:
        if package in sys.modules:
            return False  # its package is imported: deferring could miss its binding
        package_spec = importlib.util.find_spec(package)
        if package_spec is None or package_spec.submodule_search_locations is None:
            return False
        spec = importlib.machinery.PathFinder.find_spec(
            name, list(package_spec.submodule_search_locations)
        )
    else:
        spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is not None:
        return False
    stand_in = DeferredModule(name)
    stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = stand_in
    return True


def install() -> None:
    """Make ``_hashlib`` unimportable, defer :data:`DEFERRED`, and import
    :data:`ON_FIRST_USE`, msgspec (:func:`import_msgspec`) and trio-websocket (with Trio)
    lean; each only if nothing imported it yet. Call it first."""
    if "_hashlib" not in sys.modules and "hashlib" not in sys.modules:
        sys.modules["_hashlib"] = None  # type: ignore[assignment]
    for name in DEFERRED:
        defer(name)
    for name, seldom_used in ON_FIRST_USE.items():
        import_with(name, {module: OnFirstUse(module) for module in seldom_used})
    import_msgspec()
    import_with("trio_websocket", {"importlib.metadata": _TrioVersionOnly("importlib.metadata")})


def import_with(name: str, stand_ins: dict[str, types.ModuleType | None]) -> None:
    """Import ``name`` (unless it is imported) with ``stand_ins`` in ``sys.modules`` for the
    modules not imported yet (None: an import of it raises ImportError), and take them out
    right after: only ``name`` holds them, and a later import gets the real module. Raises
    what importing ``name`` raises."""
    if name in sys.modules:
        return
    placed = {key: module for key, module in stand_ins.items() if key not in sys.modules}
    sys.modules.update(placed)  # type: ignore[arg-type]
    try:
        importlib.import_module(name)
    finally:
        for key, module in placed.items():
            if sys.modules.get(key, ...) is module:
                del sys.modules[key]


def import_msgspec() -> None:
    """Import msgspec (unless it is imported) without ``typing_extensions``, and with
    placeholder ``decimal`` and ``uuid`` modules: its C module imports both to know
    ``Decimal`` and ``UUID`` when it meets them, which our frames and messages never hold.
    In this process msgspec then encodes no real Decimal or UUID (TypeError) and decodes
    none; ``import decimal``, ``uuid`` or ``typing_extensions`` later gets the real module.
    About 0.8 MB (with ``inspect``, which only typing_extensions imported). Raises
    AttributeError if msgspec reads more of them than :data:`MSGSPEC_READS`."""
    placeholders: dict[str, types.ModuleType | None] = {"typing_extensions": None}
    for name, classes in MSGSPEC_READS.items():
        module = placeholders[name] = types.ModuleType(name, "a placeholder for msgspec")
        for cls in classes:  # SafeUUID.unknown: what msgspec gives a UUID it makes
            setattr(module, cls, type(cls, (), {"__module__": name, "unknown": None}))
    import_with("msgspec", placeholders)


class OnFirstUse(types.ModuleType):
    """A stand-in for :func:`import_with` that imports the module of its name on the first
    attribute read and answers from it (AttributeError while it still stands in for that
    module in ``sys.modules``). Unlike :class:`DeferredModule` it is never left in
    ``sys.modules``, so it may stand in for a package too."""

    def __getattr__(self, attr: str) -> object:
        if sys.modules.get(self.__name__) is self:
            raise AttributeError(f"{self.__name__!r} is not imported yet: {attr!r}")
        return getattr(importlib.import_module(self.__name__), attr)


class _TrioVersionOnly(OnFirstUse):
    """``importlib.metadata`` for trio-websocket, which reads Trio's version at import."""

    def version(self, distribution_name: str) -> str:
        trio = sys.modules.get("trio")  # trio-websocket imports Trio first
        if distribution_name == "trio" and trio is not None:
            return trio.__version__  # type: ignore[no-any-return]  # what its metadata holds
        return self.__getattr__("version")(distribution_name)  # type: ignore[no-any-return]
