"""The PTY worker's lowering of its autogroup's priority, against a stand-in for
/proc/self/autogroup that refuses writes as the kernel does (EAGAIN: one change per
100 ms machine-wide for a user without CAP_SYS_ADMIN). The real thing, with processes, is
in test_pty_worker.py."""

from __future__ import annotations

import errno
import io
from typing import Any

import pytest

from trio_relay.worker.pty import priority
from trio_relay.worker.pty.priority import GIVE_UP_AFTER, StepAside


class Autogroup:
    """``open`` for the module under test: reads give ``nice``; writes fail with
    ``errno_`` ``refusals`` times, then set ``nice``."""

    def __init__(self, refusals: int, errno_: int = errno.EAGAIN) -> None:
        self.nice, self.refusals, self.errno = 0, refusals, errno_

    def __call__(self, path: str, mode: str = "r") -> Any:
        assert path == priority.AUTOGROUP
        if mode == "r":
            return io.StringIO(f"/autogroup-7 nice {self.nice}\n")
        if self.refusals:
            self.refusals -= 1
            raise OSError(self.errno, "Resource temporarily unavailable")
        group = self

        class Writer(io.StringIO):
            def close(self) -> None:
                group.nice = int(self.getvalue())
                super().close()

        return Writer()


def aside_with(monkeypatch: pytest.MonkeyPatch, group: Autogroup) -> tuple[StepAside, list[str]]:
    monkeypatch.setattr(priority, "open", group, raising=False)
    logged: list[str] = []
    aside = StepAside(10, logged.append)
    aside._until = GIVE_UP_AFTER  # as begin() sets it at time 0, for a session leader
    return aside, logged


def test_a_refused_change_is_tried_again_until_it_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = Autogroup(refusals=3)
    aside, logged = aside_with(monkeypatch, group)
    now = 0.0
    aside.retry(now)
    tries = 1
    while aside.next_try is not None:
        assert 0.1 <= aside.next_try - now < 0.41  # its own pace: 100 to 400 ms
        now = aside.next_try
        aside.retry(now)
        tries += 1
    assert (tries, group.nice, logged) == (4, 10, [])


def test_it_gives_up_with_a_log_line_after_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    aside, logged = aside_with(monkeypatch, Autogroup(refusals=10**6))
    now = 0.0
    aside.retry(now)
    while aside.next_try is not None:
        now = aside.next_try
        aside.retry(now)
    assert GIVE_UP_AFTER <= now < GIVE_UP_AFTER + 0.5
    (line,) = logged
    assert "cannot lower its session's priority" in line


def test_another_error_is_logged_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    aside, logged = aside_with(monkeypatch, Autogroup(refusals=1, errno_=errno.EACCES))
    aside.retry(0.0)
    assert aside.next_try is None and len(logged) == 1 and "cannot lower" in logged[0]
