"""The public API is curated and frozen: a change to it is a decision, made here on purpose.

``tests/public_api.txt`` lists every public name of ``trio_relay``, ``trio_relay.errors`` and
``trio_relay.wire`` (with the signatures of the entry points). After a deliberate change,
rewrite it with ``python tests/test_public_api.py > tests/public_api.txt``.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import trio_relay
import trio_relay.errors
import trio_relay.wire

FROZEN = Path(__file__).with_name("public_api.txt")
ENTRY_POINTS = ("open_broker", "open_client")


def public_api() -> str:
    lines = []
    for module in (trio_relay, trio_relay.errors, trio_relay.wire):
        for name in sorted(module.__all__):
            value = getattr(module, name)  # every exported name resolves
            line = f"{module.__name__}.{name}"
            if module is trio_relay and name in ENTRY_POINTS:
                line += str(inspect.signature(value))
            lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_public_api_is_what_was_decided() -> None:
    assert public_api() == FROZEN.read_text(), (
        "the public API changed; if on purpose, run "
        "`python tests/test_public_api.py > tests/public_api.txt`"
    )


def test_every_error_has_a_stable_code_and_is_exported_at_the_top() -> None:
    errors = [getattr(trio_relay.errors, n) for n in trio_relay.errors.__all__]
    classes = [e for e in errors if isinstance(e, type)]
    assert all(issubclass(e, trio_relay.errors.RelayError) for e in classes)
    assert all(e.error_code for e in classes)
    assert {e.__name__ for e in classes} <= set(trio_relay.__all__)


def test_importing_the_package_does_not_import_trio() -> None:
    probe = "import sys, trio_relay, trio_relay.wire; print('trio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


if __name__ == "__main__":
    sys.stdout.write(public_api())
