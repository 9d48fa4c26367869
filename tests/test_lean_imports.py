"""What our processes leave out of memory (trio_relay.lean_imports), and that nothing they
use goes missing. install() changes a whole process, so it runs in child processes here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trio_relay import lean_imports


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_after_install_trio_and_msgspec_import_without_openssl_and_tls_still_works() -> None:
    out = run_python(
        """
        from trio_relay import lean_imports
        lean_imports.install()
        import sys, hashlib, hmac, secrets
        import trio, trio_websocket, msgspec
        print(sorted(m for m in ("_ssl", "_hashlib") if sys.modules.get(m)))
        print(type(msgspec.inspect).__name__, type(msgspec.toml).__name__)
        print(hashlib.sha256(b"abc").hexdigest()[:16], hmac.new(b"k", b"m", "sha256").hexdigest()[:8])
        print(len(secrets.token_urlsafe(32)), hmac.compare_digest(b"a", b"a"))
        context = trio._ssl._stdlib_ssl.create_default_context()  # the first use imports ssl
        import ssl
        from ssl import SSLContext
        print(isinstance(context, ssl.SSLContext), SSLContext is ssl.SSLContext, "_ssl" in sys.modules)
        print(msgspec.inspect.type_info(int))
        """
    )
    assert out.splitlines() == [
        "[]",
        "DeferredModule DeferredModule",
        "ba7816bf8f01cfea b60090e3",  # SHA-256 of "abc"; HMAC-SHA-256 of "m" under "k"
        "43 True",
        "True True True",
        "IntType(gt=None, ge=None, lt=None, le=None, multiple_of=None)",
    ]


def test_install_leaves_alone_what_is_imported_already() -> None:
    out = run_python(
        """
        import hashlib, ssl, sys
        from trio_relay import lean_imports
        lean_imports.install()
        print(sys.modules["_hashlib"] is not None, type(sys.modules["ssl"]).__name__)
        """
    )
    assert out.split() == ["True", "module"]


def test_a_deferred_module_that_fails_raises_at_each_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lean_probe_broken.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lean_probe_broken", raising=False)
    try:
        assert lean_imports.defer("lean_probe_broken")
        import lean_probe_broken  # type: ignore[import-not-found]  # binds the stand-in

        for _ in range(2):
            with pytest.raises(ImportError, match="broken on purpose"):
                lean_probe_broken.anything  # noqa: B018
        assert sys.modules["lean_probe_broken"] is lean_probe_broken
    finally:
        sys.modules.pop("lean_probe_broken", None)


def test_a_deferred_module_loads_once_and_then_is_the_real_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lean_probe_counter.py").write_text(
        "import builtins\nbuiltins.lean_probe_loads = getattr(builtins, 'lean_probe_loads', 0) + 1\n"
        "VALUE = 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert lean_imports.defer("lean_probe_counter")
        import builtins

        import lean_probe_counter  # type: ignore[import-not-found]

        assert not hasattr(builtins, "lean_probe_loads")  # nothing ran yet
        assert lean_probe_counter.VALUE == 42
        assert lean_probe_counter.VALUE == 42
        real = sys.modules["lean_probe_counter"]
        assert real is not lean_probe_counter and real.VALUE == 42
        assert builtins.lean_probe_loads == 1  # type: ignore[attr-defined]
    finally:
        sys.modules.pop("lean_probe_counter", None)
        monkeypatch.delattr("builtins.lean_probe_loads", raising=False)


def test_a_deferred_module_may_read_another_while_it_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lean_probe_first.py").write_text(
        "import lean_probe_second\nVALUE = lean_probe_second.VALUE + 1\n"
    )
    (tmp_path / "lean_probe_second.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert lean_imports.defer("lean_probe_first") and lean_imports.defer("lean_probe_second")
        import lean_probe_first  # type: ignore[import-not-found]

        assert lean_probe_first.VALUE == 2  # no deadlock on the loading lock
    finally:
        sys.modules.pop("lean_probe_first", None)
        sys.modules.pop("lean_probe_second", None)


def test_packages_are_not_deferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lean_probe_package").mkdir()
    (tmp_path / "lean_probe_package" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not lean_imports.defer("lean_probe_package")
    assert "lean_probe_package" not in sys.modules


def test_a_module_that_cannot_be_found_is_not_deferred() -> None:
    assert not lean_imports.defer("no_such_module_for_lean_imports")
    assert "no_such_module_for_lean_imports" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        import no_such_module_for_lean_imports  # type: ignore[import-not-found]  # noqa: F401


def test_after_install_the_modules_imported_with_stand_ins_are_absent_then_real() -> None:
    out = run_python(
        """
        from trio_relay import lean_imports
        lean_imports.install()
        import sys
        LEFT_OUT = ("importlib.metadata", "email", "zipfile", "typing_extensions", "decimal")
        print([m for m in LEFT_OUT if m in sys.modules])
        import trio, trio_websocket, msgspec
        print(trio_websocket._impl._IS_TRIO_MULTI_ERROR, trio_websocket._impl.version("trio") == trio.__version__)
        import importlib.metadata, decimal, typing_extensions
        print(importlib.metadata.version("trio") == trio.__version__, decimal.Decimal("1.5") + 1)
        print(msgspec.json.encode({"a": [1, "b"]}), msgspec.json.decode(b'{"x": 2.5}'))
        try:
            msgspec.json.encode(decimal.Decimal("1"))
        except TypeError:
            print("no Decimal")
        print(type(typing_extensions).__name__, [type(sys.modules[m]).__name__ for m in LEFT_OUT[:2]])
        """
    )
    assert out.splitlines() == [
        "[]",
        "False True",  # trio-websocket read Trio's version: the one its metadata holds
        "True 2.5",
        "b'{\"a\":[1,\"b\"]}' {'x': 2.5}",
        "no Decimal",  # msgspec knows the placeholder, not the real Decimal
        "module ['module', 'module']",
    ]


def test_the_brokers_program_imports_no_command_line() -> None:
    """What ``trio-relay up`` execs into (trio_relay.broker_process) imports the broker,
    not click or the commands' modules: 1.5 MB of RSS (tools/bench_imports.py)."""
    out = run_python(
        """
        from trio_relay import lean_imports
        lean_imports.install()
        import sys, trio_relay.broker_process, trio_relay.daemon
        cli = [m for m in sys.modules if m.split(".")[:2] in (["click"], ["trio_relay", "cli"])]
        print(sorted(cli), "click.core" in sys.modules)
        """
    )
    assert out.strip() == "[] False"


