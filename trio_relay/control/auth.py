"""Who is calling, and what they may do.

The owner's token may do everything. A token scoped to one agent (:func:`agent_token`) may
only send as that agent, list its peers, and read its own state and the deliveries it sent
or received (:data:`AGENT_OPS`; a delivery's sender and recipient are checked by the
operation, which reads it). A connection that comes
from an agent's own process acts as that agent whatever valid token it presents
(:func:`identify`, :func:`authenticate`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Collection
from dataclasses import dataclass

import trio

from trio_relay.errors import Forbidden
from trio_relay.linux.peers import UNPLACED, AgentProcesses, owner_agent, peer_processes
from trio_relay.wire import (
    AgentsOp,
    ControlRequest,
    DeliveriesOp,
    DeliveryOp,
    InputOp,
    LogsOp,
    ModeOp,
    PeersOp,
    PendingOp,
    ResizeOp,
    SendOp,
    SnapshotOp,
    StatusOp,
    SubscribeOp,
    UnsubscribeOp,
    WaitOp,
)

log = logging.getLogger(__name__)

#: Operations an agent-scoped token may use: sending as itself, listing its peers, and
#: reading its own state and deliveries.
AGENT_OPS = (
    StatusOp,
    AgentsOp,
    PeersOp,
    SendOp,
    DeliveriesOp,
    DeliveryOp,
    WaitOp,
    SnapshotOp,
    ModeOp,
    PendingOp,
    LogsOp,
    SubscribeOp,
    UnsubscribeOp,
)

#: Why a handshake is refused: the HTTP status and the reason sent as the body.
Refusal = tuple[int, str]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the owner (``agent`` None) or one agent with a scoped token;
    ``forwarding``: another broker of the cluster, which may only forward snapshot, input
    and resize to this broker's agents."""

    agent: str | None = None
    forwarding: bool = False


def authorize(principal: Principal, request: ControlRequest) -> None:
    """Raise Forbidden unless ``principal`` may make ``request``: an agent uses only
    :data:`AGENT_OPS`, and names no agent but itself."""
    if principal.forwarding:
        if not isinstance(request, InputOp | ResizeOp | SnapshotOp):
            raise Forbidden("a cluster's credential only forwards snapshot, input and resize")
        return
    if principal.agent is None:
        return
    if not isinstance(request, AGENT_OPS):
        raise Forbidden(f"an agent token may not use {type(request).__struct_config__.tag!r}")
    name = getattr(request, "name", None)
    if isinstance(name, str) and name != principal.agent:
        raise Forbidden(f"agent {principal.agent!r} may not act on {name!r}")
    if isinstance(request, DeliveriesOp) and request.agent != principal.agent:
        raise Forbidden(
            f"agent {principal.agent!r} may list only its own deliveries: give"
            f" agent={principal.agent!r}"
        )


def check_party(principal: Principal, sender: str, recipient: str, delivery_id: str) -> None:
    """Raise Forbidden unless ``principal`` is the owner or the delivery's sender or
    recipient."""
    if principal.agent is not None and principal.agent not in (sender, recipient):
        raise Forbidden(  # not naming its parties: an agent learns nothing of others' traffic
            f"agent {principal.agent!r} may read only the deliveries it sent or received;"
            f" {delivery_id} is not one of them"
        )


def agent_token(secret: str, agent: str) -> str:
    """The token that lets agent ``agent`` send as itself and read its own state only."""
    return f"agent.{agent}.{_signature(secret, agent)}"


def _signature(secret: str, agent: str) -> str:
    return hmac.new(secret.encode(), agent.encode(), hashlib.sha256).hexdigest()[:32]


def token_principal(secret: str, token: str) -> Principal | None:
    if hmac.compare_digest(token.encode(), secret.encode()):
        return Principal()
    prefix, _, rest = token.partition(".")
    agent, _, signature = rest.rpartition(".")
    if (
        prefix == "agent"
        and agent
        and hmac.compare_digest(signature.encode(), _signature(secret, agent).encode())
    ):
        return Principal(agent)
    return None


def authenticate(
    secret: str,
    headers: list[tuple[bytes, bytes]],
    *,
    allowed_origins: Collection[str],
    process_of: str | None = None,
    also_owner: Collection[str] = (),
) -> Principal | Refusal:
    """The caller's principal from a handshake's headers, or the refusal to answer with.

    A handshake with an ``Origin`` not in ``allowed_origins`` is refused, so a web page
    cannot drive agents. ``process_of`` is the agent the connecting process belongs to
    (:func:`identify`): such a connection acts as that agent whatever valid token it
    presents, and one from an agent's process that cannot be placed is refused.
    ``also_owner``: a cluster's credential, which other brokers of the cluster present to
    forward snapshot, input and resize to one of this broker's agents (nothing else).
    """
    fields = {name.lower(): value.decode("latin-1") for name, value in headers}
    origin = fields.get(b"origin")
    if origin is not None and origin not in allowed_origins:
        return 403, f"forbidden: origin {origin!r} is not allowed"
    scheme, _, token = fields.get(b"authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return 401, "unauthorized: send Authorization: Bearer <token>"
    principal = token_principal(secret, token)
    if principal is None and any(hmac.compare_digest(token, t) for t in also_owner):
        principal = Principal(forwarding=True)
    if principal is None:
        return 401, "unauthorized: wrong token"
    if process_of == UNPLACED:
        return 403, (
            "forbidden: this connection comes from an agent's process that the broker"
            " cannot place with one running agent; agents use their own TRIO_RELAY_TOKEN"
        )
    if process_of is not None and principal.agent != process_of:
        log.warning(
            "a process of agent %r presented %s; it acts as %r",
            process_of,
            "the owner's token"
            if principal.agent is None
            else f"agent {principal.agent!r}'s token",
            process_of,
        )
        return Principal(process_of)
    return principal


async def identify(stream: trio.SocketStream, agents: AgentProcesses) -> str | None:
    """The agent whose process is at the other end of ``stream`` (:data:`UNPLACED` for an
    agent's process that fits no one agent), or None. Reads /proc in a worker thread, which
    a cancellation waits for (it is brief); an OSError there is logged and means None."""

    def look() -> str | None:
        holders = peer_processes(stream.socket)
        return owner_agent(holders, agents) if holders else None

    try:
        return await trio.to_thread.run_sync(look)
    except OSError as exc:
        log.debug("cannot tell who is behind a connection: %s", exc)
        return None
