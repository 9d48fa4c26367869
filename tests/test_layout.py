"""The layout carries the architecture: imports flow one way, and this test says which.

Every ``import`` in the package counts, including those inside functions and under
``TYPE_CHECKING``: a room that may not import another may not even name it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trio_relay"

#: room -> the rooms of ours it may import (besides itself). A room is a subpackage or a
#: top-level module of trio_relay.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "lean_imports": set(),
    "wire": {"errors"},
    "linux": {"errors"},
    "profiles": {"errors"},
    "worker": {"errors", "wire", "linux", "profiles", "lean_imports"},
    "state": {"errors", "linux"},
    "store": {"errors", "wire"},
    "broker": {"errors", "wire", "linux", "store", "state"},
    "control": {"errors", "wire", "linux", "broker", "profiles", "__init__"},
    "address": {"errors", "linux", "state"},
    "event_stream": {"errors", "wire"},
    "client": {"errors", "wire", "address", "event_stream"},
    "daemonize": set(),
    "daemon": {
        *("errors", "wire", "linux", "state", "broker", "control", "client", "profiles"),
        *("http", "cluster"),
    },
    "agent_tools": {"errors", "wire", "client", "__init__"},
    "http": {"errors", "wire", "linux", "broker", "control", "__init__"},
    "cluster": {"errors", "wire", "broker", "client"},
    "cli": {
        *("errors", "wire", "linux", "state", "address", "client", "profiles", "agent_tools"),
        *("daemon", "daemonize", "broker_process", "__init__"),
    },
    "broker_process": {"lean_imports", "errors", "linux", "state", "daemon"},
    "__init__": {"errors", "wire", "broker", "client"},
    "entry": {"lean_imports", "cli"},
    "__main__": {"entry"},
}
#: Rooms that must never import Trio (or anything that imports it).
NO_TRIO = {"errors", "wire", "linux", "profiles", "worker", "lean_imports"}
TRIO_MODULES = {"trio", "trio_websocket", "anyio"}


def room_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports_of(path: Path, package: str) -> list[tuple[int, str]]:
    """Every absolute module name ``path`` imports, with its line (relative imports resolved
    against ``package``)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module == "trio_relay":  # from trio_relay import x: x may be a room
                found += [(node.lineno, f"trio_relay.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


ROOMS = {
    p.stem if p.is_file() else p.name
    for p in PACKAGE.iterdir()
    if p.suffix == ".py" or (p / "__init__.py").exists()
}


def target_room(module: str) -> str:
    """The room ``trio_relay.x.y`` belongs to; names of the package itself are ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "__init__"


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_room_is_known() -> None:
    assert {room_of(p) for p in MODULES} <= set(ALLOWED)


def wrong_imports(path: Path, room: str, package: str) -> list[str]:
    wrong = []
    for line, module in imports_of(path, package):
        top = module.split(".")[0]
        if top == "trio_relay":
            if target_room(module) not in {room} | ALLOWED[room]:
                wrong.append(
                    f"line {line}: {module} (room {room!r} may import {sorted(ALLOWED[room])})"
                )
        elif room in NO_TRIO and top in TRIO_MODULES:
            wrong.append(f"line {line}: {module} ({room!r} must not import Trio)")
    return wrong


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path: Path) -> None:
    package = ".".join(("trio_relay", *path.relative_to(PACKAGE).parent.parts))
    wrong = wrong_imports(path, room_of(path), package)
    assert not wrong, f"{path.relative_to(PACKAGE)}:\n" + "\n".join(wrong)


def test_the_rules_can_fail(tmp_path: Path) -> None:
    """The checker sees an import inside a function, which is how a rule is usually broken."""
    fake = tmp_path / "probe.py"
    fake.write_text(
        "def f():\n    import trio\n    from trio_relay.broker import supervisor\n"
        "    from ... import client\n"
    )
    assert wrong_imports(fake, "worker", "trio_relay.worker.pty") == [
        "line 2: trio ('worker' must not import Trio)",
        "line 3: trio_relay.broker (room 'worker' may import ['errors', 'lean_imports', 'linux', 'profiles', 'wire'])",
        "line 4: trio_relay.client (room 'worker' may import ['errors', 'lean_imports', 'linux', 'profiles', 'wire'])",
    ]
