"""Which agent's process is behind an HTTP request, as the control listener tells for its
connections (linux/peers.py): such a request acts as that agent whatever key it carries.

A TCP connection is traced to its holders once; each request on it then costs one read of
``/proc/net/tcp``, which finds the connection's socket inode: the same inode is the same
connection (a new connection from a reused port has another). Blocking reads run in a
worker thread, which a cancellation waits for (they are brief).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import trio

from trio_relay.linux.peers import AgentProcesses, owner_agent, socket_holders, tcp_inode

#: Connections remembered at most; the oldest are forgotten first.
KEPT = 4096


class Callers:
    """``agents`` gives the broker's view of its agents' processes, read on the Trio
    thread for each request."""

    def __init__(self, agents: Callable[[], AgentProcesses]) -> None:
        self._agents = agents
        self._known: dict[tuple[tuple[str, int], tuple[str, int]], tuple[int, str | None]] = {}

    async def agent_of(
        self, client: tuple[str, int] | None, server: tuple[str, int] | None
    ) -> str | None:
        """The agent whose process holds the other end of the connection from ``client``
        to ``server``: its name, peers.UNPLACED, or None (not an agent's, or not a
        loopback connection)."""
        if client is None or server is None or not ipaddress.ip_address(client[0]).is_loopback:
            return None
        agents = self._agents()
        key = (tuple(client), tuple(server))
        return await trio.to_thread.run_sync(self._look, key, agents)

    def _look(
        self, key: tuple[tuple[str, int], tuple[str, int]], agents: AgentProcesses
    ) -> str | None:
        client, server = key
        family = socket.AF_INET6 if ":" in client[0] else socket.AF_INET
        inode = tcp_inode(family, client, server)
        if inode is None:
            return None  # gone already
        known = self._known.get(key)
        if known is not None and known[0] == inode:
            return known[1]
        holders = socket_holders(inode)
        agent = owner_agent(holders, agents) if holders else None
        self._known[key] = (inode, agent)
        while len(self._known) > KEPT:
            del self._known[next(iter(self._known))]
        return agent
