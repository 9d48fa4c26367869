"""Every exception trio-relay raises to its callers, each with its stable ``error_code``.

The code is what the control channel sends (``{"error": {"code", "message"}}``), what the
CLI turns into its exit code, and what a client raises again as :class:`RemoteError`::

    RelayError                     internal
    ├── ProtocolError              bad_request    a frame or message broke the protocol
    ├── ProfileError               bad_request    no such profile, or a bad profile file
    ├── WorkerNotFound             not_found      no running agent by that name
    ├── DeliveryNotFound           not_found      no delivery by that id
    ├── AgentExists                conflict       the name is taken
    ├── DeliveryStateError         conflict       not in the delivery's current state
    ├── IntakeClosed               conflict       the broker is shutting down
    ├── RequestTimeout             timeout        the worker did not answer in time
    ├── DeliveryTimeout            timeout        the delivery did not end in time
    ├── WorkerError                worker_error   the worker answered with an error
    ├── SpawnFailed                worker_error   the worker could not be started
    ├── WorkerExited               worker_exited  the worker died with the request in flight
    ├── ChannelClosed              worker_exited  the worker's stdin broke first
    ├── InputQueueFull             overloaded     the worker does not read its input
    ├── StoreError                 store_error    SQLite could not commit
    ├── ClusterUnavailable         cluster_unavailable  PostgreSQL did not answer, or the
    │                                             agent's broker is unreachable
    ├── Forbidden                  forbidden      beyond the caller's scope
    ├── TooMany                    too_many       a connection limit is reached
    ├── StateDirError              state_dir      the path cannot be a state directory
    ├── BrokerAlreadyRunning       conflict       another broker holds the state directory
    ├── BrokerUnreachable          unreachable    (client side) no broker answered
    ├── BadAddress                 bad_address    (client side) unusable URL or token
    └── RemoteError                its ``code``   (client side) the broker's error, as sent

``ValueError`` and msgspec's validation errors, raised for bad arguments, are
``bad_request`` too (:func:`code_of`). This module imports nothing of ours.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "AgentExists",
    "BadAddress",
    "BrokerAlreadyRunning",
    "BrokerUnreachable",
    "ChannelClosed",
    "ClusterUnavailable",
    "DeliveryNotFound",
    "DeliveryStateError",
    "DeliveryTimeout",
    "Forbidden",
    "InputQueueFull",
    "IntakeClosed",
    "ProfileError",
    "ProtocolError",
    "RelayError",
    "RemoteError",
    "RequestTimeout",
    "SpawnFailed",
    "StateDirError",
    "StoreError",
    "TooMany",
    "WorkerError",
    "WorkerExited",
    "WorkerNotFound",
    "code_of",
    "signal_name",
]


class RelayError(Exception):
    """Base of every trio-relay error; ``error_code`` is its stable code."""

    error_code: ClassVar[str] = "internal"


class ProtocolError(RelayError):
    """A frame broke the worker protocol: not JSON, too long, unknown kind, wrong field."""

    error_code = "bad_request"


class ProfileError(RelayError):
    """An agent profile that does not exist or cannot be used (its file, field or pattern
    is named)."""

    error_code = "bad_request"


class WorkerNotFound(RelayError):
    """No running worker by that name."""

    error_code = "not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no running agent named {name!r}")
        self.name = name


class DeliveryNotFound(RelayError):
    """No delivery by that id."""

    error_code = "not_found"

    def __init__(self, delivery_id: str) -> None:
        super().__init__(f"no delivery {delivery_id!r}")
        self.delivery_id = delivery_id


class AgentExists(RelayError):
    """An agent by that name is already supervised."""

    error_code = "conflict"

    def __init__(self, name: str, where: str | None = None) -> None:
        super().__init__(f"an agent named {name!r} already exists{where and f' ({where})' or ''}")
        self.name = name


class DeliveryStateError(RelayError):
    """The operation does not apply to the delivery in its current state."""

    error_code = "conflict"


class IntakeClosed(RelayError):
    """The broker is shutting down and takes no new deliveries."""

    error_code = "conflict"


class RequestTimeout(RelayError):
    """The worker did not answer before the request's deadline."""

    error_code = "timeout"

    def __init__(self, name: str, kind: str, timeout: float) -> None:
        super().__init__(f"{name!r} did not answer {kind!r} within {timeout:g} s")
        self.name, self.kind, self.timeout = name, kind, timeout


