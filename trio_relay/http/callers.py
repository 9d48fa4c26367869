"""Which agent's process is behind an HTTP request, as the control listener tells for its
connections (linux/peers.py): such a request acts as that agent whatever key it carries.

A TCP connection is traced to its holders once (about 5 ms: every process's file
descriptors are read). Its answer is then taken for the requests that follow within
:data:`TRUSTED_FOR` seconds, and after that checked again by one read of ``/proc/net/tcp``
(about 5 ms too, however few lines it has), which finds the connection's socket inode: the
same inode is the same connection, a new connection from a reused port has another. So a
client port reused within TRUSTED_FOR seconds of the connection before it closing would be
taken for that connection's process. Blocking reads run in a worker thread, which a
cancellation waits for (they are brief).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable

import trio

from trio_relay.linux.peers import AgentProcesses, owner_agent, socket_holders, tcp_inode

Key = tuple[tuple[str, int], tuple[str, int]]

#: Connections remembered at most; the oldest are forgotten first.
KEPT = 4096
#: Seconds a connection's answer is taken without reading /proc/net/tcp again.
TRUSTED_FOR = 1.0


class Callers:
    """``agents`` gives the broker's view of its agents' processes, read on the Trio
    thread for each request."""

    def __init__(self, agents: Callable[[], AgentProcesses]) -> None:
        self._agents = agents
        #: (client, server) -> (socket inode, agent, when checked)
        self._known: dict[Key, tuple[int, str | None, float]] = {}

    async def agent_of(
        self, client: tuple[str, int] | None, server: tuple[str, int] | None
    ) -> str | None:
        """The agent whose process holds the other end of the connection from ``client``
        to ``server``: its name, peers.UNPLACED, or None (not an agent's, or not a
        loopback connection)."""
        if client is None or server is None or not ipaddress.ip_address(client[0]).is_loopback:
            return None
        key = (tuple(client), tuple(server))
        known = self._known.get(key)  # type: ignore[arg-type]
        if known is not None and time.monotonic() - known[2] < TRUSTED_FOR:
            return known[1]
        agents = self._agents()
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
            self._known[key] = (inode, known[1], time.monotonic())
            return known[1]
        holders = socket_holders(inode)
        agent = owner_agent(holders, agents) if holders else None
        self._known.pop(key, None)
        self._known[key] = (inode, agent, time.monotonic())
        while len(self._known) > KEPT:
            del self._known[next(iter(self._known))]
        return agent
