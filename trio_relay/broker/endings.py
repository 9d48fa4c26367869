"""How a run ends: its one terminal event, its in-flight requests failed, what comes next.

Whatever signs of a death arrive (pipe end of file, the exit status, a write error), a run
gets exactly one terminal event:

- ``agent_exited`` with ``intended: false`` and the real code or signal for an exit nobody
  asked for, after failing each of the worker's in-flight requests with WorkerExited;
- ``agent_exited`` with ``intended: true`` for a release or a broker shutdown;
- ``spawn_failed`` with the error when the child never got past its hello.

Each function here is synchronous and idempotent (a run that has its event gets no other)
and decides the agent's next state (released, exited, restarting, gave up, failed) before
announcing it through :meth:`~trio_relay.broker.agent.Agent.change_state`.
"""

from __future__ import annotations

import trio

from trio_relay.broker.agent import Agent, AgentState, Run
from trio_relay.broker.correlator import Correlator
from trio_relay.broker.process import ExitStatus, WorkerProcess
from trio_relay.errors import WorkerExited
from trio_relay.wire import AgentExited, AgentGaveUp, Event, SpawnFailedEvent


def report_exit(agent: Agent, proc: WorkerProcess, run: Run, correlator: Correlator) -> None:
    """End a run that got past its hello: fail its in-flight requests and emit its
    ``agent_exited`` (then ``agent_gave_up`` if its restarts are spent)."""
    if run.ended:
        return
    status = proc.status or ExitStatus(None, None)
    if run.reported_exit is not None:  # a wrapper told us how the program inside ended
        status = ExitStatus(run.reported_exit.code, run.reported_exit.signal)
    intended = run.intended if run.intended is not None else agent.stop_requested
    reason = (
        (agent.stop_reason or "broker shutdown")
        if intended
        else run.note + proc.ending_note + status.describe()
    )
    if proc.unkillable:
        reason += (
            f"; {len(proc.unkillable)} process(es) it left could not be killed"
            f" ({proc.unkillable[0]})"
        )
    state = "released" if intended else _after(agent, run, status, "exited")
    _end_attached(agent, run, correlator, status, state, intended=intended, reason=reason)


def end_unstarted(
    agent: Agent, run: Run, error: str, errno: int | None = None, *, restart: bool = True
) -> None:
    """End a run that never got past its hello with ``spawn_failed``; a restart that
    failed so counts against the agent's policy (unless not ``restart``)."""
    if run.ended:
        return
    run.failure = error
    state = _after(agent, run, None, "failed") if restart and run.attempt > 0 else "failed"
    run.ended = True
    agent.change_state(
        state,
        SpawnFailedEvent(agent=agent.name, error=error, errno=errno),
        *_gave_up(agent, state, error),
        reason=f"cannot start {agent.name!r}: {error}",
    )


def end_by_fault(
    agent: Agent, proc: WorkerProcess, run: Run, fault: Exception, correlator: Correlator
) -> None:
    """A fault of ours ended the run: it ends the agent too (``failed``, no restart), with
    the run's one terminal event if it has not had it yet."""
    if not run.attached:
        end_unstarted(agent, run, f"internal error: {fault!r}", restart=False)
        agent.change_state("failed")  # also if its run had ended (and announced) before
        return
    reason = f"supervisor error: {fault!r}"
    if run.ended:
        agent.change_state("failed", reason=reason)
        return
    status = proc.status or ExitStatus(None, None)
    _end_attached(agent, run, correlator, status, "failed", intended=False, reason=reason)


def no_hello(proc: WorkerProcess, run: Run, agent: Agent) -> str:
    """Why a run did not get past its hello."""
    if run.failure is not None:
        return run.failure
    tail = "; ".join(proc.stderr_ring.lines()[-3:])
    tail = f" (stderr: {tail})" if tail else ""
    if run.cancelled:
        return f"the spawn was cancelled before the worker said hello{tail}"
    if agent.stop_requested:
        return f"released before it said hello{tail}"
    if proc.status is not None:
        return f"{proc.ending_note}{proc.status.describe()} before saying hello{tail}"
    if run.eof:
        return f"closed its stdout before saying hello{tail}"
    return (
        f"did not say hello within {agent.spec.hello_timeout:g} s; is it a worker? "
        f"Terminal programs run under the PTY worker{tail}"
    )


def _end_attached(
    agent: Agent,
    run: Run,
    correlator: Correlator,
    status: ExitStatus,
    state: AgentState,
    *,
    intended: bool,
    reason: str,
) -> None:
    correlator.detach(agent.name, lambda: WorkerExited(agent.name, status.code, status.signal))
    agent.last_exit = status
    run.ended = True
    agent.change_state(
        state,
        AgentExited(
            agent=agent.name,
            code=status.code,
            signal=status.signal,
            intended=intended,
            reason=reason,
        ),
        *_gave_up(agent, state, reason),
        reason=reason,
    )


def _after(agent: Agent, run: Run, status: ExitStatus | None, otherwise: AgentState) -> AgentState:
    """The state after a run that ended on its own (``status`` None: a restart that could
    not be spawned): ``restarting`` (its delay decided) if its policy says so, ``gave_up``
    if its attempts are spent, else ``otherwise``."""
    if agent.stop_requested or not agent.spec.restart.wants_restart(status, False):
        return otherwise
    agent.next_delay = agent.tracker.next_delay(trio.current_time() - run.began)
    if agent.next_delay is None:
        return "gave_up"
    agent.restarts += 1
    return "restarting"


def _gave_up(agent: Agent, state: AgentState, reason: str) -> tuple[Event, ...]:
    if state != "gave_up":
        return ()
    return (AgentGaveUp(agent=agent.name, attempts=agent.tracker.attempt - 1, reason=reason),)
