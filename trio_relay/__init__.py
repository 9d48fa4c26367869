"""trio-relay: a broker that supervises terminal programs (AI coding-agent CLIs) and relays
messages to them, built on Trio's structured concurrency.

The names below are imported on first use (PEP 562), so that a program that lives in this
package but does not use Trio — the PTY worker, ``python -m trio_relay.worker.pty`` — does
not pay for importing it (about 15 MB of RSS and 150 ms per process).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trio_relay.broker.broker import AgentInfo, Broker, open_broker
    from trio_relay.broker.supervisor import RestartPolicy
    from trio_relay.errors import (
        AgentExists,
        ChannelClosed,
        ProtocolError,
        RelayError,
        RequestTimeout,
        SpawnFailed,
        WorkerError,
        WorkerExited,
        WorkerNotFound,
    )

__version__ = "0.1.0"

_EXPORTS = {
    "AgentExists": "errors",
    "AgentInfo": "broker.broker",
    "Broker": "broker.broker",
    "ChannelClosed": "errors",
    "ProtocolError": "errors",
    "RelayError": "errors",
    "RequestTimeout": "errors",
    "RestartPolicy": "broker.supervisor",
    "SpawnFailed": "errors",
    "WorkerError": "errors",
    "WorkerExited": "errors",
    "WorkerNotFound": "errors",
    "open_broker": "broker.broker",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
