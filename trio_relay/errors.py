"""The exceptions trio-relay raises to its callers: one class per outcome a caller must tell apart."""

from __future__ import annotations

import signal


class RelayError(Exception):
    """Base of every trio-relay error."""


class ProtocolError(RelayError):
    """A frame broke the worker protocol: not JSON, too long, unknown kind, wrong field."""


class WorkerNotFound(RelayError):
    """No running worker by that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no running agent named {name!r}")
        self.name = name


class AgentExists(RelayError):
    """An agent by that name is already supervised."""

    def __init__(self, name: str) -> None:
        super().__init__(f"an agent named {name!r} already exists")
        self.name = name


class RequestTimeout(RelayError):
    """The worker did not answer before the request's deadline."""

    def __init__(self, name: str, kind: str, timeout: float) -> None:
        super().__init__(f"{name!r} did not answer {kind!r} within {timeout:g} s")
        self.name, self.kind, self.timeout = name, kind, timeout


class WorkerError(RelayError):
    """The worker answered the request with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class WorkerExited(RelayError):
    """The worker died while the request was in flight."""

    def __init__(self, name: str, code: int | None, signal: int | None) -> None:
        how = f"killed by {signal_name(signal)}" if signal is not None else f"exited with code {code}"
        super().__init__(f"{name!r} {how}")
        self.name, self.code, self.signal = name, code, signal


class ChannelClosed(RelayError):
    """The worker's stdin pipe broke (or was closed) before the frame was written."""


class InputQueueFull(RelayError):
    """Too many frames already wait for a worker that does not read its stdin."""

    def __init__(self, name: str, queued: int, limit: int) -> None:
        super().__init__(
            f"agent {name!r} is not reading its input: {queued} bytes of frames already wait"
            f" for it (at most {limit}); try again later, or release it"
        )
        self.name, self.queued, self.limit = name, queued, limit


class SpawnFailed(RelayError):
    """The worker could not be started: missing binary, not executable, bad cwd, no hello."""

    def __init__(self, name: str, message: str, errno: int | None = None) -> None:
        super().__init__(f"cannot start {name!r}: {message}")
        self.name, self.reason, self.errno = name, message, errno


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 77`` for a number without a name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
