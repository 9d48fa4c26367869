"""The PTY worker's process imports what it uses and no more (see process_imports)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import sys
KEPT_OUT = (
    "typing_extensions", "inspect", "dataclasses", "decimal", "uuid", "platform", "json", "copy"
)
from trio_relay.worker.pty import process_imports, termwidth
process_imports.install()
import trio_relay.worker.pty.worker
kept_out = [m for m in KEPT_OUT if sys.modules.get(m)]
import json, trio_relay.worker.pty.host  # the shared host, which uses json
from trio_relay.wire.codec import encode
from trio_relay.wire.frames import Deliver, Resize, decode_broker_frame
frame = decode_broker_frame(encode(Resize(cols=100, rows=30)))
message = decode_broker_frame(encode(Deliver(delivery_id="d1", sender="me", body="hi")))
print(json.dumps({
    "decoded": [type(frame).__name__, frame.cols, frame.rows, message.sender],
    "kept_out": kept_out,
    "wcwidth_is_ours": sys.modules["wcwidth"] is termwidth,
    "msgspec_deferred": [
        type(sys.modules[m]).__name__ for m in ("msgspec.inspect", "msgspec.yaml")
    ],
}))
"""


@pytest.mark.timeout(60)
def test_the_worker_loads_neither_typing_extensions_nor_inspect_nor_decimal() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "decoded": ["Resize", 100, 30, "me"],
        "kept_out": [],
        "wcwidth_is_ours": True,
        "msgspec_deferred": ["DeferredModule", "DeferredModule"],
    }


@pytest.mark.timeout(60)
def test_typing_extensions_stays_importable_where_it_is_already_loaded() -> None:
    probe = (
        "import typing_extensions, sys\n"
        "from trio_relay.worker.pty import process_imports\n"
        "process_imports.install()\n"
        "import typing_extensions as again\n"
        "print(again is sys.modules['typing_extensions'] is not None)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stderr


@pytest.mark.timeout(60)
def test_what_the_worker_leaves_out_is_real_when_imported_later() -> None:
    probe = (
        "from trio_relay.worker.pty import process_imports\n"
        "process_imports.install()\n"
        "import decimal, uuid, msgspec, json, copy, pyte.screens, sys\n"
        "print(decimal.Decimal('1.5') + 1, uuid.UUID(int=1).int, msgspec.json.encode([1]))\n"
        "print(json.dumps([2]), pyte.screens.json.dumps([3]))\n"
        "print(pyte.screens.copy.copy([4]), copy.copy([5]))\n"
        "print([type(sys.modules[m]).__name__ for m in ('decimal', 'uuid', 'json', 'copy')])\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.split("\n")[:4] == [
        "2.5 1 b'[1]'",
        "[2] [3]",
        "[4] [5]",
        "['module', 'module', 'module', 'module']",  # the real ones, not stand-ins
    ], result.stderr
