"""Who is behind a connection: the process, and the agent it belongs to, if any.

The broker does not take a token's word for who is calling. A connection on the state
directory's Unix socket carries its peer's credentials (``SO_PEERCRED``); one on loopback
TCP is traced to the processes holding the other end through ``/proc/net/tcp`` and their
file descriptors. A process belongs to an agent if one of its ancestors is that agent's
worker, if it is in that agent's program session, or if it carries the broker run's tag
and the agent's name in its environment (see sweep.py). Such a connection acts as that
agent whatever token it presents.

Blocking ``/proc`` reads: run :func:`peer_processes` off the Trio thread.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from trio_relay.linux.procfs import environ, holds, pids, process_stat
from trio_relay.linux.sweep import AGENT_ENV, RUN_ENV

#: The answer for a process that carries this broker run's tag but cannot be placed with
#: one agent (its agent ended, or it names no agent, or two): it gets no rights at all.
UNPLACED = "?"
_MAX_ANCESTRY = 128


@dataclass(frozen=True, slots=True)
class AgentProcesses:
    """The broker's view of its agents' processes: each running worker's pid, and the
    sessions they lead or their programs lead, by agent name."""

    run_id: str
    workers: Mapping[int, str]
    sessions: Mapping[int, str]

    @property
    def names(self) -> set[str]:
        return {*self.workers.values(), *self.sessions.values()}


def peer_processes(sock: socket.socket) -> list[int] | None:
    """The pids at the other end of ``sock``: its peer's credentials for a Unix socket,
    the holders of the other end for loopback TCP. None if that cannot be known (a remote
    host, or a peer already gone)."""
    if sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        return [pid] if pid > 0 else None
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        peer, local = sock.getpeername(), sock.getsockname()
    except OSError:
        return None  # gone already
    if not ipaddress.ip_address(peer[0]).is_loopback:
        return None
    inode = tcp_inode(sock.family, peer[:2], local[:2])
    return socket_holders(inode) if inode else None


def owner_agent(pids_: Iterable[int], agents: AgentProcesses) -> str | None:
    """The agent the processes belong to: its name, :data:`UNPLACED`, or None (not an
    agent's process)."""
    found = {agent for pid in pids_ if (agent := _agent_of(pid, agents)) is not None}
    if not found:
        return None
    return found.pop() if len(found) == 1 else UNPLACED


def _agent_of(pid: int, agents: AgentProcesses) -> str | None:
    """Through its ancestry and session first (what the kernel says), then its tags."""
    current, steps = pid, 0
    while current > 1 and steps < _MAX_ANCESTRY:
        if current in agents.workers:
            return agents.workers[current]
        stat = process_stat(current)
        if stat is None:
            break
        if stat.session in agents.sessions:
            return agents.sessions[stat.session]
        current, steps = stat.ppid, steps + 1
    tags = _tags(pid)
    if tags.get(RUN_ENV) != agents.run_id:
        return None
    name = tags.get(AGENT_ENV)
    return name if name in agents.names else UNPLACED


def _tags(pid: int) -> dict[str, str]:
    out = {}
    for item in environ(pid) or ():
        key, sep, value = item.partition(b"=")
        if sep and key in (RUN_ENV.encode(), AGENT_ENV.encode()):
            out[key.decode()] = value.decode("utf-8", "replace")
    return out


def tcp_inode(family: int, peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """The inode of the socket whose local end is ``peer`` and remote end ``local``."""
    table = "/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp"
    want = (_proc_address(family, *peer), _proc_address(family, *local))
    try:
        with open(table) as f:
            next(f)  # the header
            for line in f:
                fields = line.split()
                if (fields[1], fields[2]) == want:
                    return int(fields[9])
    except OSError:
        return None
    return None


def _proc_address(family: int, host: str, port: int) -> str:
    """An address as /proc/net/tcp{,6} writes it: the packed address in host-order
    32-bit words, hex, then the port."""
    packed = socket.inet_pton(family, host)
    words = struct.unpack(f"<{len(packed) // 4}I", packed)
    return "".join(f"{word:08X}" for word in words) + f":{port:04X}"


def socket_holders(inode: int) -> list[int] | None:
    target = f"socket:[{inode}]"
    return [pid for pid in pids() if holds(pid, target)] or None
