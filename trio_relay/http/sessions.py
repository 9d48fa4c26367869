"""The dashboard's logins: one-time login codes and the sessions they open.

``trio-relay dashboard`` asks the broker for a login URL; its code works once, for
:data:`LOGIN_TTL` seconds, and opens a session whose id goes in an HttpOnly, SameSite=Strict
cookie. A session lasts :data:`SESSION_TTL` seconds; all of them end with the broker. Pure
data and the clock: no I/O.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "trio_relay_session"
LOGIN_TTL = 300.0
SESSION_TTL = 12 * 3600.0
#: Codes and sessions kept at most; the oldest go first.
MAX_KEPT = 256


@dataclass(frozen=True)
class Session:
    """A logged-in browser: ``id`` is its cookie, ``csrf`` what its state-changing calls
    carry in ``X-CSRF-Token``."""

    id: str
    csrf: str
    expires: float


class Sessions:
    """The codes not used yet and the sessions open. ``clock`` is for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._codes: dict[str, float] = {}
        self._sessions: dict[str, Session] = {}

    def mint_code(self) -> str:
        """A new one-time login code."""
        self._expire()
        code = secrets.token_urlsafe(24)
        self._codes[code] = self._clock() + LOGIN_TTL
        _trim(self._codes)
        return code

    def redeem(self, code: str) -> Session | None:
        """The session ``code`` opens, or None if it is unknown, used or expired."""
        self._expire()
        if self._codes.pop(code, None) is None:
            return None
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(24),
            expires=self._clock() + SESSION_TTL,
        )
        self._sessions[session.id] = session
        _trim(self._sessions)
        return session

    def find(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None or session.expires <= self._clock():
            self._sessions.pop(session_id, None)
            return None
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _expire(self) -> None:
        now = self._clock()
        for code in [c for c, expires in self._codes.items() if expires <= now]:
            del self._codes[code]


def _trim(kept: dict[str, object]) -> None:
    while len(kept) > MAX_KEPT:
        del kept[next(iter(kept))]
