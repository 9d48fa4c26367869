"""The attention hook: run a person's command when an agent starts waiting for a person.

``trio-relay up --on-attention CMD`` runs ``CMD`` with ``/bin/sh -c`` each time an agent's
activity turns to ``attention`` (a dialog, a question, an approval), with the agent's name
in ``TRIO_RELAY_AGENT`` and what it asks in ``TRIO_RELAY_ATTENTION``; for example
``notify-send "$TRIO_RELAY_AGENT needs you" "$TRIO_RELAY_ATTENTION"``. The hooks run one at
a time, in order, each in a session of its own that is killed whole after ``HOOK_TIMEOUT``
seconds; a hook that fails or cannot start is logged, and the broker goes on.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import NoReturn

import trio

from trio_relay.broker.events import EventLog
from trio_relay.wire import AgentActivity, Event, Gap

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 30.0


async def run_attention_hook(events: EventLog, command: str) -> NoReturn:
    """Run ``command`` for every change to ``attention`` from now on, until cancelled.
    Cancellation kills the hook running then (its whole session)."""
    # from now on; woken only by activity changes (and gaps)
    async for event in events.subscribe(None, _is_activity):
        if isinstance(event, Gap):
            log.warning(
                "attention hook fell behind: events %d-%d not seen", event.first, event.last
            )
        elif isinstance(event, AgentActivity) and event.to == "attention":
            await _run_once(command, event)
    raise AssertionError("an event subscription never ends")  # pragma: no cover


def _is_activity(event: Event) -> bool:
    return type(event) is AgentActivity


async def _run_once(command: str, event: AgentActivity) -> None:
    env = {**os.environ, "TRIO_RELAY_AGENT": event.agent, "TRIO_RELAY_ATTENTION": event.text}
    try:
        with trio.move_on_after(HOOK_TIMEOUT) as scope:
            done = await trio.run_process(
                ["/bin/sh", "-c", command],
                env=env,
                check=False,
                start_new_session=True,
                deliver_cancel=_kill_session,
            )
    except OSError as exc:
        log.error("attention hook for %s could not start: %s", event.agent, exc)
        return
    if scope.cancelled_caught:
        log.error("attention hook for %s killed after %g s", event.agent, HOOK_TIMEOUT)
    elif done.returncode != 0:
        log.warning("attention hook for %s exited with %d", event.agent, done.returncode)


async def _kill_session(process: trio.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it ended meanwhile: nothing left to kill
