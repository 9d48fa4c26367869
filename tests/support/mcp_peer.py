"""An agent's side of a conversation through the relay tools, for the tests: run inside an
agent (its TRIO_RELAY_* environment), it starts `trio-relay mcp` with the MCP SDK's client
and writes one JSON line of what it did to OUT.

    mcp_peer.py send TO COUNT OUT      relay_send COUNT messages "echo n" to TO, relay_wait each
    mcp_peer.py answer TO COUNT OUT    relay_inbox until COUNT messages came, then relay_send an
                                       "echo ack <id>" to TO for each
"""

from __future__ import annotations

import json
import os
import sys

import trio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client


async def call(session: ClientSession, tool: str, **arguments: object) -> dict:  # type: ignore[type-arg]
    result = await session.call_tool(tool, arguments)
    text = result.content[0].text  # type: ignore[union-attr]
    if result.is_error:
        raise SystemExit(f"{tool} failed: {text}")
    return json.loads(text)  # type: ignore[no-any-return]


async def main(mode: str, to: str, count: int, out: str) -> None:
    # The SDK's client passes a server only a few variables (HOME, PATH...), as a CLI's
    # configuration does: the agent's own are named, as spawn --mcp has Codex do.
    env = {name: value for name, value in os.environ.items() if name.startswith("TRIO_RELAY_")}
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "trio_relay", "mcp"], env=env
    )
    report: dict[str, object] = {}
    with trio.fail_after(120):
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            if mode == "send":
                ended = []
                for n in range(count):
                    sent = await call(session, "relay_send", to=to, message=f"echo {n}")
                    done = await call(session, "relay_wait", id=sent["id"], timeout=60)
                    ended.append([sent["id"], done["state"], done["verification"]])
                report["sent"] = ended
            else:
                got: list[dict] = []  # type: ignore[type-arg]
                since = ""
                while len(got) < count:
                    inbox = await call(session, "relay_inbox", since=since)
                    got += inbox["messages"]
                    since = inbox["next"]
                    await trio.sleep(0.1)
                acks = []
                for message in got:
                    sent = await call(
                        session, "relay_send", to=to, message=f"echo ack {message['id']}"
                    )
                    acks.append(sent["id"])
                report["received"] = [[m["id"], m["from"], m["message"]] for m in got]
                report["acks"] = acks
    await trio.Path(out).write_text(json.dumps(report) + "\n")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
