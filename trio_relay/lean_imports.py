"""Leaving out of our own processes' memory what they import but seldom use.

:func:`install` is called first by our entry points (the ``trio-relay`` command and the
broker it runs; ``trio-relay-agent-relay``), never on ``import trio_relay``: it changes the
whole process, which a library must not do to its host. The PTY worker imports neither
OpenSSL nor ssl: it defers only :data:`MSGSPEC_UNUSED` (see
:mod:`trio_relay.worker.pty.process_imports`).

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
    """Make ``_hashlib`` unimportable and defer :data:`DEFERRED`, each only if nothing
    imported it yet. Call it before importing Trio, trio-websocket or msgspec."""
    if "_hashlib" not in sys.modules and "hashlib" not in sys.modules:
        sys.modules["_hashlib"] = None  # type: ignore[assignment]
    for name in DEFERRED:
        defer(name)
