"""The published JSON Schema matches the protocol types it is exported from."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_schema_is_what_the_code_says() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "export_schema.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
