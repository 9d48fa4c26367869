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

Verification = Literal["echo", "timeout_fallback"]

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
