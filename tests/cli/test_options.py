"""The shared options (--state-dir, --url, --token, --json) before or after the command's
name, and the one mapping from an error's stable code to the exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import Relay

from trio_relay.cli.context import SHARED_OPTIONS, fail
from trio_relay.cli.main import main
from trio_relay.errors import (
    BadAddress,
    BrokerAlreadyRunning,
    BrokerUnreachable,
    RelayError,
    RemoteError,
    StateDirError,
    StoreError,
)

NO_ENV = dict.fromkeys(["TRIO_RELAY_URL", "TRIO_RELAY_TOKEN", "TRIO_RELAY_AGENT"])


def invoke(*args: str, env: dict[str, str | None] = NO_ENV):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_every_command_takes_the_shared_options_after_its_name() -> None:
    shared = {option.name for option in SHARED_OPTIONS}
    for name, command in main.commands.items():
        names = {param.name for param in command.params}
        local = {
            "up": {"state_dir"},
            "profiles": {"state_dir", "as_json"},  # no broker asked
            "mcp": {"url", "token"},  # its own: an agent's, never a state directory's
        }
        assert names >= local.get(name, shared), name
    assert {param.name for param in main.params} >= shared


def test_a_shared_option_after_the_command_overrides_the_one_before(tmp_path: Path) -> None:
    before, after = str(tmp_path / "before"), str(tmp_path / "after")
    for args, used in [
        (["--state-dir", before, "status"], before),
        (["status", "--state-dir", after], after),
        (["--state-dir", before, "status", "--state-dir", after], after),
    ]:
        result = invoke(*args)
        assert result.exit_code == 3, result.output
        assert f"no broker is running on {used};" in result.output


def test_an_environment_variable_does_not_override_an_option_before_the_command(
    tmp_path: Path,
) -> None:
    env = {**NO_ENV, "TRIO_RELAY_URL": "ws://not-a-port:x"}
    bad = invoke("status", "--state-dir", str(tmp_path), env=env)
    assert bad.exit_code == 2 and "not a broker URL" in bad.output
    good = invoke("--url", "ws://127.0.0.1:9", "status", "--state-dir", str(tmp_path), env=env)
    assert good.exit_code == 3 and f"no token in {tmp_path}" in good.output


def test_json_before_the_command(daemon: Relay) -> None:
    before = invoke("--json", "--state-dir", daemon.state, "status")
    after = invoke("status", "--json", "--state-dir", daemon.state)
    assert json.loads(before.output)["pid"] == json.loads(after.output)["pid"] == daemon.pid


@pytest.mark.parametrize(
    ("error", "code", "said"),
    [
        (BrokerUnreachable("no broker"), 3, "Error: no broker"),
        (BadAddress("bad url"), 2, "Error: bad url"),
        (StateDirError(Path("/x"), "a file"), 2, "Error: cannot use /x"),
        (RemoteError("bad_request", "no such field"), 2, "Error: no such field"),
        (RemoteError("not_found", "no agent"), 1, "Error: no agent"),
        (RemoteError("timeout", "too slow"), 1, "Agent error: too slow"),
        (RemoteError("worker_exited", "died"), 1, "Agent error: died"),
        (StoreError("commit", "disk full"), 1, "Error: store: cannot commit: disk full"),
        (BrokerAlreadyRunning(Path("/s"), 7), 1, "Error: a broker (pid 7) is already running"),
    ],
)
def test_the_exit_code_follows_the_errors_stable_code(
    error: RelayError, code: int, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        fail(error)
    assert exited.value.code == code
    assert capsys.readouterr().err.startswith(said)


@pytest.mark.parametrize("option", [["--json"], ["--url", "ws://127.0.0.1:1"], ["--token", "t"]])
def test_a_shared_option_a_command_does_not_take_is_refused_before_it_too(
    option: list[str], tmp_path: Path
) -> None:
    """`up` takes only --state-dir: `trio-relay --json up` is a usage error, as
    `trio-relay up --json` is, and no broker starts."""
    before = invoke(*option, "up", "--state-dir", str(tmp_path / "s"))
    after = invoke("up", *option, "--state-dir", str(tmp_path / "s"))
    assert before.exit_code == after.exit_code == 2
    assert f"up does not take {option[0]}" in before.output
    assert not (tmp_path / "s").exists()
