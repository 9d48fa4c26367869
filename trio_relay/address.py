"""Where a client connects and as whom: the broker's URL and the token to present.

The arguments come first, then ``TRIO_RELAY_URL`` and ``TRIO_RELAY_TOKEN``, then the state
directory (its Unix socket when it has one, and the owner's token). Inside an agent
(``TRIO_RELAY_AGENT`` set) the owner's token is never taken from the state directory: an
agent acts only with its own scoped token. No I/O but reading the state directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from trio_relay.errors import BadAddress, BrokerUnreachable, StateDirError
from trio_relay.linux.sweep import AGENT_ENV
from trio_relay.state import DEFAULT_DIR_NAME, StateDir

#: The URL scheme of a broker's Unix socket: ``ws+unix:///path/to/control.sock``.
UNIX_SCHEME = "ws+unix"


def find_broker(
    url: str | None = None, token: str | None = None, state_dir: str | None = None
) -> tuple[str, str]:
    """The url and token to use: the arguments, else ``TRIO_RELAY_URL`` and
    ``TRIO_RELAY_TOKEN``, else the state directory's connection file (its Unix socket when
    it has one) and token.

    Raises BrokerUnreachable if none says where a running broker is, BadAddress if inside
    an agent (``TRIO_RELAY_AGENT`` set) the owner's token would be taken from the state
    directory: an agent acts only with its own scoped token.
    """
    url = url or os.environ.get("TRIO_RELAY_URL")
    token = token or os.environ.get("TRIO_RELAY_TOKEN")
    if url:
        parse_address(url)  # a bad URL is said first, whatever else is missing
    if url and token:
        return url, token
    state = StateDir(Path(state_dir) if state_dir else Path.cwd() / DEFAULT_DIR_NAME)
    try:
        state.check()
    except StateDirError as exc:
        raise BadAddress(str(exc)) from None
    up = f"trio-relay up --state-dir {state_dir}" if state_dir else "trio-relay up"
    if token is None and os.environ.get(AGENT_ENV):
        raise BadAddress(
            f"this runs inside agent {os.environ[AGENT_ENV]!r} ({AGENT_ENV} is set) without"
            " its TRIO_RELAY_TOKEN; an agent acts only with its own token, never the"
            " broker owner's"
        )
    connection = state.read_connection()
    if connection is not None and state.lock_holder() is None:
        connection = None  # left by a broker that died: nobody listens there
    if url is None:
        if connection is None:
            raise BrokerUnreachable(f"no broker is running on {state.path}; start one with `{up}`")
        url = f"{UNIX_SCHEME}://{connection.socket}" if connection.socket else connection.url
    if token is None:
        try:
            token = state.token_path.read_text().strip()
        except FileNotFoundError:
            raise BrokerUnreachable(
                f"no token in {state.path}; start a broker with `{up}`"
            ) from None
    return url, token


def parse_address(url: str) -> tuple[str, int] | str:
    """``ws://HOST:PORT`` as (host, port), ``ws+unix:///PATH`` as its path. Raises
    BadAddress naming what is wrong."""
    try:
        parts = urlsplit(url)
        if parts.scheme == UNIX_SCHEME and parts.path:
            return parts.path
        if parts.scheme == "ws" and parts.hostname and parts.port:
            return parts.hostname, parts.port
        problem = "no port" if parts.scheme == "ws" and parts.hostname else "not of that form"
    except ValueError as exc:  # a port that is not a number, or out of range
        problem = str(exc)
    raise BadAddress(
        f"not a broker URL (ws://HOST:PORT or {UNIX_SCHEME}:///PATH): {url!r}: {problem}"
    )
