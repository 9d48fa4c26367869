"""Holding an agent's deliveries: ``hold`` keeps new ones queued until a flush releases
them; ``auto_inject`` hands them over as they come. The mode is stored and survives
restarts; a flush is not."""

from __future__ import annotations

from trio_relay.broker.delivery.core import Core
from trio_relay.broker.delivery.handover import pump
from trio_relay.store import sql
from trio_relay.wire.vocabulary import INJECT_MODES


async def set_mode(core: Core, agent: str, mode: str) -> None:
    """See :meth:`DeliveryEngine.set_mode`."""
    if mode not in INJECT_MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(INJECT_MODES)}")
    box = core.known(agent)

    def committed(_: bool) -> None:
        box.mode = core.modes[agent] = mode
        if mode == "auto_inject":
            box.flushed.clear()
        pump(core, box)

    await core.store.write(
        lambda conn: sql.set_agent_mode(conn, agent, mode),
        f"set the mode of {agent!r}",
        on_commit=committed,
    )


def flush(core: Core, agent: str) -> int:
    """See :meth:`DeliveryEngine.flush`."""
    box = core.known(agent)
    if box.mode != "hold":
        return 0
    released = [seq for seq in box.queued if seq not in box.flushed]
    box.flushed.update(released)
    pump(core, box)
    return len(released)
