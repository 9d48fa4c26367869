"""The protocols as data, with no I/O and no Trio: worker frames (:mod:`.frames`), broker
events (:mod:`.events`), control messages (:mod:`.control`), the words they share
(:mod:`.vocabulary`), the JSON codec (:mod:`.codec`) and the line framing they travel in
(:mod:`.lines`). Imports nothing of ours but errors.

Import the names from here (``from trio_relay.wire import Deliver``); the modules behind
them are an arrangement, not an interface. Each name is imported on first use (PEP 562), so
the PTY worker, which needs only the frames, does not load the events and the control
channel (about 0.3 MB of RSS and 10 ms per worker process). An unknown name raises
AttributeError.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trio_relay.wire.codec import *  # noqa: F403
    from trio_relay.wire.control import *  # noqa: F403
    from trio_relay.wire.events import *  # noqa: F403
    from trio_relay.wire.frames import *  # noqa: F403
    from trio_relay.wire.lines import *  # noqa: F403
    from trio_relay.wire.vocabulary import *  # noqa: F403

#: Every public name of the wire modules, by module (a test keeps this exact).
_NAMES_BY_MODULE = {
    "codec": "ENCODER encode decode_with",
    "frames": """
        PROTOCOL_VERSION Frame ErrorInfo Request NOT_REQUEST_KINDS
        BrokerFrame BrokerHello Shutdown WriteInput Resize Deliver Ping Snapshot Mode Pending Flush
        WorkerFrame WorkerHello Response Ready Output Idle ActivityChanged Exited
        DeliveryInjected DeliveryVerified DeliveryFailed
        encode_request decode_worker_frame decode_broker_frame
    """,
    "events": """
        Event AgentEvent DeliveryEvent BrokerEvent decode_event
        AgentSpawned AgentReady AgentIdle AgentActivity AgentOutput AgentResized AgentExited SpawnFailedEvent
        AgentRestarting AgentGaveUp WorkerProtocolError
        DeliveryQueuedEvent DeliveryInjectedEvent DeliveryVerifiedEvent DeliveryUnverifiedEvent
        DeliveryFailedEvent DeliveryDroppedEvent DeliveryRequeuedEvent DeliveryRetryingEvent
        DeadLetterEvent StoreErrorEvent ClusterEvent Gap
    """,
    "control": """
        ControlId ControlRequest AgentOp ControlOp
        StatusOp SpawnOp AgentsOp PeersOp ReleaseOp SendOp DeliveriesOp DeliveryOp WaitOp
        DeadLettersOp RedeliverOp InputOp ResizeOp SnapshotOp ModeOp PendingOp FlushOp LogsOp SubscribeOp
        UnsubscribeOp PruneOp ShutdownOp LoginOp
        ControlError ControlAnswer ControlEvents
        AgentSummary ClusterAgentSummary PeerSummary DeliveryRecord SendReceipt ScreenSnapshot BrokerStatus PendingDeliveries
        ModeResult FlushResult PruneResult
    """,
    "lines": "DEFAULT_MAX_LINE OversizedLine LineSplitter",
    "vocabulary": """
        InjectMode INJECT_MODES RestartMode RESTART_MODES Verification VERIFICATIONS
        VERIFIED_LEVELS Activity ACTIVITIES
        OpenState EndState DeliveryState OPEN_STATES TERMINAL_STATES DELIVERY_STATES
        DELIVERY_TRANSITIONS TERMINAL_SIZE_RANGE check_terminal_size
    """,
}
_EXPORTS = {module: names.split() for module, names in _NAMES_BY_MODULE.items()}
_HOMES = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """Imports the module that defines ``name`` and binds all of that module's names here
    (so each module is looked up once). Raises AttributeError for any other name."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = import_module(f".{home}", __name__)
    globals().update({each: getattr(module, each) for each in _EXPORTS[home]})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
