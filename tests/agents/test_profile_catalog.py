"""Finding a profile: by the command's name (past wrappers such as env or npx), interactive
shells and REPLs only, a user's file over a built-in, bad files named, JSON for the worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_relay.errors import ProfileError
from trio_relay.profiles.catalog import BUILTIN_NAMES, Catalog, user_profile_dirs
from trio_relay.profiles.profile import decode_profile, encode_profile


@pytest.mark.parametrize(
    ("command", "chosen"),
    [
        (["claude"], "claude"),
        (["/home/me/.npm/bin/claude", "--resume"], "claude"),
        (["unshare", "-rn", "--", "/x/claude"], "claude"),
        (["npx", "@google/gemini-cli@0.61.0"], "gemini"),
        (["env", "OPENAI_API_KEY=x", "codex", "--disable", "daemon_auto_start"], "codex"),
        (["bash", "--norc"], "shell"),
        (["bash", "deploy.sh"], "generic"),  # a script is not an interactive shell
        (["timeout", "10", "python3.13"], "python"),
        (["python3", "-m", "http.server"], "generic"),
        (["cat"], "generic"),
    ],
)
def test_the_command_chooses_the_profile(command: list[str], chosen: str) -> None:
    assert Catalog().choose(command).name == chosen


def test_every_built_in_reads_and_survives_the_trip_to_the_worker() -> None:
    catalog = Catalog()
    assert set(BUILTIN_NAMES) <= set(catalog.names())
    for name in BUILTIN_NAMES:
        profile = catalog.get(name)
        assert decode_profile(encode_profile(profile)) == profile


def test_a_users_file_replaces_a_built_in_and_a_bad_one_is_named(tmp_path: Path) -> None:
    mine = tmp_path / "profiles"
    mine.mkdir()
    (mine / "claude.toml").write_text('summary = "my claude"\ncommands = ["claude"]\n')
    catalog = Catalog(user_profile_dirs(tmp_path))
    assert catalog.get("claude").summary == "my claude"
    assert catalog.choose(["claude"]).summary == "my claude"
    (mine / "typo.toml").write_text("[prompt]\npatern = 'x'\n")
    with pytest.raises(ProfileError, match=r"typo\.toml.*patern"):
        catalog.get("typo")
    with pytest.raises(ProfileError, match="no profile named 'nope'"):
        catalog.get("nope")
    with pytest.raises(ProfileError, match="bad profile"):
        decode_profile('{"name": "x", "busy": [1]}')
