"""``python -m trio_relay`` is the ``trio-relay`` command."""

from trio_relay.cli.main import main

main()
