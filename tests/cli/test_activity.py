"""Profiles and activity through the CLI, with real programs: a shell and a Python REPL get
their profiles by name, a multi-line message runs as one line, `wait --activity` is for
scripts, a user's profile file applies, and the attention hook tells a person."""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Relay, relay, wait_for

pytestmark = pytest.mark.timeout(60)

ASKER = """\
import sys
print("Proceed with the plan? [y/n]", end=" ", flush=True)
answer = sys.stdin.readline().strip()
print(f"answered {answer}", flush=True)
print("ready>", end=" ", flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    print(f"got: {line.strip()}", flush=True)
    print("ready>", end=" ", flush=True)
"""

ASKER_PROFILE = """\
summary = "a script that asks before it starts"
[prompt]
pattern = '^ready>(?: (?P<input>.*))?$'
cursor = true
[[dialogs]]
name = "proceed"
pattern = 'Proceed with the plan\\?'
text = "it asks whether to proceed (y or n)"
cursor = true
"""


def agent(r: Relay, name: str) -> dict:  # type: ignore[type-arg]
    (found,) = [a for a in json.loads(r.invoke("ps", "--json").output) if a["name"] == name]
    return found


def test_a_shell_gets_its_profile_and_a_multi_line_message_runs_as_one_line(
    daemon: Relay, tmp_path: Path
) -> None:
    spawned = daemon.invoke("spawn", "sh", "--cwd", str(tmp_path), "--", "bash", "--norc")
    assert spawned.exit_code == 0 and "profile shell" in spawned.output
    waited = daemon.invoke("wait", "sh", "--activity", "idle", "--timeout", "15")
    assert waited.exit_code == 0 and waited.output.startswith("sh idle")
    table = daemon.invoke("ps").output.splitlines()
    assert table[1].split()[:4] == ["sh", "running", "idle", table[1].split()[3]]
    assert "shell" in table[1].split()
    # Line 2 would be a command of its own if bash read it as a line.
    sent = daemon.invoke("send", "sh", "first line\ntouch line-two-ran", "--wait")
    assert sent.exit_code == 0, sent.output
    assert "verified (submitted)" in sent.output
    screen = daemon.invoke("snapshot", "sh").output
    assert "first line touch line-two-ran" in screen  # one command line
    assert not (tmp_path / "line-two-ran").exists()


def python_313() -> str | None:
    """A Python 3.13 that runs (a pyenv shim on PATH may not), or None."""
    if sys.version_info >= (3, 13):
        return sys.executable
    for candidate in (
        shutil.which("python3.13"),
        *glob.glob("/root/.pyenv/versions/3.13*/bin/python3.13"),
    ):
        if candidate and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None


PYTHON_313 = python_313()


@pytest.mark.skipif(PYTHON_313 is None, reason="no Python 3.13 here for its new REPL")
def test_the_python_313_repl_gets_a_multi_line_message_as_one_submitted_line(
    daemon: Relay,
) -> None:
    python = PYTHON_313
    assert python is not None
    spawned = daemon.invoke("spawn", "py", "--", python)
    assert "profile python" in spawned.output
    assert daemon.invoke("wait", "py", "--activity", "idle", "--timeout", "15").exit_code == 0
    sent = daemon.invoke("send", "py", "one\ntwo\nthree", "--wait")
    assert sent.exit_code == 0 and "verified (submitted)" in sent.output, sent.output
    screen = daemon.invoke("snapshot", "py").output
    assert "one two three" in screen and "..." not in screen


def test_wait_for_an_activity_times_out_saying_what_the_agent_does(daemon: Relay) -> None:
    daemon.invoke("spawn", "sh", "--", "bash", "--norc")
    assert daemon.invoke("wait", "sh", "--activity", "idle", "--timeout", "15").exit_code == 0
    # A command that keeps the shell from its prompt: busy, not idle.
    daemon.invoke("input", "sh", "sleep 30\\r")
    busy = daemon.invoke("wait", "sh", "--activity", "busy", "--timeout", "15")
    assert busy.exit_code == 0, busy.output
    late = daemon.invoke("wait", "sh", "--activity", "idle", "--timeout", "0.5")
    assert late.exit_code == 1
    assert "timed out after 0.5 s: sh is busy" in late.output
    gone = daemon.invoke("wait", "nobody", "--activity", "idle")
    assert gone.exit_code == 1 and "no agent named 'nobody'" in gone.output


def test_a_users_profile_a_dialog_and_the_attention_hook(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "profiles").mkdir(parents=True)
    (state / "profiles" / "asker.toml").write_text(ASKER_PROFILE)
    script = tmp_path / "asker.py"
    script.write_text(ASKER)
    hooks = tmp_path / "hooks.log"
    hook = f'echo "$TRIO_RELAY_AGENT: $TRIO_RELAY_ATTENTION" >> {hooks}'
    started = relay("up", "--detach", "--state-dir", str(state), "--on-attention", hook)
    assert started.returncode == 0, started.stderr
    r = Relay(str(state))
    try:
        listed = r.invoke("profiles")
        assert "asker" in listed.output and "a script that asks" in listed.output
        shown = r.invoke("profiles", "asker")
        assert "Proceed with the plan" in shown.output
        spawned = r.invoke("spawn", "a", "--profile", "asker", "--", sys.executable, str(script))
        assert spawned.exit_code == 0 and "profile asker" in spawned.output
        waited = r.invoke("wait", "a", "--activity", "attention", "--timeout", "15")
        assert waited.exit_code == 0
        assert "it asks whether to proceed" in waited.output
        assert "a needs you: it asks whether to proceed" in r.invoke("ps").output
        wait_for(lambda: hooks.exists() and "a: it asks whether to proceed" in hooks.read_text())
        # A message sent now waits, saying why, and is never typed into the dialog.
        receipt = r.invoke("send", "a", "after the dialog")
        delivery_id = receipt.output.split()[0]
        wait_for(lambda: "waits for a person" in r.invoke("pending", "a").output)
        assert "after the dialog" not in r.invoke("snapshot", "a").output
        r.invoke("input", "a", "y\\r")  # a person answers it
        done = r.invoke("wait", "a", "--activity", "idle", "--timeout", "15")
        assert done.exit_code == 0, done.output
        wait_for(lambda: "verified" in r.invoke("deliveries", "a").output)
        assert f"got: Relay message from user [{delivery_id}]: after the dialog" in (
            r.invoke("snapshot", "a").output
        )
    finally:
        relay("down", "--state-dir", str(state))


def test_an_unknown_or_broken_profile_is_a_usage_error(daemon: Relay) -> None:
    unknown = daemon.invoke("spawn", "x", "--profile", "nope", "--", "cat")
    assert unknown.exit_code == 2
    assert "no profile named 'nope'" in unknown.output and "claude" in unknown.output
    broken = Path(daemon.state) / "profiles" / "bad.toml"
    broken.parent.mkdir(exist_ok=True)
    broken.write_text("[prompt]\npattern = '(unclosed'\n")
    spawned = daemon.invoke("spawn", "x", "--profile", "bad", "--", "cat")
    assert spawned.exit_code == 2 and "bad regular expression" in spawned.output
    assert daemon.invoke("profiles", "bad").exit_code == 2