def test_what_is_imported_on_first_use_works_when_used() -> None:
    out = run_python(
        """
        from trio_relay import lean_imports
        lean_imports.install()
        import sys, logging, logging.handlers, shutil, trio
        print([m for m in ("bz2", "lzma", "pickle", "idna") if m in sys.modules])  # no stand-in either
        import pickle
        print(sorted(name for name, _ in shutil.get_archive_formats()))
        record = logging.LogRecord("n", logging.INFO, "p", 1, "hello", None, None)
        frame = logging.handlers.SocketHandler("localhost", 1).makePickle(record)
        print(pickle.loads(frame[4:])["msg"], type(sys.modules["pickle"]).__name__)
        from trio._socket import _idna  # what trio.socket.getaddrinfo encodes a host with
        print(_idna.encode("bücher.example", uts46=True), type(sys.modules["idna"]).__name__)
        """
    )
    assert out.splitlines() == [
        "[]",  # none of them was loaded by install()
        "['bztar', 'gztar', 'tar', 'xztar', 'zip']",
        "hello module",
        "b'xn--bcher-kva.example' module",
    ]


ARENAS = """
import ctypes, sys, threading
from trio_relay.linux.malloc_arenas import one_malloc_arena
agreed = one_malloc_arena() if sys.argv[1:] == ["one"] else None
kept = []
def allocate():
    kept.append([bytearray(4096) for _ in range(64)])  # malloc'd from this thread's arena
threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(agreed, flush=True)
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" paragraph on stderr per arena
"""


@pytest.mark.skipif(
    not hasattr(__import__("ctypes").CDLL(None), "malloc_stats"), reason="not glibc's malloc"
)
@pytest.mark.parametrize("choice", ["one", "default"])
def test_one_malloc_arena_keeps_the_threads_allocations_in_one_arena(choice: str) -> None:
    """What the broker's program calls first (0.4 MB of its RSS): threads that allocate
    share the main arena, where glibc would give each its own."""
    result = subprocess.run(
        [sys.executable, "-c", ARENAS, choice], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    arenas = result.stderr.count("Arena ")
    if choice == "one":
        assert (result.stdout.strip(), arenas) == ("True", 1)
    else:
        assert arenas > 1
