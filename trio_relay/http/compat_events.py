"""agent-relay's event stream, ``/ws?sinceSeq=N``: trio-relay's events under agent-relay's
names and fields (:func:`translate`), each frame one flat JSON object with ``kind`` and the
``seq`` of the event it comes from.

The stream replays the events numbered above ``sinceSeq`` (0 by default, as agent-relay
does) that the broker still holds, then follows live. A client that asks for more than the
broker holds, or falls so far behind that the broker's ring passes it, gets a
``replay_gap`` frame and goes on from the oldest event held: it never stalls the broker.
An agent's key sees only its own agent's events. The stream ends when the client leaves or
the broker stops.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from trio_relay.control.connection import event_filter
from trio_relay.errors import DeliveryNotFound, StoreError, signal_name
from trio_relay.http.guard import Refused, error_body
from trio_relay.wire import (
    AgentActivity,
    AgentExited,
    AgentGaveUp,
    AgentIdle,
    AgentOutput,
    AgentReady,
    AgentRestarting,
    AgentSpawned,
    DeadLetterEvent,
    DeliveryDroppedEvent,
    DeliveryFailedEvent,
    DeliveryInjectedEvent,
    DeliveryQueuedEvent,
    DeliveryRetryingEvent,
    DeliveryUnverifiedEvent,
    DeliveryVerifiedEvent,
    Event,
    Gap,
    SpawnFailedEvent,
    WorkerProtocolError,
)

if TYPE_CHECKING:
    from trio_relay.http.site import Site

log = logging.getLogger(__name__)

BATCH = 256
#: Open /ws streams at most; one more is refused (503).
MAX_STREAMS = 1024
#: Delivery bodies kept for relay_inbound frames (one store read per delivery, not per
#: subscriber).
BODIES_KEPT = 1024


class Bodies:
    """What each queued delivery said (sender, body, thread), read from the store once."""

    def __init__(self, site: Site) -> None:
        self._broker = site.server.operations.broker
        self._kept: OrderedDict[str, dict[str, Any]] = OrderedDict()

    async def of(self, delivery_id: str) -> dict[str, Any] | None:
        found = self._kept.get(delivery_id)
        if found is None:
            try:
                record = await self._broker.delivery(delivery_id)
            except (DeliveryNotFound, StoreError) as exc:  # pruned, or the store failed
                log.warning("relay_inbound of %s goes without its body: %s", delivery_id, exc)
                return None
            found = {"body": record.body, "thread": record.thread}
            self._kept[delivery_id] = found
            while len(self._kept) > BODIES_KEPT:
                self._kept.popitem(last=False)
        return found


def _ms(event: Event) -> int:
    return int(event.time * 1000)


def translate(event: Event, argv: dict[str, list[str]]) -> list[dict[str, Any]]:
    """agent-relay's frames for one of our events (``argv``: each agent's command, for its
    ``cli``). relay_inbound for a queued delivery is added by the caller (it needs the
    body). An event of ours without an equivalent goes out under its own kind, with
    ``name`` for its agent."""
    seq = event.seq
    match event:
        case Gap(first=first, last=last):
            return [
                {
                    "kind": "replay_gap",
                    "requestedSinceSeq": first - 1,
                    "oldestAvailable": last + 1,
                    "seq": last,
                    "droppedCount": last - first + 1,
                }
            ]
        case AgentOutput(agent=name, offset=offset, data=data):
            return [
                {
                    "kind": "worker_stream",
                    "name": name,
                    "stream": "stdout",
                    "chunk": data,
                    "offset": offset,
                    "seq": seq,
                }
            ]
        case AgentSpawned(agent=name, pid=pid, attempt=attempt):
            frame = {"kind": "agent_spawned", "name": name, "runtime": "pty", **_who(name, argv)}
            frames = [{**frame, "pid": pid, "source": "http_api", "seq": seq}]
            if attempt:
                frames.append(
                    {"kind": "agent_restarted", "name": name, "restart_count": attempt, "seq": seq}
                )
            return frames
        case AgentReady(agent=name):
            return [
                {
                    "kind": "worker_ready",
                    "name": name,
                    "runtime": "pty",
                    **_who(name, argv),
                    "seq": seq,
                }
            ]
        case AgentIdle(agent=name):
            return [{"kind": "agent_idle", "name": name, "idle_secs": 0, "seq": seq}]
        case AgentActivity(agent=name, from_=before, to=after, text=text):
            return [
                {
                    "kind": "agent_activity",
                    "name": name,
                    "from": before,
                    "to": after,
                    "text": text,
                    "seq": seq,
                }
            ]
        case AgentExited(agent=name, intended=True):
            return [{"kind": "agent_released", "name": name, "seq": seq}]
        case AgentExited(agent=name, code=code, signal=number, reason=reason):
            return [
                {
                    "kind": "agent_exited",
                    "name": name,
                    "code": code,
                    "signal": signal_name(number) if number is not None else None,
                    "reason": reason,
                    "seq": seq,
                }
            ]
        case SpawnFailedEvent(agent=name, error=error):
            return [
                {
                    "kind": "worker_error",
                    "name": name,
                    "code": "spawn_failed",
                    "message": error,
                    "seq": seq,
                },
                {
                    "kind": "agent_exited",
                    "name": name,
                    "code": None,
                    "signal": None,
                    "reason": error,
                    "seq": seq,
                },
            ]
        case AgentRestarting(agent=name, attempt=attempt, delay=delay):
            return [
                {
                    "kind": "agent_restarting",
                    "name": name,
                    "code": None,
                    "signal": None,
                    "restart_count": attempt,
                    "delay_ms": int(delay * 1000),
                    "seq": seq,
                }
            ]
        case AgentGaveUp(agent=name, reason=reason):
            return [{"kind": "agent_permanently_dead", "name": name, "reason": reason, "seq": seq}]
        case WorkerProtocolError(agent=name, error=error, excerpt=excerpt):
            return [
                {
                    "kind": "worker_error",
                    "name": name,
                    "code": "protocol_error",
                    "message": error,
                    "error": excerpt,
                    "seq": seq,
                }
            ]
        case DeliveryQueuedEvent() | DeliveryInjectedEvent():
            kind = (
                "delivery_queued" if isinstance(event, DeliveryQueuedEvent) else "delivery_injected"
            )
            return [{**_delivery(kind, event), "timestamp": _ms(event)}]
        case DeliveryVerifiedEvent(verification=verification, reason=reason):
            return [
                {
                    **_delivery("delivery_verified", event),
                    "verification": verification,
                    "reason": reason,
                }
            ]
        case DeliveryUnverifiedEvent(verification=verification, reason=reason):
            return [
                {
                    **_delivery("delivery_unconfirmed", event),
                    "verification": verification,
                    "reason": reason,
                }
            ]
        case DeliveryFailedEvent(reason=reason):
            return [{**_delivery("delivery_failed", event), "reason": reason}]
        case DeliveryDroppedEvent(reason=reason, evicted_by=evicted_by):
            return [
                {
                    **_delivery("delivery_dropped", event),
                    "count": 1,
                    "reason": reason,
                    "evicted_by": evicted_by,
                }
            ]
        case DeliveryRetryingEvent(attempt=attempt, error=error):
            return [{**_delivery("delivery_retry", event), "attempts": attempt, "error": error}]
        case DeadLetterEvent(attempts=attempts, error=error):
            return [
                {
                    **_delivery("dead_letter_added", event),
                    "to": event.agent,
                    "attempts": attempts,
                    "reason": error,
                },
                {**_delivery("delivery_failed", event), "reason": f"dead letter: {error}"},
            ]
    own = msgspec.to_builtins(event)
    agent = own.pop("agent", None)
    return [{**own, **({"name": agent} if agent is not None else {})}]


def _delivery(kind: str, event: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "name": event.agent,
        "delivery_id": event.delivery_id,
        "event_id": event.delivery_id,
        "seq": event.seq,
    }


def _who(name: str, argv: dict[str, list[str]]) -> dict[str, Any]:
    command = argv.get(name, [])
    command = command[command.index("--") + 1 :] if "--" in command else command
    cli = os.path.basename(command[0]) if command else None
    return {"provider": None, "cli": cli, "model": None, "sessionId": None}


async def serve_events(websocket: WebSocket, site: Site) -> None:
    """One ``/ws`` connection: refused before the handshake for a bad key or origin, then
    replay and live events until the client leaves."""
    try:
        caller = await site.caller(websocket, websocket=True)
        since = _since(
            websocket.query_params.get("sinceSeq", websocket.query_params.get("since_seq"))
        )
    except Refused as exc:
        log.warning("refused a /ws connection: %s", exc)
        await websocket.send_denial_response(
            JSONResponse(error_body(exc.code, str(exc)), status_code=exc.status)
        )
        return
    if site.streams >= MAX_STREAMS:
        refusal = error_body("unavailable", f"{MAX_STREAMS} /ws streams are open")
        await websocket.send_denial_response(JSONResponse(refusal, status_code=503))
        return
    site.streams += 1  # before the handshake's await: the cap holds under concurrency
    try:
        await _stream(websocket, site, caller.principal.agent, since)
    except (WebSocketDisconnect, RuntimeError, OSError) as exc:
        log.debug("a /ws client left: %s", exc)  # starlette: RuntimeError once it is closed
    finally:
        site.streams -= 1


async def _stream(websocket: WebSocket, site: Site, agent: str | None, since: int) -> None:
    broker = site.server.operations.broker
    events = broker.events
    ahead = since > events.last_seq  # numbered by another run of the broker: all it holds
    # an agent's stream is not woken by other agents' events
    wanted = event_filter(agent, None) if agent is not None else None
    stream = events.subscribe(events.first_seq - 1 if ahead else since, wanted)
    await websocket.accept()
    gap = {
        "kind": "replay_gap",
        "requestedSinceSeq": since,
        "oldestAvailable": events.first_seq,
        "seq": events.last_seq,
        "droppedCount": 0,
    }
    argv = {a.name: a.argv for a in broker.agents()}
    if ahead:
        await websocket.send_text(json.dumps(gap))
    async for first in stream:
        frames: list[dict[str, Any]] = []
        for event in [first, *stream.ready(BATCH - 1)]:
            if isinstance(event, AgentSpawned):
                argv[event.agent] = event.argv
            if isinstance(event, DeliveryQueuedEvent) and not event.redelivery:
                frames.append(await _inbound(event, site.bodies))
            frames.extend(translate(event, argv))
        for frame in frames:
            await websocket.send_text(json.dumps(frame))


async def _inbound(event: DeliveryQueuedEvent, bodies: Bodies) -> dict[str, Any]:
    said = await bodies.of(event.delivery_id) or {"body": None, "thread": event.thread}
    return {
        "kind": "relay_inbound",
        "event_id": event.delivery_id,
        "from": event.sender,
        "target": event.agent,
        "body": said["body"],
        "thread_id": said["thread"],
        "seq": event.seq,
    }


def _since(text: str | None) -> int:
    if text is None or text == "":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise Refused(400, "invalid_request", f"sinceSeq {text!r} is not a number") from None
    if value < 0:
        raise Refused(400, "invalid_request", "sinceSeq must not be negative")
    return value
