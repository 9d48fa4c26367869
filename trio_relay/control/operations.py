"""What each control operation does against the broker.

:meth:`Operations.perform` takes a request already decoded and authorized (see auth.py)
and returns its result as the encoder takes it. Subscriptions are not here: they belong to
a connection (connection.py).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgspec
import trio

from trio_relay import __version__
from trio_relay.broker.broker import Broker
from trio_relay.broker.restart import RestartPolicy
from trio_relay.control.auth import Principal, check_party
from trio_relay.errors import AgentExists, Forbidden
from trio_relay.profiles import mcp_config
from trio_relay.profiles.catalog import Catalog, program_index, user_profile_dirs
from trio_relay.profiles.profile import Profile, encode_profile
from trio_relay.wire import (
    AgentsOp,
    ControlRequest,
    DeadLettersOp,
    DeliveriesOp,
    DeliveryOp,
    DeliveryRecord,
    FlushOp,
    InputOp,
    LoginOp,
    LogsOp,
    ModeOp,
    PeersOp,
    PeerSummary,
    PendingOp,
    PruneOp,
    RedeliverOp,
    ReleaseOp,
    ResizeOp,
    SendOp,
    ShutdownOp,
    SnapshotOp,
    SpawnOp,
    StatusOp,
    WaitOp,
)
from trio_relay.wire.vocabulary import check_terminal_size

log = logging.getLogger(__name__)


def pty_command(
    command: list[str], rows: int, cols: int, profile: Profile | None = None
) -> list[str]:
    """The argv that runs ``command`` under the PTY worker (with ``profile``, as JSON). With
    ``-P``: the agent's working directory, where the worker starts, is not on its
    ``sys.path``, so a project's ``types.py`` or ``fcntl.py`` is not imported instead."""
    chosen = ["--profile", encode_profile(profile)] if profile is not None else []
    return [
        sys.executable,
        "-P",
        "-m",
        "trio_relay.worker.pty",
        *chosen,
        "--rows",
        str(rows),
        "--cols",
        str(cols),
        "--",
        *command,
    ]


