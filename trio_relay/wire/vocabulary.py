"""The words of trio-relay's protocols, spelled once: injection modes, restart modes,
delivery states with their legal transitions, and the terminal size bounds.

Everything else (the frames, the control messages, the store's SQL, the CLI's choices)
takes its names from here; a test checks the SQL against :data:`DELIVERY_TRANSITIONS`.
"""

from __future__ import annotations

from typing import Literal, get_args

InjectMode = Literal["auto_inject", "hold"]
#: ``auto_inject`` types deliveries as they come; ``hold`` keeps them until a flush.
INJECT_MODES: tuple[InjectMode, ...] = get_args(InjectMode)

RestartMode = Literal["never", "on-failure", "always"]
RESTART_MODES: tuple[RestartMode, ...] = get_args(RestartMode)

#: How a typed delivery was confirmed. ``submitted``: the agent's profile saw it take the
#: message (it left the input line, and the agent turned busy or showed it above). ``echo``:
#: the text was seen on screen, nothing more known. Either makes it ``verified``.
#: ``timeout_fallback``: typed, never seen within the timeout. ``not_submitted``: typed and
#: seen, but still in the input line after Enter was pressed twice (the line was cleared).
#: Either of those makes it ``unverified``.
Verification = Literal["submitted", "echo", "timeout_fallback", "not_submitted"]
VERIFICATIONS: tuple[Verification, ...] = get_args(Verification)
#: The levels that make a delivery ``verified``; the others make it ``unverified``.
VERIFIED_LEVELS: frozenset[str] = frozenset({"submitted", "echo"})

#: What an agent is doing, as its worker sees the screen: ``starting`` (nothing drawn yet,
#: or its prompt not yet seen), ``attention`` (a dialog waits for a person), ``idle`` (at
#: its prompt, ready for a message), ``busy`` (working), ``exited``.
Activity = Literal["starting", "attention", "idle", "busy", "exited"]
ACTIVITIES: tuple[Activity, ...] = get_args(Activity)

OpenState = Literal["queued", "sent", "injected"]
EndState = Literal["verified", "unverified", "failed", "dropped", "dead_letter"]
DeliveryState = Literal[OpenState, EndState]
#: States a delivery is still on its way in, and the states it ends in.
OPEN_STATES: tuple[OpenState, ...] = get_args(OpenState)
TERMINAL_STATES: tuple[EndState, ...] = get_args(EndState)
DELIVERY_STATES: tuple[DeliveryState, ...] = (*OPEN_STATES, *TERMINAL_STATES)

#: Every legal change of a delivery's state: ``{from: {to, ...}}``. A delivery is
#: ``queued`` when accepted; ``sent`` when handed to its worker; ``injected`` once typed;
#: then ``verified`` (echo seen) or ``unverified`` (timeout fallback). Not acknowledged in
#: time, it is handed over again in the state it is in (``sent -> sent``,
#: ``injected -> injected``: one more attempt). A worker that exits sends it back to
#: ``queued`` (if the store could not record that, the next hand-over moves it from
#: ``sent`` or ``injected`` to ``sent``); the queue cap evicts it (``dropped``); attempts or
#: its deadline run out (``dead_letter``); it cannot be delivered (``failed``).
#: ``redeliver`` queues a dead letter or a failed one again; a dead letter whose worker
#: reports it verified or unverified after all (a late report) takes that state.
DELIVERY_TRANSITIONS: dict[DeliveryState, frozenset[DeliveryState]] = {
    "queued": frozenset({"sent", "dropped", "dead_letter", "failed"}),
    "sent": frozenset(
        {"sent", "queued", "injected", "verified", "unverified", "dead_letter", "failed"}
    ),
    "injected": frozenset(
        {"injected", "sent", "queued", "verified", "unverified", "dead_letter", "failed"}
    ),
    "verified": frozenset(),
    "unverified": frozenset(),
    "dropped": frozenset(),
    "dead_letter": frozenset({"queued", "verified", "unverified"}),
    "failed": frozenset({"queued"}),
}

#: Rows and columns a terminal may have, each.
TERMINAL_SIZE_RANGE = (1, 1000)


def check_terminal_size(rows: int, cols: int) -> None:
    """Raises ValueError naming the bounds unless both fit :data:`TERMINAL_SIZE_RANGE`."""
    low, high = TERMINAL_SIZE_RANGE
    if not (low <= rows <= high and low <= cols <= high):
        raise ValueError(f"terminal size {rows}x{cols} out of range {low}..{high}")
