"""Who may call the HTTP port, and the error shape every refusal has.

Three kinds of credential: the broker's owner token or an agent's token (``X-API-Key`` or
``Authorization: Bearer``, as on the control channel), an extra API key the broker was
started with (the shim's ``RELAY_BROKER_API_KEY``), and the dashboard's session cookie.

What a browser could abuse is refused before any credential is read:

- a ``Host`` that is neither an IP address, ``localhost`` nor the host the broker was told
  to listen on (DNS rebinding: a page on ``evil.example`` resolving to 127.0.0.1);
- an ``Origin`` that is not this site's own nor one allowed with ``--allow-origin``;
- with the session cookie, a state-changing request without the session's CSRF token in
  ``X-CSRF-Token`` (the cookie is ``SameSite=Strict`` too), or a WebSocket handshake
  without this site's own ``Origin``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from trio_relay.control.auth import Principal, token_principal
from trio_relay.http.sessions import COOKIE, Session, Sessions
from trio_relay.linux.peers import UNPLACED

log = logging.getLogger(__name__)

#: Methods that change nothing; every other one needs the CSRF token with a cookie.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "x-csrf-token"


class Refused(Exception):
    """A request this site will not serve: ``status``, a stable ``code`` and a message for
    the caller (agent-relay's error shape, see :func:`error_body`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def error_body(code: str, message: str) -> dict[str, object]:
    """agent-relay's error shape, ``{"error": {"code", "message"}}``, with ``code`` and
    ``message`` also at the top level, where agent-relay's Python SDK reads them."""
    return {"error": {"code": code, "message": message}, "code": code, "message": message}


@dataclass(frozen=True)
class Caller:
    """Who is calling: a principal, and the dashboard session it came with (None for a
    token or API key)."""

    principal: Principal
    session: Session | None = None


class Guard:
    """The site's checks. ``host`` is what the broker listens on; ``allowed_origins`` the
    extra browser origins allowed (``--allow-origin``); ``api_keys`` extra owner keys."""

    def __init__(
        self,
        token: str,
        sessions: Sessions,
        *,
        host: str,
        allowed_origins: Collection[str] = (),
        api_keys: Collection[str] = (),
    ) -> None:
        self._token = token
        self.sessions = sessions
        self._host = host.strip("[]").lower()
        self._allowed_origins = frozenset(allowed_origins)
        self._api_keys = tuple(k for k in api_keys if k)

    def check_browser(self, headers: Mapping[str, str], scheme: str = "http") -> bool:
        """Raise Refused for a rebinding ``Host`` or a foreign ``Origin``; return whether
        the request came from this site's own pages (its ``Origin`` is this site's)."""
        host = headers.get("host", "")
        if not self._trusted_host(host):
            raise Refused(
                421,
                "misdirected_request",
                f"this broker does not serve host {host!r}: use its IP address or localhost",
            )
        origin = headers.get("origin")
        if origin is None:
            return False
        own = f"{scheme}://{host}".lower() == origin.lower()
        if not own and origin not in self._allowed_origins:
            raise Refused(403, "forbidden_origin", f"origin {origin!r} is not allowed")
        return own

    def caller(
        self,
        headers: Mapping[str, str],
        method: str,
        *,
        websocket: bool = False,
        process_of: str | None = None,
    ) -> Caller:
        """The caller of a request with ``headers`` (lower-case names); ``process_of`` is
        the agent whose process sent it (callers.py): it then acts as that agent whatever
        credential it shows. Raises Refused: 401 ``unauthorized`` without a valid
        credential, 403 ``csrf`` for a cookie-borne state-changing request without its
        token or from another origin, 403 ``forbidden`` from an agent's process that
        cannot be placed with one agent."""
        caller = self._credential(headers, method, websocket)
        if process_of == UNPLACED:
            raise Refused(
                403,
                "forbidden",
                "this request comes from an agent's process that the broker cannot place"
                " with one running agent; agents use their own TRIO_RELAY_TOKEN",
            )
        if process_of is not None and caller.principal.agent != process_of:
            log.warning("a process of agent %r called with another's credential", process_of)
            return Caller(Principal(process_of))
        return caller

    def _credential(self, headers: Mapping[str, str], method: str, websocket: bool) -> Caller:
        own_origin = self.check_browser(headers)
        key = headers.get("x-api-key")
        if key is None:
            scheme, _, bearer = headers.get("authorization", "").partition(" ")
            key = bearer if scheme.lower() == "bearer" and bearer else None
        if key is not None:
            principal = self._key_principal(key)
            if principal is None:
                raise Refused(401, "unauthorized", "wrong API key")
            return Caller(principal)
        session = self.sessions.find(_cookie(headers.get("cookie", ""), COOKIE))
        if session is None:
            raise Refused(
                401,
                "unauthorized",
                "send X-API-Key or Authorization: Bearer <token>, or log in to the dashboard"
                " with the URL `trio-relay dashboard` prints",
            )
        if websocket and not own_origin:
            raise Refused(403, "csrf", "a dashboard WebSocket must come from the dashboard")
        if not websocket and method not in SAFE_METHODS:
            sent = headers.get(CSRF_HEADER, "")
            if not own_origin or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                raise Refused(
                    403, "csrf", "a state-changing call needs the dashboard's X-CSRF-Token"
                )
        return Caller(Principal(), session)

    def _key_principal(self, key: str) -> Principal | None:
        if any(hmac.compare_digest(key.encode(), k.encode()) for k in self._api_keys):
            return Principal()
        return token_principal(self._token, key)

    def _trusted_host(self, host: str) -> bool:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if not name:
            return False
        if name in ("localhost", self._host):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
