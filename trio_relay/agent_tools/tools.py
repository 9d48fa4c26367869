"""The relay tools an agent gets through MCP: their arguments, schemas and what each does.

Each tool is a :class:`Tool`: a name, a description an agent can act on, an argument Struct
(its JSON schema is generated from it, so the two cannot disagree) and an async function
that takes the decoded arguments and a connected :class:`~trio_relay.client.RelayClient`
and returns a JSON-able dict. :func:`run_tool` decodes the arguments and turns every error
into a :class:`ToolError` whose text says what to do. No MCP SDK here: the server
(:mod:`.server`) wires these to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from trio_relay.client import RelayClient
from trio_relay.errors import RemoteError
from trio_relay.wire import DeliveryRecord

#: How long relay_wait may wait at most (seconds): agent CLIs give up on a tool call
#: after a few minutes.
MAX_WAIT = 300.0
#: How many messages relay_inbox returns at most.
INBOX_LIMIT = 50
#: The states of a delivery that was typed into its agent.
TYPED = ["verified", "unverified"]


class ToolError(Exception):
    """A tool call that failed; its text is shown to the agent as the tool's error."""


class NoArgs(msgspec.Struct, forbid_unknown_fields=True):
    pass


class SendArgs(msgspec.Struct, forbid_unknown_fields=True):
    to: Annotated[str, msgspec.Meta(min_length=1, description="The agent's name (relay_peers).")]
    message: Annotated[
        str, msgspec.Meta(min_length=1, description="The text to type into its input box.")
    ]
    thread: Annotated[
        str, msgspec.Meta(description="A thread name to group replies under (optional).")
    ] = ""


