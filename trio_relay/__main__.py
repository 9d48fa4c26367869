"""``python -m trio_relay`` is the ``trio-relay`` command."""

from .cli import main

main()
