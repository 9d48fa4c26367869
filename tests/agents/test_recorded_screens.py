"""The recorded agent-CLI screens (tools/record_agent_screens.py) are there and well-formed.

Only their shape is checked here: a header line naming the CLI, its version, the 40x120 size
and the stage, then exactly 40 rows no wider than 120 columns. The profiles that tell idle,
busy and dialog-waiting from these screens come later and test against them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SCREENS = Path(__file__).resolve().parent / "screens"
FIXTURES = sorted(SCREENS.glob("*-*.txt"))
HEADER = re.compile(r"^# (claude|codex|gemini) \S+@\d+\.\d+\.\d+ 40x120 stage=([\w-]+): .+$")

pytestmark = pytest.mark.skipif(
    not FIXTURES,
    reason=f"no recorded screens in {SCREENS}: run tools/record_agent_screens.py",
)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_is_well_formed(path: Path) -> None:
    header, *rows = path.read_text().split("\n")
    match = HEADER.match(header)
    assert match, f"{path.name}: bad header {header!r}"
    assert path.stem == f"{match[1]}-{match[2]}", "the file's name is <cli>-<stage>"
    assert rows[-1] == "", "ends with a newline"
    rows = rows[:-1]
    assert len(rows) == 40
    assert all(len(row) <= 120 for row in rows)
    assert any(row.strip() for row in rows), "the screen is not blank"


def test_each_cli_has_a_first_draw() -> None:
    clis = {p.name.split("-")[0] for p in FIXTURES}
    for cli in clis:
        assert (SCREENS / f"{cli}-first-draw.txt").exists()
