"""agent-relay's HTTP API, answered by trio-relay: the routes its Python SDK
(``agent-relay-sdk``) calls, with its field names, so ``AgentRelayClient`` and ``AgentRelay``
run unchanged. Each route is one control operation (control/operations.py) for the caller's
principal, so an agent's key acts within its scope here too.

Errors have agent-relay's shape (guard.error_body), with its codes where it has one
(``agent_not_found`` 404, ``invalid_request`` 400, ``unsupported_operation`` 400,
``worker_timeout`` 504, ...) and trio-relay's own code otherwise. Cancellation (the client
left) cancels the operation; what the broker committed by then stays committed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import trio
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from trio_relay import __version__
from trio_relay.control.auth import authorize
from trio_relay.errors import code_of
from trio_relay.http.guard import Caller, Refused, error_body
from trio_relay.wire import (
    AgentsOp,
    ControlRequest,
    DeadLettersOp,
    FlushOp,
    InputOp,
    ModeOp,
    PendingOp,
    RedeliverOp,
    ReleaseOp,
    ResizeOp,
    SendOp,
    SnapshotOp,
    SpawnOp,
)

if TYPE_CHECKING:
    from trio_relay.http.site import Site

#: Our error codes as agent-relay's, with their HTTP status.
ERRORS: dict[str, tuple[int, str]] = {
    "not_found": (404, "agent_not_found"),
    "bad_request": (400, "invalid_request"),
    "conflict": (409, "conflict"),
    "forbidden": (403, "forbidden"),
    "timeout": (504, "worker_timeout"),
    "overloaded": (503, "pty_write_queue_full"),
    "too_many": (429, "too_many_requests"),
    "worker_exited": (503, "worker_disappeared"),
    "worker_error": (502, "worker_error"),
    "store_error": (503, "store_error"),
}
#: What agent-relay's spawn passes a model with, by program.
MODEL_FLAG = {"claude": "--model", "codex": "--model", "gemini": "--model", "aider": "--model"}
#: agent-relay's delivery modes and ours.
MODES = {"auto_inject": "auto_inject", "manual_flush": "hold"}
ENDED = ("exited", "released", "gave_up", "failed")
HUMAN = "human:orchestrator"
MAX_BODY = 4 * 1024 * 1024
#: "All" for a listing (the store's own retention bounds it).
ALL = 1 << 31

Handler = Callable[[Request, Caller], Awaitable[Any]]


def routes(site: Site) -> list[BaseRoute]:
    api = _Api(site)
    table: list[tuple[str, str, Handler]] = [
        ("GET", "/api/session", api.session),
        ("POST", "/api/session/renew", api.renew),
        ("POST", "/api/spawn", api.spawn),
        ("GET", "/api/spawned", api.spawned),
        ("DELETE", "/api/spawned/{name}", api.release),
        ("POST", "/api/send", api.send),
        ("POST", "/api/input/{name}", api.input),
        ("POST", "/api/resize/{name}", api.resize),
        ("GET", "/api/spawned/{name}/snapshot", api.snapshot),
        ("GET", "/api/spawned/{name}/delivery-mode", api.get_mode),
        ("PUT", "/api/spawned/{name}/delivery-mode", api.set_mode),
        ("GET", "/api/spawned/{name}/pending", api.pending),
        ("POST", "/api/spawned/{name}/flush", api.flush),
        ("GET", "/api/dead-letters", api.dead_letters),
        ("POST", "/api/dead-letters/redeliver", api.redeliver),
        ("GET", "/api/status", api.status),
        ("GET", "/api/metrics", api.metrics),
        ("POST", "/api/preflight", api.preflight),
        ("POST", "/api/shutdown", api.shutdown),
    ]
    found: list[BaseRoute] = [Route("/health", api.health, methods=["GET"])]
    found += [Route(path, _endpoint(site, handler), methods=[m]) for m, path, handler in table]
    return found


def _endpoint(site: Site, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        caller = await site.caller(request)
        try:
            result = await handler(request, caller)
        except Refused:
            raise
        except Exception as exc:  # an error answer; Cancelled is not an Exception
            code = code_of(exc)
            if code == "internal":
                raise
            status, their_code = ERRORS.get(code, (400, code))
            return JSONResponse(error_body(their_code, str(exc)), status_code=status)
        return result if isinstance(result, Response) else JSONResponse(result)

    return endpoint


async def _json(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object; {} for an empty body where ``optional``. Raises Refused
    (400 ``invalid_request``) for anything else."""
    chunks, size = [], 0
    async for chunk in request.stream():  # stops reading past the limit
        size += len(chunk)
        if size > MAX_BODY:
            raise Refused(413, "payload_too_large", f"the body is over {MAX_BODY} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip() and optional:
        return {}
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        problem = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise Refused(400, "invalid_request", f"the body is not JSON: {problem}") from None
    if not isinstance(value, dict):
        raise Refused(400, "invalid_request", "the body must be a JSON object")
    return value


def _field(data: dict[str, Any], kind: type, *names: str, required: bool = False) -> Any:
    """The first of ``names`` present in ``data``, checked to be a ``kind``."""
    for name in names:
        if data.get(name) is not None:
            value = data[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise Refused(400, "invalid_request", f"`{name}` must be a {kind.__name__}")
            return value
    if required:
        raise Refused(400, "invalid_request", f"missing required field: {names[0]}")
    return None


def _program(argv: list[str]) -> str:
    """The program an agent runs: what follows the worker's ``--``, else argv[0]."""
    command = argv[argv.index("--") + 1 :] if "--" in argv else argv
    return os.path.basename(command[0]) if command else ""


class _Api:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.operations = site.server.operations
        self.broker = site.server.operations.broker
        self.models: dict[str, str] = {}  # agent -> the model its spawn named
        self._ids = itertools.count(1)

    async def call(self, caller: Caller, op: type[ControlRequest], **fields: Any) -> Any:
        request = op(id=f"http-{next(self._ids)}", **fields)
        authorize(caller.principal, request)
        return msgspec.to_builtins(await self.operations.perform(request, caller.principal))

    # -- the session

    async def health(self, request: Request) -> Response:
        self.site.guard.check_browser({k.lower(): v for k, v in request.headers.items()})
        agents = [a for a in self.broker.agents() if a.state not in ENDED]
        return JSONResponse(
            {
                "status": "ok",
                "service": "trio-relay",
                "version": __version__,
                "uptimeMs": int((time.time() - self.operations.started_at) * 1000),
                "agentCount": len(agents),
                "pendingDeliveryCount": sum(a.pending_deliveries for a in agents),
            }
        )

    async def session(self, request: Request, caller: Caller) -> Any:
        return {
            "broker_version": f"trio-relay {__version__}",
            "protocol_version": 2,
            "workspace_key": None,
            "relay_base_url": None,
            "default_workspace_id": None,
            "node_id": None,
            "node_name": None,
            "node_token": None,
            "mode": "persist",
            "uptime_secs": int(time.time() - self.operations.started_at),
        }

    async def renew(self, request: Request, caller: Caller) -> Any:
        # trio-relay holds no lease: its agents live until released or the broker stops.
        return {"renewed": True, "expires_in_secs": 0, "persist": True}

    # -- agents

    async def spawn(self, request: Request, caller: Caller) -> Any:
        data = await _json(request)
        name = _field(data, str, "name", required=True)
        cli = _field(data, str, "cli") or "claude"
        args = [a for a in (_field(data, list, "args") or []) if isinstance(a, str)]
        transport = _field(data, str, "transport", "runtime") or "pty"
        if transport != "pty":
            raise Refused(409, "unsupported_runtime", f"transport {transport!r}: only pty")
        model = _field(data, str, "model")
        warning = None
        if model:
            flag = MODEL_FLAG.get(os.path.basename(cli))
            if flag:
                args = [flag, model, *args]
            else:
                warning = f"model {model!r} ignored: {cli!r} takes no --model that we know of"
        policy = _field(data, dict, "restartPolicy", "restart_policy") or {}
        restart = "on-failure" if policy.get("enabled") else "never"
        summary = await self.call(
            caller,
            SpawnOp,
            name=name,
            command=[cli, *args],
            cwd=_field(data, str, "cwd"),
            restart=restart,
        )
        if model:
            self.models[name] = model
        task = _field(data, str, "task")
        if task and task.strip():
            try:
                await self.call(caller, SendOp, to=name, body=task, sender="broker")
            except BaseException:  # a spawn whose task was refused is not left running
                with trio.CancelScope(shield=True):
                    await self.call(caller, ReleaseOp, name=name)
                raise
        return {
            "success": True,
            "name": name,
            "runtime": "pty",
            "model": model,
            "sessionId": None,
            "pid": summary["pid"],
            "warning": warning,
        }

    def entry(self, summary: dict[str, Any]) -> dict[str, Any]:
        activity = summary["activity"]
        state = {"busy": "working", "starting": "working"}.get(activity, activity)
        last = summary.get("last_activity")
        return {
            "name": summary["name"],
            "runtime": "pty",
            "provider": None,
            "cli": _program(summary["argv"]),
            "model": self.models.get(summary["name"]),
            "sessionId": None,
            "team": None,
            "channels": [],
            "pid": summary["pid"],
            "workerPid": summary["pid"],
            "last_activity_ms": int((time.time() - last) * 1000) if last else None,
            "current_state": state,
            "pending_messages": summary["pending_deliveries"],
            "runtime_kind": "pty",
            # trio-relay's own, beside agent-relay's
            "state": summary["state"],
            "activity": activity,
            "activity_text": summary.get("activity_text", ""),
            "profile": summary.get("profile"),
        }

    async def running(self, caller: Caller) -> list[dict[str, Any]]:
        agents = await self.call(caller, AgentsOp)
        return [self.entry(a) for a in agents if a["state"] not in ENDED]

    async def spawned(self, request: Request, caller: Caller) -> Any:
        return {"agents": await self.running(caller)}

    async def release(self, request: Request, caller: Caller) -> Any:
        name = request.path_params["name"]
        await _json(request, optional=True)  # {"reason": ...}: accepted, not needed
        known = any(a.name == name for a in self.broker.agents())
        try:
            await self.call(caller, ReleaseOp, name=name)
        except Exception as exc:
            if code_of(exc) == "not_found" and known:  # it had ended on its own
                return {"success": True, "name": name, "already": "exited"}
            raise
        self.models.pop(name, None)
        return {"success": True, "name": name}

    # -- messages

    async def send(self, request: Request, caller: Caller) -> Any:
        data = await _json(request)
        to = (_field(data, str, "to", required=True)).strip()
        text = _field(data, str, "text", "message", "body", "content", required=True)
        sender = _field(data, str, "from") or HUMAN
        thread = _field(data, str, "threadId", "thread_id", "thread")
        mode = (_field(data, str, "mode", "injectionMode", "injection_mode") or "wait").lower()
        if mode != "wait":
            raise Refused(
                400, "unsupported_operation", f"mode {mode!r}: trio-relay delivers in turn (wait)"
            )
        if to.startswith("#"):
            raise Refused(400, "unsupported_operation", "trio-relay has no channels")
        if to != "*":
            receipt = await self.call(
                caller, SendOp, to=to, body=text, sender=sender, thread=thread
            )
            receipts = [receipt]
        else:
            receipts = await self.broadcast(caller, text, sender, thread)
        targets = [r["agent"] for r in receipts]
        ids = [r["delivery_id"] for r in receipts]
        return {
            "success": True,
            "event_id": ids[0] if ids else None,
            **({"delivery_id": ids[0]} if to != "*" else {}),
            "targets": targets,
            "delivery_ids": ids,
            "local": True,
        }

    async def broadcast(
        self, caller: Caller, text: str, sender: str, thread: str | None
    ) -> list[dict[str, Any]]:
        """One delivery per running agent but the sender, all committed before this
        returns (concurrently: the store commits them together). An agent that ended
        meanwhile is left out; any other error is raised once all sends are done."""
        targets = [
            a.name
            for a in self.broker.agents()
            if a.state not in ENDED and a.name not in (sender, caller.principal.agent)
        ]
        outcomes: list[dict[str, Any] | Exception] = [{}] * len(targets)

        async def one(index: int, target: str) -> None:
            try:
                outcomes[index] = await self.call(
                    caller, SendOp, to=target, body=text, sender=sender, thread=thread
                )
            except Exception as exc:  # reported below, after the others are committed
                outcomes[index] = exc

        async with trio.open_nursery() as nursery:
            for index, target in enumerate(targets):
                nursery.start_soon(one, index, target)
        failed = [o for o in outcomes if isinstance(o, Exception) and code_of(o) != "not_found"]
        if failed:
            raise failed[0]
        return [o for o in outcomes if not isinstance(o, Exception)]

    # -- terminals

    async def input(self, request: Request, caller: Caller) -> Any:
        name = request.path_params["name"]
        data = _field(await _json(request), str, "data", required=True)
        await self.call(caller, InputOp, name=name, data=data)
        return {"bytes_written": len(data.encode()), "name": name}

    async def resize(self, request: Request, caller: Caller) -> Any:
        name = request.path_params["name"]
        data = await _json(request)
        rows = _field(data, int, "rows", required=True)
        cols = _field(data, int, "cols", required=True)
        await self.call(caller, ResizeOp, name=name, rows=rows, cols=cols)
        return {"name": name, "rows": rows, "cols": cols, "applied": True}

    async def snapshot(self, request: Request, caller: Caller) -> Any:
        name = request.path_params["name"]
        kind = request.query_params.get("format", "plain").strip().lower() or "plain"
        if kind not in ("plain", "text", "ansi"):
            raise Refused(
                400, "invalid_format", f"unsupported snapshot format {kind!r} (plain or ansi)"
            )
        ansi = kind == "ansi"
        shot = await self.call(caller, SnapshotOp, name=name, ansi=ansi)
        text = shot["text"]
        if ansi:
            screen = base64.b64encode(text.encode()).decode()
        else:
            screen = "".join(line.rstrip() + "\n" for line in text.split("\n"))
        row, col = shot["cursor"]
        return {
            "format": "ansi" if ansi else "plain",
            "rows": shot["rows"],
            "cols": shot["cols"],
            "cursor": [row + 1, col + 1],
            "screen": screen,
            "offset": shot.get("offset"),
        }

    # -- delivery mode, pending, flush, dead letters

    async def get_mode(self, request: Request, caller: Caller) -> Any:
        found = await self.call(caller, ModeOp, name=request.path_params["name"])
        return {"mode": _their_mode(found["mode"])}

    async def set_mode(self, request: Request, caller: Caller) -> Any:
        name = request.path_params["name"]
        data = await _json(request)
        wanted = _field(data, str, "mode", required=True)
        if wanted not in MODES:
            raise Refused(
                400, "invalid_mode", f"mode {wanted!r}: expected 'auto_inject' or 'manual_flush'"
            )
        current = _their_mode((await self.call(caller, ModeOp, name=name))["mode"])
        expected = _field(data, str, "expected_mode")
        if expected is not None and expected != current:
            return {"mode": current, "flushed": 0, "matched": False}
        waiting = 0
        if current == "manual_flush" and wanted == "auto_inject":
            waiting = len((await self.call(caller, PendingOp, name=name))["deliveries"])
        await self.call(caller, ModeOp, name=name, set=MODES[wanted])
        return {"mode": wanted, "flushed": waiting, "matched": True}

    async def pending(self, request: Request, caller: Caller) -> Any:
        found = await self.call(caller, PendingOp, name=request.path_params["name"])
        return {"pending": [_pending(d) for d in found["deliveries"]]}

    async def flush(self, request: Request, caller: Caller) -> Any:
        found = await self.call(caller, FlushOp, name=request.path_params["name"])
        return {"flushed": found["count"]}

    async def dead_letters(self, request: Request, caller: Caller) -> Any:
        found = await self.call(caller, DeadLettersOp, limit=ALL)
        return {"count": len(found), "dead_letters": [_dead_letter(d) for d in found]}

    async def redeliver(self, request: Request, caller: Caller) -> Any:
        data = await _json(request)
        one, every = _field(data, str, "id", "delivery_id"), data.get("all") is True
        if (one is None) == (not every) or one == "":
            raise Refused(400, "invalid_request", "provide exactly one of 'id' or 'all: true'")
        if one is not None:
            ids = [one]
        else:
            found = await self.call(caller, DeadLettersOp, limit=ALL)
            ids = [d["delivery_id"] for d in found]
        done, skipped = [], []
        for delivery_id in ids:
            try:
                receipt = await self.call(caller, RedeliverOp, delivery_id=delivery_id)
            except Exception as exc:
                if one is not None or code_of(exc) == "internal":
                    raise
                skipped.append({"delivery_id": delivery_id, "reason": str(exc)})
                continue
            done.append(
                {
                    "delivery_id": delivery_id,
                    "worker_name": receipt["agent"],
                    "event_id": delivery_id,
                }
            )
        return {"redelivered": done, "skipped": skipped}

    # -- the broker

    async def status(self, request: Request, caller: Caller) -> Any:
        agents = await self.running(caller)
        dead = (
            await self.call(caller, DeadLettersOp, limit=ALL)
            if caller.principal.agent is None
            else []
        )
        return {
            "agent_count": len(agents),
            "agents": agents,
            "pending_delivery_count": sum(a["pending_messages"] for a in agents),
            "dead_letter_count": len(dead),
            "node_connected": False,
            "broker": f"trio-relay {__version__}",
        }

    async def metrics(self, request: Request, caller: Caller) -> Any:
        wanted = request.query_params.get("agent")
        agents = await self.running(caller)
        if wanted is not None:
            agents = [a for a in agents if a["name"] == wanted]
            if not agents:
                raise Refused(404, "agent_not_found", f"no agent named {wanted!r}")
        now = time.time()
        summaries = {a.name: a for a in self.broker.agents()}
        return {
            "agents": [
                {
                    "name": a["name"],
                    "pid": a["pid"],
                    "memory_bytes": _rss(a["pid"]),
                    "uptime_secs": int(now - (summaries[a["name"]].started_at or now)),
                }
                for a in sorted(agents, key=lambda a: a["name"])
            ],
            "broker": {
                "uptime_secs": int(now - self.operations.started_at),
                "active_agents": len(agents),
            },
        }

    async def preflight(self, request: Request, caller: Caller) -> Any:
        await _json(request)
        return {"queued": 0}  # there is nothing to register ahead in trio-relay

    async def shutdown(self, request: Request, caller: Caller) -> Any:
        if caller.principal.agent is not None:
            raise Refused(403, "forbidden", "an agent token may not stop the broker")

        async def stop() -> None:  # once the answer is sent
            self.operations.shutdown_requested.set()

        return JSONResponse({"status": "shutting_down"}, background=BackgroundTask(stop))


def _their_mode(ours: str) -> str:
    return "manual_flush" if ours == "hold" else ours


def _pending(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "from": d["sender"],
        "body": d["body"],
        "target": d["agent"],
        "priority": 2,
        "mode": "wait",
        "queued_at_ms": int(d["created_at"] * 1000),
        "thread_id": d.get("thread"),
        "event_id": d["delivery_id"],
        "delivery_id": d["delivery_id"],
        "state": d["state"],
    }


def _dead_letter(d: dict[str, Any]) -> dict[str, Any]:
    now = time.time()
    return {
        "delivery_id": d["delivery_id"],
        "worker_name": d["agent"],
        "event_id": d["delivery_id"],
        "from": d["sender"],
        "to": d["agent"],
        "attempts": d["attempts"],
        "reason": d.get("last_error"),
        "queued_at_ms": int(d["created_at"] * 1000),
        "failed_at_ms": int(d["updated_at"] * 1000),
        "age_ms": int((now - d["created_at"]) * 1000),
        "body": d["body"],
    }


def _rss(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