class Operations:
    """The operations of one broker. ``url`` is what ``status`` reports (the server sets
    it once listening); ``shutdown_requested`` is set by ``shutdown``; ``retention`` is
    what ``prune`` without an age deletes: older than this (seconds; None: nothing);
    ``overlays`` is where ``spawn --mcp`` writes an agent's MCP configuration (one
    directory per agent, removed when it is released; None: a temporary directory)."""

    def __init__(
        self,
        broker: Broker,
        *,
        retention: float | None = None,
        profiles: Catalog | None = None,
        overlays: Path | None = None,
    ) -> None:
        self.broker = broker
        self.retention = retention
        self.profiles = profiles or Catalog(user_profile_dirs(None))
        self._overlays = overlays
        self._preparing: set[str] = set()  # names whose --mcp spawn is under way
        self.url = ""
        #: Mints a dashboard login URL; set by a broker that serves HTTP.
        self.login_url: Callable[[], str] | None = None
        self.started_at = time.time()
        self.shutdown_requested = trio.Event()
        #: This broker's membership of a cluster (trio_relay.cluster), or None. In a
        #: cluster, sends and the delivery queries go through the cluster's PostgreSQL.
        self.cluster: Any = None

    async def perform(self, request: ControlRequest, principal: Principal) -> Any:
        """The result of ``request`` for ``principal``. Raises what the broker raises
        (WorkerNotFound, RequestTimeout, ...), ValueError for an argument out of range,
        Forbidden for an agent setting a mode. Cancellation cancels the broker call; what
        the broker has committed by then stays committed."""
        broker = self.broker
        match request:
            case StatusOp():
                return self._status(principal)
            case SpawnOp():
                return _info(await self._spawn(request))
            case AgentsOp(cluster=True):
                found = await self.cluster_member("agents --cluster").agents()
                return [a for a in found if principal.agent in (None, a.name)]
            case AgentsOp():
                return [_info(a) for a in broker.agents() if principal.agent in (None, a.name)]
            case PeersOp():
                return [_peer(a) for a in broker.agents() if a.name != principal.agent]
            case ReleaseOp(name=name):
                try:
                    return _info(await broker.release(name))
                finally:  # also for an agent that ended on its own (WorkerNotFound)
                    await self._remove_overlay(name)
            case SendOp():
                return await self._send(request, principal)
            case DeliveriesOp(agent=agent, states=states, limit=limit, after=after) if (
                self.cluster is not None
            ):
                wanted_states = tuple(states) if states else None
                return await self.cluster.deliveries(agent, wanted_states, _positive(limit), after)
            case DeliveriesOp(agent=agent, states=states, limit=limit, after=after):
                wanted = frozenset(states) if states else None
                found = await broker.deliveries(
                    agent, states=wanted, limit=_positive(limit), after=after
                )
                return [self._explained(d) for d in found]
            case DeliveryOp(delivery_id=delivery_id):
                record = await self._delivery(delivery_id)
                check_party(principal, record.sender, record.agent, delivery_id)
                return self._explained(record)
            case WaitOp(delivery_id=delivery_id, timeout=timeout):
                _check_timeout(timeout)
                record = await self._delivery(delivery_id)
                check_party(principal, record.sender, record.agent, delivery_id)
                return await self._wait(delivery_id, timeout)
            case DeadLettersOp(agent=agent, limit=limit) if self.cluster is not None:
                return await self.cluster.deliveries(
                    agent, ("dead_letter",), _positive(limit), None
                )
            case DeadLettersOp(agent=agent, limit=limit):
                return [_info(d) for d in await broker.dead_letters(agent, limit=_positive(limit))]
            case RedeliverOp(delivery_id=delivery_id) if self._in_cluster(delivery_id):
                return _info(await self.cluster.redeliver(delivery_id))
            case RedeliverOp(delivery_id=delivery_id):
                return _info(await broker.redeliver(delivery_id))
            case InputOp(name=name) | ResizeOp(name=name) | SnapshotOp(name=name) if (
                principal.agent is None and not principal.forwarding and await self._elsewhere(name)
            ):
                return await self.cluster.forward(request)
            case InputOp(name=name, data=data):
                return await broker.write_input(name, data)
            case ResizeOp(name=name, rows=rows, cols=cols):
                return await broker.resize(name, rows, cols)
            case SnapshotOp(name=name, ansi=ansi, timeout=timeout):
                return await broker.snapshot(name, ansi=ansi, timeout=timeout)
            case ModeOp():
                return await self._mode(request, principal)
            case PendingOp(name=name):
                broker.agent(name)  # WorkerNotFound for an unknown agent
                pending = [self._explained(d) for d in await broker.pending(name)]
                return {"mode": broker.mode(name), "deliveries": pending}
            case FlushOp(name=name):
                broker.agent(name)
                return {"count": await broker.flush(name)}
            case LogsOp(name=name, lines=lines):
                if lines < 0:
                    raise ValueError("`lines` must not be negative")
                return broker.logs(name)[-lines:] if lines else []
            case PruneOp(older_than=older_than):
                return await broker.prune(self._prune_age(older_than))
            case ShutdownOp():
                return self.shutdown_requested.set()
            case LoginOp():
                if self.login_url is None:
                    raise ValueError(
                        "this broker serves no HTTP, so no dashboard: start it with"
                        " `trio-relay up --http 127.0.0.1:8377`"
                    )
                return {"url": self.login_url()}
            case _:
                raise TypeError(f"{type(request).__name__} is not an operation of the broker's")

    def cluster_member(self, what: str) -> Any:
        """The cluster membership; ValueError saying how to join one if there is none."""
        if self.cluster is None:
            raise ValueError(
                f"{what}: this broker is in no cluster (start it with"
                " `trio-relay up --cluster postgresql://...`)"
            )
        return self.cluster

    async def _elsewhere(self, agent: str) -> bool:
        """In a cluster, ``agent`` is not this broker's but another's (forward to it)."""
        if self.cluster is None or self.broker.supervisor.taken(agent):
            return False
        found = await self.cluster.locate(agent)
        return found is not None and found[0] != self.cluster.name

    def _in_cluster(self, delivery_id: str) -> bool:
        """A cluster's delivery id (``cluster-N``), on a broker in a cluster."""
        return self.cluster is not None and delivery_id.startswith("cluster-")

    async def _delivery(self, delivery_id: str) -> DeliveryRecord:
        if self._in_cluster(delivery_id):
            return await self.cluster.get(delivery_id)
        return await self.broker.delivery(delivery_id)

    async def _wait(self, delivery_id: str, timeout: float) -> DeliveryRecord:
        if self._in_cluster(delivery_id):
            return await self.cluster.wait(delivery_id, timeout)
        return await self.broker.wait_delivery(delivery_id, timeout)

    def _status(self, principal: Principal) -> dict[str, Any]:
        broker = self.broker
        states: dict[str, int] = {}
        for agent in broker.agents():
            states[agent.state] = states.get(agent.state, 0) + 1
        return {
            "version": __version__,
            "pid": os.getpid(),
            "url": self.url,
            "uptime": time.time() - self.started_at,
            "agents": states,
            "last_seq": broker.events.last_seq,
            "requests": asdict(broker.statistics()),
            "you": principal.agent,
            "cluster": None
            if self.cluster is None
            else {"broker": self.cluster.name, "connected": self.cluster.connected.is_set()},
            "shared_pty": None
            if (host := broker.supervisor.pty_host) is None
            else {"pid": host.pid},
        }

    async def _spawn(self, op: SpawnOp) -> Any:
        if not op.command:
            raise ValueError("`command` must not be empty")
        check_terminal_size(op.rows, op.cols)
        command, env, preamble = op.command, op.env, None
        if op.native:
            if op.profile is not None or op.mcp:
                raise ValueError("a native worker takes no profile and no --mcp")
            argv, profile = op.command, None
        else:
            catalog = self.profiles
            profile = catalog.get(op.profile) if op.profile else catalog.choose(op.command)
            if op.mcp:
                command, env = await self._with_mcp(op, profile)
                preamble = mcp_config.PREAMBLE
            argv = pty_command(command, op.rows, op.cols, profile)
        restart = RestartPolicy(op.restart)
        try:
            return await self.broker.spawn(
                op.name,
                argv,
                cwd=op.cwd,
                env=env,
                restart=restart,
                profile=profile.name if profile else None,
                preamble=preamble,
            )
        except BaseException:
            if op.mcp:  # the overlay this call made (no other --mcp spawn of the name ran)
                await self._remove_overlay(op.name)
            raise
        finally:
            if op.mcp:  # _with_mcp claimed the name
                self._preparing.discard(op.name)

    async def _with_mcp(self, op: SpawnOp, profile: Profile) -> tuple[list[str], dict[str, str]]:
        """The command and environment that give the agent the relay tools. Raises
        ValueError saying why it cannot."""
        if profile.mcp is None:
            raise ValueError(
                f"profile {profile.name!r} does not say how to give its program an MCP server"
                " (the claude, codex and gemini profiles do); spawn it without --mcp"
            )
        if importlib.util.find_spec("mcp") is None:
            raise ValueError(
                "--mcp needs the MCP SDK where the broker runs: pip install 'trio-relay[mcp]'"
            )
        if self.broker.agent_environment is None:
            raise ValueError("--mcp needs a broker that gives agents its address (trio-relay up)")
        index = program_index(op.command)
        if index is None:
            raise ValueError("--mcp: the command runs no program")
        if self.broker.supervisor.taken(op.name) or op.name in self._preparing:
            raise AgentExists(op.name)  # before its running agent's overlay is replaced
        self._preparing.add(op.name)  # until the spawn ends (_spawn's finally)
        directory = self._overlay(op.name)
        try:
            setup = await trio.to_thread.run_sync(
                mcp_config.prepare, profile.mcp, directory, mcp_config.home_of(op.env)
            )
        except BaseException as exc:
            await self._remove_overlay(op.name)
            self._preparing.discard(op.name)
            if not isinstance(exc, OSError):
                raise
            raise ValueError(
                f"--mcp: cannot write the MCP configuration in {directory}: {exc}"
            ) from None
        command = mcp_config.insert_args(op.command, index, setup.args)
        return command, {**op.env, **setup.env}

    async def _remove_overlay(self, agent: str) -> None:
        """Remove the agent's MCP configuration, if --mcp made one; shielded, so a
        cancellation does not leave it behind. An OSError is logged (the agent's fate is
        what the caller reports)."""
        if self._overlays is None:
            return
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(mcp_config.remove, self._overlay(agent))
            except OSError as exc:
                log.error("cannot remove %s's MCP configuration: %s", agent, exc)

    def _overlay(self, agent: str) -> Path:
        """The agent's directory for its MCP configuration (a temporary root is made the
        first time, if the broker gave none)."""
        if self._overlays is None:
            self._overlays = Path(tempfile.mkdtemp(prefix="trio-relay-mcp-"))
        return mcp_config.directory_of(self._overlays, agent)

    def _explained(self, record: DeliveryRecord) -> DeliveryRecord:
        return _explained_record(self.broker, record)

    async def _send(self, op: SendOp, principal: Principal) -> dict[str, Any]:
        _check_timeout(op.timeout)  # before anything is committed
        sender = principal.agent or op.sender
        via = self.cluster or self.broker
        receipt = await via.send(op.to, op.body, sender=sender, thread=op.thread)
        result = _info(receipt)
        if op.wait:
            done = await self._wait(receipt.delivery_id, op.timeout)
            result.update(msgspec.structs.asdict(done))
        return result

    async def _mode(self, op: ModeOp, principal: Principal) -> dict[str, str]:
        """The broker's delivery mode for the agent (hold keeps deliveries queued)."""
        self.broker.agent(op.name)  # WorkerNotFound for an unknown agent
        if op.set is not None:
            if principal.agent is not None:
                raise Forbidden("an agent token may only read its mode")
            await self.broker.set_mode(op.name, op.set)
        return {"mode": self.broker.mode(op.name)}

    def _prune_age(self, older_than: float | None) -> float:
        if older_than is not None:
            return older_than
        if self.retention is None:
            raise ValueError("this broker keeps everything (no retention): give `older_than`")
        return self.retention


def _check_timeout(timeout: float) -> None:
    if not 0 <= timeout < float("inf"):
        raise ValueError(f"`timeout` must be a non-negative number of seconds, not {timeout!r}")


def _peer(agent: Any) -> PeerSummary:
    return PeerSummary(
        name=agent.name,
        state=agent.state,
        activity=agent.activity,
        activity_since=agent.activity_since,
        profile=agent.profile,
    )


def _positive(limit: int) -> int:
    if limit < 1:
        raise ValueError("`limit` must be positive")
    return limit


def _explained_record(broker: Broker, record: DeliveryRecord) -> DeliveryRecord:
    """``record``, with why it waits if its agent's worker holds it (it was handed over)."""
    if record.state != "sent":
        return record
    waiting = broker.waiting(record.agent)
    return msgspec.structs.replace(record, waiting=waiting) if waiting else record


def _info(info: Any) -> Any:
    """A result as the encoder takes it: Structs as they are, dataclasses as dicts."""
    return info if isinstance(info, msgspec.Struct) else asdict(info)
