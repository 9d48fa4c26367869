"""The console scripts (``trio-relay``, ``trio-relay-agent-relay``) and ``python -m
trio_relay``: each leaves out what its process will not use (:mod:`trio_relay.lean_imports`)
before it imports the command."""

from __future__ import annotations

from trio_relay import lean_imports


def run_trio_relay() -> None:
    """The ``trio-relay`` command."""
    lean_imports.install()
    from trio_relay.cli.main import main

    main()


def run_agent_relay_shim() -> None:
    """The ``trio-relay-agent-relay`` command (see :mod:`trio_relay.cli.agent_relay_shim`)."""
    lean_imports.install()
    from trio_relay.cli.agent_relay_shim import main

    main()
