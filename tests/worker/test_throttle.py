"""The injection throttle, on its own. It is pure (the PTY worker does not run Trio), so it
reads Trio's MockClock as an injected clock and every figure here is exact."""

from __future__ import annotations

import pytest
from trio.testing import MockClock

from trio_relay.worker.pty.throttle import InjectionThrottle, Outcome

SUCCESS, UNVERIFIED, FAILED = Outcome.SUCCESS, Outcome.UNVERIFIED, Outcome.FAILED


def make(**kwargs: float) -> tuple[InjectionThrottle, MockClock]:
    clock = MockClock()
    settings = dict(initial=0.1, minimum=0.02, maximum=1.0, shrink=0.5, backoff=2.0)
    settings.update(kwargs)
    return InjectionThrottle(clock=clock.current_time, **settings), clock  # type: ignore[arg-type]


def test_first_injection_does_not_wait() -> None:
    throttle, _ = make()
    assert throttle.wait_time() == 0.0


def test_the_pause_runs_from_the_outcome_on_the_clock() -> None:
    throttle, clock = make()
    throttle.record(UNVERIFIED)
    assert throttle.wait_time() == pytest.approx(0.1)
    clock.jump(0.06)
    assert throttle.wait_time() == pytest.approx(0.04)
    clock.jump(0.04)
    assert throttle.wait_time() == 0.0
    clock.jump(5)
    assert throttle.wait_time() == 0.0


def test_a_success_streak_shortens_the_pause_down_to_the_minimum() -> None:
    throttle, _ = make(shrink_after=2)
    throttle.record(SUCCESS)
    assert (throttle.streak, throttle.delay) == (1, pytest.approx(0.1))  # not yet a streak
    throttle.record(SUCCESS)
    assert (throttle.streak, throttle.delay) == (2, pytest.approx(0.05))
    throttle.record(SUCCESS)
    assert throttle.delay == pytest.approx(0.025)
    throttle.record(SUCCESS)
    assert throttle.delay == pytest.approx(0.02)  # the floor
    assert throttle.wait_time() == pytest.approx(0.02)


def test_unverified_breaks_the_streak_without_backing_off() -> None:
    throttle, _ = make(shrink_after=2)
    for _ in range(3):
        throttle.record(SUCCESS)
    assert throttle.delay == pytest.approx(0.025)
    throttle.record(UNVERIFIED)
    assert (throttle.streak, throttle.delay) == (0, pytest.approx(0.025))
    throttle.record(SUCCESS)  # the streak starts over: one success is not enough to shrink
    assert (throttle.streak, throttle.delay) == (1, pytest.approx(0.025))
    throttle.record(SUCCESS)
    assert throttle.delay == pytest.approx(0.02)


def test_failures_back_off_stepwise_up_to_the_cap() -> None:
    throttle, clock = make()
    delays = []
    for _ in range(6):
        throttle.record(FAILED)
        delays.append(throttle.delay)
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert throttle.streak == 0
    assert throttle.wait_time() == pytest.approx(1.0)
    clock.jump(1.0)
    assert throttle.wait_time() == 0.0


def test_a_failure_after_a_fast_streak_backs_off_from_the_initial_pause() -> None:
    throttle, _ = make(shrink_after=1)
    for _ in range(5):
        throttle.record(SUCCESS)
    assert throttle.delay == pytest.approx(0.02)
    throttle.record(FAILED)
    assert (throttle.streak, throttle.delay) == (0, pytest.approx(0.2))


@pytest.mark.parametrize(
    "settings",
    [
        dict(minimum=0.5, initial=0.1),
        dict(initial=2.0, maximum=1.0),
        dict(shrink=1.0),
        dict(backoff=1.0),
        dict(shrink_after=0),
    ],
)
def test_inconsistent_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        make(**settings)


def test_record_refuses_what_is_not_an_outcome() -> None:
    throttle, _ = make()
    with pytest.raises(TypeError):
        throttle.record("success")  # type: ignore[arg-type]
