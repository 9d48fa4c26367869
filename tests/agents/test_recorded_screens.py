"""The recorded agent-CLI screens (tests/agents/screens/, see NOTES.md there) are
well-formed, and each CLI's built-in profile reads them as a person would.

Shape: a header line naming the CLI, its version, the 40x120 size and the stage, then
exactly 40 rows no wider than 120 columns. Reading: :func:`~trio_relay.worker.pty.activity.
classify` with ``Catalog().get(cli)`` (no window title, quiet, never idle before) says

- a dialog (trust, sign-in, API key, auth) is ``attention``, naming that dialog and what
  it asks a person;
- the input box with nothing typed is ``idle`` with an empty input line; with the
  recorder's draft, ``idle`` with the draft in it; with a 600-character paste, ``idle`` with
  the collapsed placeholder or the text in it;
- a model call under way (or being retried) is ``busy``;
- a screen before the input box is ready (Codex before it finished starting, Gemini CLI
  waiting for its auth check) is ``starting``.

The real CLIs themselves are in test_real_clis.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trio_relay.profiles.catalog import Catalog
from trio_relay.worker.pty.activity import Verdict, classify

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


DRAFT = "hello from the recorder"  # what tools/record_agent_screens.py types
PASTED = "This is a long pasted message for the recorder."
#: stage -> (activity, the dialog's name in attention); the stage's CLI decides the rest.
EXPECTED = {
    "trust": ("attention", "trust"),
    "api-key": ("attention", "api-key"),
    "key": ("attention", "api-key"),
    "sign-in": ("attention", "sign-in"),
    "sign-in-other": ("attention", "sign-in-other"),
    "auth": ("attention", "auth"),
    "idle": ("idle", ""),
    "draft": ("idle", ""),
    "paste": ("idle", ""),
    "busy": ("busy", ""),
    "busy-paste": ("busy", ""),
    "error": ("busy", ""),  # Claude Code retries a failed call ten times: still working
    "error-paste": ("busy", ""),
    "starting": ("starting", ""),
}
FIRST_DRAW = {  # what each CLI draws first
    "claude": ("attention", "trust"),
    "codex": ("starting", ""),  # a warning about helper binaries under /tmp
    "gemini": ("starting", ""),  # "Waiting for authentication..."
}


def read(path: Path) -> tuple[str, str, Verdict]:
    """The screen's CLI, its stage, and how the CLI's profile reads it."""
    cli, stage = path.stem.split("-", 1)
    rows = path.read_text().split("\n")[1:41]
    verdict = classify(
        Catalog().get(cli), rows, 0, "", quiet=True, reading=False, was_idle=False, settle=0.25
    )
    return cli, stage, verdict


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_the_profile_reads_the_screen_as_a_person_would(path: Path) -> None:
    cli, stage, verdict = read(path)
    activity, dialog = FIRST_DRAW[cli] if stage == "first-draw" else EXPECTED[stage]
    assert (verdict.activity, verdict.dialog) == (activity, dialog), verdict
    if activity == "attention":
        asked = next(d for d in Catalog().get(cli).dialogs if d.name == dialog)
        assert verdict.text.startswith(asked.text + ": "), "what it asks, then the screen row"
    if stage == "idle":
        assert verdict.input.found and verdict.input.text == ""
    elif stage == "draft":
        assert verdict.input.text == DRAFT
    elif stage == "paste":
        collapsed = Catalog().get(cli).compiled.collapsed
        text = verdict.input.text
        assert text.startswith(PASTED) or (collapsed is not None and collapsed.fullmatch(text))
    elif activity == "busy":
        assert verdict.input.text == "", "the message left the input box"


def test_gemini_collapses_the_paste_and_claude_and_codex_do_not() -> None:
    pasted = {p.stem: read(p)[2].input.text for p in FIXTURES if p.stem.count("-") == 1}
    assert pasted.get("gemini-paste") == "[Pasted Text: 600 chars]"
    assert all(pasted[name].startswith(PASTED) for name in ("claude-paste", "codex-paste"))
