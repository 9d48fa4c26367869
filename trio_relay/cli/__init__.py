"""The ``trio-relay`` command: the group and its shared options, thin commands, rendering,
and attach."""
