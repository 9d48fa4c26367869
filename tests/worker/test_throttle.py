"""The injection throttle, on its own. It is pure (told the time, never reading a clock), so
every figure here is exact."""

from __future__ import annotations

import pytest

from trio_relay.worker.pty.throttle import InjectionThrottle, Outcome

SUCCESS, UNVERIFIED, FAILED = Outcome.SUCCESS, Outcome.UNVERIFIED, Outcome.FAILED
T0 = 1000.0  # the time the outcomes are recorded at


def make(*outcomes: Outcome, **kwargs: float) -> InjectionThrottle:
    """A throttle with round settings (``kwargs`` override them), after ``outcomes``."""
    settings = dict(initial=0.1, minimum=0.02, maximum=1.0, shrink=0.5, backoff=2.0)
    settings.update(kwargs)
    throttle = InjectionThrottle(**settings)  # type: ignore[arg-type]
    for outcome in outcomes:
        throttle.record(outcome, T0)
    return throttle


def test_first_injection_does_not_wait() -> None:
    assert make().wait_time(T0) == 0.0


def test_the_pause_runs_from_the_outcome_on_the_clock() -> None:
    throttle = make(UNVERIFIED)
    assert throttle.wait_time(T0) == pytest.approx(0.1)
    assert throttle.wait_time(T0 + 0.06) == pytest.approx(0.04)
    assert throttle.wait_time(T0 + 0.1) == 0.0
    assert throttle.wait_time(T0 + 5) == 0.0


def test_a_success_streak_shortens_the_pause_down_to_the_minimum() -> None:
    throttle = make(shrink_after=2)
    throttle.record(SUCCESS, T0)
    assert (throttle.streak, throttle.delay) == (1, pytest.approx(0.1))  # not yet a streak
    throttle.record(SUCCESS, T0)
    assert (throttle.streak, throttle.delay) == (2, pytest.approx(0.05))
    throttle.record(SUCCESS, T0)
    assert throttle.delay == pytest.approx(0.025)
    throttle.record(SUCCESS, T0)
    assert throttle.delay == pytest.approx(0.02)  # the floor
    assert throttle.wait_time(T0) == pytest.approx(0.02)


def test_unverified_breaks_the_streak_without_backing_off() -> None:
    throttle = make(SUCCESS, SUCCESS, SUCCESS, shrink_after=2)
    assert throttle.delay == pytest.approx(0.025)
    throttle.record(UNVERIFIED, T0)
    assert (throttle.streak, throttle.delay) == (0, pytest.approx(0.025))
    throttle.record(SUCCESS, T0)  # the streak starts over: one success is not enough to shrink
    assert (throttle.streak, throttle.delay) == (1, pytest.approx(0.025))
    throttle.record(SUCCESS, T0)
    assert throttle.delay == pytest.approx(0.02)


def test_failures_back_off_stepwise_up_to_the_cap() -> None:
    throttle = make()
    delays = []
    for _ in range(6):
        throttle.record(FAILED, T0)
        delays.append(throttle.delay)
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert throttle.streak == 0
    assert throttle.wait_time(T0) == pytest.approx(1.0)
    assert throttle.wait_time(T0 + 1.0) == 0.0


def test_a_failure_after_a_fast_streak_backs_off_from_the_initial_pause() -> None:
    throttle = make(*[SUCCESS] * 5, shrink_after=1)
    assert throttle.delay == pytest.approx(0.02)
    throttle.record(FAILED, T0)
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
    with pytest.raises(TypeError):
        make().record("success", T0)  # type: ignore[arg-type]
