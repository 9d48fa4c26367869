"""``python -m trio_relay`` is the ``trio-relay`` command."""

from trio_relay.entry import run_trio_relay

run_trio_relay()
