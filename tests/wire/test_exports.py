"""``trio_relay.wire`` re-exports exactly the public names of its modules, importing each
module only when one of its names is first used."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

import trio_relay.wire as wire

WIRE = Path(wire.__file__).parent


def defined_names(path: Path) -> set[str]:
    """The public names a module binds at its top level (imports excluded)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if not name.startswith("_")}


def test_every_public_name_of_every_module_is_exported_and_nothing_else() -> None:
    modules = sorted(p.stem for p in WIRE.glob("*.py") if p.stem != "__init__")
    expected = {name: module for module in modules for name in defined_names(WIRE / f"{module}.py")}
    assert wire._HOMES == expected
    assert wire.__all__ == sorted(expected)


def test_every_exported_name_resolves_to_its_module_object() -> None:
    for name, module in wire._HOMES.items():
        assert getattr(wire, name) is getattr(import_module(f"trio_relay.wire.{module}"), name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_frame"):
        wire.no_such_frame  # noqa: B018
    with pytest.raises(ImportError):
        from trio_relay.wire import protocol  # noqa: F401


@pytest.mark.parametrize(
    "statement",
    [
        "from trio_relay.wire import Deliver, Response, encode, decode_broker_frame",
        "import trio_relay.worker.pty.worker",
    ],
)
def test_the_worker_side_loads_neither_events_nor_control(statement: str) -> None:
    code = f"{statement}\nimport sys\nprint(sorted(m for m in sys.modules if m.startswith('trio_relay.wire.')))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "trio_relay.wire.frames" in loaded
    assert "trio_relay.wire.events" not in loaded and "trio_relay.wire.control" not in loaded