class DeliveryArgs(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[
        str, msgspec.Meta(min_length=1, description="A delivery id, as relay_send returned it.")
    ]


class WaitArgs(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[
        str, msgspec.Meta(min_length=1, description="A delivery id, as relay_send returned it.")
    ]
    timeout: Annotated[
        float, msgspec.Meta(ge=0, le=MAX_WAIT, description="Seconds to wait at most.")
    ] = 30.0


class InboxArgs(msgspec.Struct, forbid_unknown_fields=True):
    since: Annotated[
        str,
        msgspec.Meta(
            description="Only messages after this delivery id (the `next` of the last call);"
            " empty: the newest ones."
        ),
    ] = ""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    arguments: type[msgspec.Struct]
    run: Callable[[Any, RelayClient, str], Awaitable[dict[str, Any]]]

    def input_schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments, inline (no $ref)."""
        _, components = msgspec.json.schema_components([self.arguments])
        schema = dict(components[self.arguments.__name__])
        schema.pop("title", None)
        return schema


def delivery_view(record: DeliveryRecord) -> dict[str, Any]:
    """What an agent needs of a delivery."""
    view = {
        "id": record.delivery_id,
        "from": record.sender,
        "to": record.agent,
        "state": record.state,
        "ended": record.terminal,
        "verification": record.verification,
        "attempts": record.attempts,
    }
    for name in ("thread", "reason", "last_error", "waiting"):
        if getattr(record, name):
            view[name] = getattr(record, name)
    return view


async def peers(_: NoArgs, client: RelayClient, me: str) -> dict[str, Any]:
    found = await client.peers()
    return {
        "you": me,
        "peers": [
            {"name": p.name, "state": p.state, "activity": p.activity, "profile": p.profile}
            for p in found
        ],
    }


async def send(args: SendArgs, client: RelayClient, me: str) -> dict[str, Any]:
    if args.to == me:
        raise ToolError("you cannot message yourself; relay_peers lists the agents you can")
    receipt = await client.send(args.to, args.message, thread=args.thread or None)
    return {
        "id": receipt.delivery_id,
        "to": receipt.agent,
        "state": receipt.state,
        "note": "committed: it will be typed into the agent's input once it is ready;"
        " relay_wait follows it",
    }


async def delivery(args: DeliveryArgs, client: RelayClient, me: str) -> dict[str, Any]:
    return delivery_view(await client.delivery(args.id))


async def wait(args: WaitArgs, client: RelayClient, me: str) -> dict[str, Any]:
    try:
        return delivery_view(await client.wait(args.id, args.timeout))
    except RemoteError as exc:
        if exc.code != "timeout":
            raise
        now = delivery_view(await client.delivery(args.id))
        raise ToolError(
            f"{args.id} has not ended within {args.timeout:g} s; it is {now['state']}"
            + (f" ({now['waiting']})" if "waiting" in now else "")
            + ". Call relay_wait again to keep waiting, or go on and check later with"
            " relay_delivery."
        ) from None


async def inbox(args: InboxArgs, client: RelayClient, me: str) -> dict[str, Any]:
    found = await client.deliveries(me, states=TYPED, limit=INBOX_LIMIT, after=args.since or None)
    messages = [
        {
            "id": d.delivery_id,
            "from": d.sender,
            "thread": d.thread,
            "message": d.body,
            "verification": d.verification,
            "at": d.created_at,
        }
        for d in found
    ]
    result: dict[str, Any] = {"messages": messages}
    result["next"] = messages[-1]["id"] if messages else args.since
    return result


TOOLS = {
    tool.name: tool
    for tool in (
        Tool(
            "relay_peers",
            "List the other agents on this trio-relay broker that you can message, each with"
            " its state (running, exited...) and activity (idle, busy, attention: waiting for"
            " a person, starting, exited).",
            NoArgs,
            peers,
        ),
        Tool(
            "relay_send",
            "Send a message to another agent. It is typed into that agent's input as"
            " 'Relay message from <you> [<id>]: <message>' once the agent is ready. Returns"
            " the delivery id as soon as the message is committed (it is then never lost);"
            " relay_wait follows it to the end.",
            SendArgs,
            send,
        ),
        Tool(
            "relay_delivery",
            "The state of a message you sent or received, by delivery id: queued, sent,"
            " verified (the agent took it: verification submitted or echo), unverified"
            " (typed, not confirmed), failed, dropped or dead_letter.",
            DeliveryArgs,
            delivery,
        ),
        Tool(
            "relay_wait",
            "Wait until a delivery ends (verified, unverified, failed, dropped or"
            f" dead_letter), at most `timeout` seconds (up to {MAX_WAIT:g}).",
            WaitArgs,
            wait,
        ),
        Tool(
            "relay_inbox",
            "The messages other agents sent you that were typed into your input, oldest"
            f" first (at most {INBOX_LIMIT}), to re-read them; pass `next` as `since` to get"
            " only newer ones.",
            InboxArgs,
            inbox,
        ),
    )
}

#: What a refusal's text gets added, by error code.
HINTS = {
    "forbidden": " (trio-relay's scope rule: an agent sends only as itself and reads only"
    " the deliveries it sent or received)",
    "not_found": ": relay_peers lists the agents you can message; a delivery id looks like"
    " the one relay_send returned",
    "store_error": ": the broker could not commit it (its disk may be full), so nothing was"
    " sent; try again later",
}


async def run_tool(
    name: str, arguments: dict[str, Any] | None, client: RelayClient, me: str
) -> dict[str, Any]:
    """The result of tool ``name``. Raises ToolError (its text for the agent) for an unknown
    tool, bad arguments or an error answer from the broker. BrokerUnreachable passes
    through (the server says what to do about it)."""
    tool = TOOLS.get(name)
    if tool is None:
        raise ToolError(f"no tool {name!r}; the relay tools are {', '.join(TOOLS)}")
    try:
        args = msgspec.convert(arguments or {}, tool.arguments)
    except msgspec.ValidationError as exc:
        fields = ", ".join(tool.input_schema().get("properties", {})) or "none"
        raise ToolError(f"bad arguments for {name}: {exc} (its arguments: {fields})") from None
    try:
        return await tool.run(args, client, me)
    except RemoteError as exc:
        message = str(exc).partition(": ")[2] or str(exc)
        raise ToolError(f"{name} refused: {message}{HINTS.get(exc.code, '')}") from None
