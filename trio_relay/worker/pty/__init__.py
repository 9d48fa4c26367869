"""The PTY worker: any terminal program as an agent (``python -m trio_relay.worker.pty``)."""
