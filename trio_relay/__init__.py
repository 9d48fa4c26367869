"""trio-relay: a broker that supervises terminal programs (AI coding-agent CLIs) and relays
messages to them, built on Trio's structured concurrency."""

from .broker import AgentInfo, Broker, open_broker
from .errors import (
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
from .supervisor import RestartPolicy

__version__ = "0.1.0"

__all__ = [
    "AgentExists",
    "AgentInfo",
    "Broker",
    "ChannelClosed",
    "ProtocolError",
    "RelayError",
    "RequestTimeout",
    "RestartPolicy",
    "SpawnFailed",
    "WorkerError",
    "WorkerExited",
    "WorkerNotFound",
    "open_broker",
]