class DeliveryTimeout(RelayError):
    """The delivery did not reach a terminal state in time (it carries on regardless)."""

    error_code = "timeout"

    def __init__(self, delivery_id: str, timeout: float, state: str) -> None:
        super().__init__(f"delivery {delivery_id!r} still {state} after {timeout:g} s")
        self.delivery_id, self.timeout, self.state = delivery_id, timeout, state


class WorkerError(RelayError):
    """The worker answered the request with an error; ``code`` is the worker's own."""

    error_code = "worker_error"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class SpawnFailed(RelayError):
    """The worker could not be started: missing binary, not executable, bad cwd, no hello."""

    error_code = "worker_error"

    def __init__(self, name: str, message: str, errno: int | None = None) -> None:
        super().__init__(f"cannot start {name!r}: {message}")
        self.name, self.reason, self.errno = name, message, errno


class WorkerExited(RelayError):
    """The worker died while the request was in flight (``code`` or ``signal``)."""

    error_code = "worker_exited"

    def __init__(self, name: str, code: int | None, signal: int | None) -> None:
        how = (
            f"killed by {signal_name(signal)}" if signal is not None else f"exited with code {code}"
        )
        super().__init__(f"{name!r} {how}")
        self.name, self.code, self.signal = name, code, signal


class ChannelClosed(RelayError):
    """The worker's stdin pipe broke (or was closed) before the frame was written."""

    error_code = "worker_exited"


class InputQueueFull(RelayError):
    """Too many frames already wait for a worker that does not read its stdin."""

    error_code = "overloaded"

    def __init__(self, name: str, queued: int, limit: int) -> None:
        super().__init__(
            f"agent {name!r} is not reading its input: {queued} bytes of frames already wait"
            f" for it (at most {limit}); try again later, or release it"
        )
        self.name, self.queued, self.limit = name, queued, limit


class StoreError(RelayError):
    """The store could not do ``operation`` (disk full, read-only, locked, I/O error).

    Nothing the operation would have changed was committed; earlier commits are intact.
    """

    error_code = "store_error"

    def __init__(self, operation: str, error: BaseException | str) -> None:
        super().__init__(f"store: cannot {operation}: {error}")
        self.operation, self.error = operation, str(error)


class ClusterUnavailable(RelayError):
    """The cluster's PostgreSQL did not answer (nothing was accepted), or the broker that
    runs the agent has lost its lease."""

    error_code = "cluster_unavailable"


class Forbidden(RelayError):
    """The caller's token does not allow this operation."""

    error_code = "forbidden"


class TooMany(RelayError):
    """A limit of the connection (requests, subscriptions) is reached."""

    error_code = "too_many"


class StateDirError(RelayError):
    """The path given cannot be a state directory."""

    error_code = "state_dir"

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"cannot use {path} as the state directory: {problem}")
        self.path, self.problem = path, problem


class BrokerAlreadyRunning(RelayError):
    """Another broker holds this state directory's lock."""

    error_code = "conflict"

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"a broker ({who}) is already running on {path}")
        self.path, self.pid = path, pid


class BrokerUnreachable(RelayError):
    """No broker could be reached (none running, wrong url, or refused the token)."""

    error_code = "unreachable"


class BadAddress(RelayError):
    """What the client was told to use cannot be used: a URL that is not a broker's, or the
    owner's token from inside an agent."""

    error_code = "bad_address"


class RemoteError(RelayError):
    """The broker answered with an error; ``code`` (also ``error_code``) is the stable code
    it sent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = self.error_code = code
        self.message = message


def code_of(exc: BaseException) -> str:
    """The stable code for ``exc``: its ``error_code``, ``bad_request`` for a ValueError or
    a validation error, ``internal`` for anything else."""
    if isinstance(exc, RelayError):
        return exc.error_code
    if isinstance(exc, ValueError):  # msgspec's ValidationError and DecodeError are ValueErrors
        return "bad_request"
    return "internal"


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 77`` for a number without a name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
