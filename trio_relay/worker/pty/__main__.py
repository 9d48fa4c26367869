"""``python -m trio_relay.worker.pty``: the PTY worker (see :mod:`trio_relay.worker.pty.worker`)."""

import sys

from trio_relay.worker.pty import termwidth

termwidth.install()  # before pyte is imported: see termwidth

from trio_relay.worker.pty.worker import main  # noqa: E402

sys.exit(main())
