"""trio-relay: a broker that supervises terminal programs (AI coding-agent CLIs) and relays
messages to them, built on Trio's structured concurrency.

The public API is what this module exports (frozen by ``tests/test_public_api.py``):

- :func:`open_broker` and :class:`Broker`, the broker in-process, with :class:`AgentInfo`,
  :class:`RestartPolicy` and :class:`DeliveryPolicy`;
- :func:`open_client` and :class:`RelayClient`, a connection to a running broker;
- every exception a caller sees (see :mod:`trio_relay.errors` for the hierarchy and codes);
- the protocols' types, in :mod:`trio_relay.wire`.

The names are imported on first use (PEP 562), so that a program that lives in this
package but does not use Trio — the PTY worker, ``python -m trio_relay.worker.pty`` — does
not pay for importing it (about 15 MB of RSS and 150 ms per process).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trio_relay import wire
    from trio_relay.broker.broker import AgentInfo, Broker, open_broker
    from trio_relay.broker.delivery import DeliveryPolicy
    from trio_relay.broker.restart import RestartPolicy
    from trio_relay.client import RelayClient, open_client
    from trio_relay.errors import (
        AgentExists,
        BadAddress,
        BrokerAlreadyRunning,
        BrokerUnreachable,
        ChannelClosed,
        ClusterUnavailable,
        DeliveryNotFound,
        DeliveryStateError,
        DeliveryTimeout,
        Forbidden,
        InputQueueFull,
        IntakeClosed,
        ProfileError,
        ProtocolError,
        RelayError,
        RemoteError,
        RequestTimeout,
        SpawnFailed,
        StateDirError,
        StoreError,
        TooMany,
        WorkerError,
        WorkerExited,
        WorkerNotFound,
    )

__version__ = "0.1.0"

_ERRORS = (
    "AgentExists BadAddress BrokerAlreadyRunning BrokerUnreachable ChannelClosed ClusterUnavailable DeliveryNotFound"
    " DeliveryStateError DeliveryTimeout Forbidden InputQueueFull IntakeClosed ProfileError"
    " ProtocolError"
    " RelayError RemoteError RequestTimeout SpawnFailed StateDirError StoreError TooMany"
    " WorkerError WorkerExited WorkerNotFound"
).split()

#: name -> the module that defines it
_EXPORTS = {
    "AgentInfo": "broker.broker",
    "Broker": "broker.broker",
    "open_broker": "broker.broker",
    "DeliveryPolicy": "broker.delivery",
    "RestartPolicy": "broker.restart",
    "RelayClient": "client",
    "open_client": "client",
    **dict.fromkeys(_ERRORS, "errors"),
}

__all__ = sorted([*_EXPORTS, "wire"])


def __getattr__(name: str) -> Any:
    if name == "wire":
        return import_module(".wire", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
