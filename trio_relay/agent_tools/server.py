"""``trio-relay mcp``: the relay tools (:mod:`.tools`) as an MCP server on stdin/stdout.

Built on the official MCP SDK's low-level server, which runs on anyio and so on Trio: this
process runs ``trio.run`` and the SDK's tasks are Trio tasks. The SDK is imported only here,
in this process (about 40 MB and 0.3 s that the broker and the agent never pay).

The server acts as the agent whose ``TRIO_RELAY_URL`` and ``TRIO_RELAY_TOKEN`` it was given
(the agent's own environment, or the entry its CLI's configuration passes on): it never
reads the owner's token from a state directory, and it refuses to act on a connection the
broker says is the owner's. It connects at the first tool call, so it starts even while the
broker is down, and connects again after the connection broke; each tool call that fails
is an MCP tool error whose text says what to do. Standard output is the MCP stream:
everything else goes to standard error.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import mcp_types as types
import trio
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server

from trio_relay import __version__
from trio_relay.agent_tools.tools import TOOLS, ToolError, run_tool
from trio_relay.client import RelayClient, open_client
from trio_relay.errors import BrokerUnreachable, RelayError

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Tools to message the other agents on this trio-relay broker: relay_peers lists them,"
    " relay_send sends one a message, relay_wait follows it, relay_inbox re-reads what"
    " others sent you."
)


class OwnerToken(RelayError):
    error_code = "forbidden"


class BrokerLink:
    """One connection to the broker for the server's tool calls: opened by the first call
    that needs it, and again by the first call after it broke. Calls share it."""

    def __init__(self, url: str, token: str, nursery: trio.Nursery) -> None:
        self.url, self.token = url, token
        self._nursery = nursery
        self._lock = trio.Lock()
        self._client: RelayClient | None = None
        self._release = trio.Event()
        self.me = ""

    async def client(self) -> RelayClient:
        """The connected client. Raises BrokerUnreachable (nothing was sent), OwnerToken.
        Cancellation while connecting leaves no connection behind."""
        async with self._lock:
            if self._client is not None and not self._client.closed:
                return self._client
            self._release.set()  # the broken one's task ends
            self._client, self._release = None, trio.Event()
            got = await self._nursery.start(self._hold, self._release)
            if isinstance(got, Exception):
                raise got
            self._client = got
            return got

    async def _hold(
        self, release: trio.Event, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep one connection open until ``release``; report the client, or why none
        could be opened, through ``task_status``."""
        started = False
        try:
            async with open_client(self.url, self.token, connect_timeout=5) as client:
                with trio.move_on_after(10) as waited:
                    status = await client.status()
                if waited.cancelled_caught:
                    raise BrokerUnreachable(f"{self.url} did not answer `status` in 10 s")
                if status.you is None:
                    raise OwnerToken(
                        "trio-relay mcp acts only as an agent, and the broker took this"
                        " connection for its owner's: give it the agent's TRIO_RELAY_TOKEN"
                    )
                self.me = status.you
                task_status.started(client)
                started = True
                await release.wait()
        except (RelayError, OSError) as exc:
            if not started:
                task_status.started(exc)
            else:
                log.warning("the connection to the broker ended: %s", exc)

    def close(self) -> None:
        self._release.set()


def unreachable_text(link: BrokerLink, exc: Exception, sent: bool) -> str:
    if not sent and any(status in str(exc) for status in ("401", "403")):
        return (
            f"the trio-relay broker at {link.url} refused this agent's token ({exc}). Nothing"
            " was sent. The agent may have been released, or the broker restarted with a new"
            " token: tell the user."
        )
    maybe = (
        " The connection broke while the broker had the request: if it was relay_send, the"
        " message may have been committed, so do not send it again blindly."
        if sent
        else " Nothing was sent."
    )
    return (
        f"the trio-relay broker at {link.url} is not reachable ({exc}).{maybe} It may have"
        " stopped: tell the user (`trio-relay up` starts it), then try again."
    )


def build_server(link: BrokerLink) -> Server[Any]:
    async def list_tools(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=t.name, description=t.description, input_schema=t.input_schema())
                for t in TOOLS.values()
            ]
        )

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        connected = False
        try:
            client = await link.client()
            connected = True
            result = await run_tool(params.name, params.arguments, client, link.me)
        except ToolError as exc:
            return failure(str(exc))
        except OwnerToken as exc:
            return failure(str(exc))
        except BrokerUnreachable as exc:
            return failure(unreachable_text(link, exc, sent=connected))
        except RelayError as exc:  # a bad URL, an error answer while connecting
            return failure(f"{params.name} failed: {exc}; nothing was sent")
        text = json.dumps(result, ensure_ascii=False)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)], structured_content=result
        )

    return Server(
        "trio-relay",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def failure(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


async def serve(url: str, token: str) -> None:
    """Serve MCP on stdin/stdout until the client closes stdin. Cancellation ends it and
    closes the broker connection."""
    async with trio.open_nursery() as nursery:
        link = BrokerLink(url, token, nursery)
        server = build_server(link)
        try:
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())
        finally:
            link.close()
