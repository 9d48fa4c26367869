"""``python -m trio_relay.worker.pty``: the PTY worker (see :mod:`trio_relay.worker.pty.worker`)."""

import sys

from trio_relay.worker.pty import process_imports

process_imports.install()  # before msgspec and pyte are imported: see process_imports

if sys.argv[1:2] == ["--shared-host"]:  # the broker's shared PTY host (see host.py)
    from trio_relay.worker.pty.host import main as host_main

    sys.exit(host_main(sys.argv[2:]))

from trio_relay.worker.pty.worker import main  # noqa: E402

sys.exit(main())
