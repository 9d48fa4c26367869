"""An agent's spawn arguments: the child's environment, the record kept in the store (so
the next broker can start it again), and that record read back."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from trio_relay.broker.agent import AgentSpec
from trio_relay.broker.restart import RestartPolicy
from trio_relay.linux.sweep import AGENT_ENV, RUN_ENV


def child_environment(
    name: str, run_id: str, env: Mapping[str, str] | None, extra: Mapping[str, str]
) -> dict[str, str]:
    """The broker's environment with ``env`` and ``extra`` over it, and the agent's tags
    (its name, and the broker run's id the next sweep looks for)."""
    return {**os.environ, **(env or {}), **extra, AGENT_ENV: name, RUN_ENV: run_id}


def stored_spec(
    spec: AgentSpec,
    env: Mapping[str, str] | None,
    timing: Mapping[str, float],
    preamble: str | None = None,
) -> dict[str, Any]:
    """What the store keeps of a spawn: the caller's arguments, not the whole environment."""
    return {
        "argv": list(spec.argv),
        "cwd": spec.cwd,
        "env": dict(env or {}),
        "restart": dataclasses.asdict(spec.restart),
        "timing": dict(timing),
        "profile": spec.profile,
        "preamble": preamble,
    }


#: Workers' module names before the layout of trio-relay 0.1 (in records a broker of that
#: time stored), and where they are now.
MOVED_WORKERS = {
    "trio_relay.pty_worker": "trio_relay.worker.pty",
    "trio_relay.reference_worker": "trio_relay.worker.reference",
}


def spawn_arguments(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``Broker.spawn`` (but the name) from a stored record; a
    worker stored under its old module name (``-m trio_relay.pty_worker``) runs from where
    it is now. Raises KeyError, TypeError or ValueError for a record that does not fit."""
    argv = list(stored["argv"])
    if len(argv) > 2 and argv[1] == "-m" and argv[2] in MOVED_WORKERS:
        argv[2] = MOVED_WORKERS[argv[2]]
    return {
        "argv": argv,
        "cwd": stored["cwd"],
        "env": stored["env"],
        "restart": RestartPolicy(**stored["restart"]),
        "profile": stored.get("profile"),
        "preamble": stored.get("preamble"),
        **stored["timing"],
    }
