"""Bad input on every route of the HTTP port: a clear 4xx in agent-relay's error shape,
and the broker still serving. Browser abuse (a rebinding Host, a foreign Origin, a cookie
without its CSRF token) is refused before anything is done."""

from __future__ import annotations

import http.client
import json
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest
from helpers import wait_for

pytestmark = pytest.mark.timeout(60)


def call(
    broker: Any,
    method: str,
    path: str,
    body: bytes | str | None = None,
    *,
    key: str | None = "token",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    address = urlsplit(broker.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key == "token":
        sent["X-API-Key"] = broker.token
    elif key is not None:
        sent["X-API-Key"] = key
    connection.request(method, path, body=body, headers=sent)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data.decode(errors="replace")


def assert_error(answer: tuple[int, Any], status: int, code: str) -> None:
    got, body = answer
    assert got == status, body
    assert isinstance(body, dict) and body["error"]["code"] == code, body
    assert body["code"] == code and body["message"] == body["error"]["message"]
    assert body["message"], "an error says what is wrong"


BAD_REQUESTS = [
    ("POST", "/api/spawn", b"{not json", 400, "invalid_request"),
    ("POST", "/api/spawn", b"[1, 2]", 400, "invalid_request"),
    ("POST", "/api/spawn", b'{"cli": "bash"}', 400, "invalid_request"),
    ("POST", "/api/spawn", b'{"name": 7}', 400, "invalid_request"),
    (
        "POST",
        "/api/spawn",
        b'{"name": "x", "cli": "bash", "transport": "headless"}',
        409,
        "unsupported_runtime",
    ),
    ("POST", "/api/spawn", b'{"name": "x", "cli": "/no/such/program"}', 502, "worker_error"),
    ("POST", "/api/send", b'{"text": "no recipient"}', 400, "invalid_request"),
    ("POST", "/api/send", b'{"to": "nobody", "text": "hi"}', 404, "agent_not_found"),
    ("POST", "/api/send", b'{"to": "#general", "text": "hi"}', 400, "unsupported_operation"),
    (
        "POST",
        "/api/send",
        b'{"to": "a1", "text": "hi", "mode": "steer"}',
        400,
        "unsupported_operation",
    ),
    ("POST", "/api/input/nobody", b'{"data": "x"}', 404, "agent_not_found"),
    ("POST", "/api/input/a1", b'{"data": 5}', 400, "invalid_request"),
    ("POST", "/api/input/a1", b"", 400, "invalid_request"),
    ("POST", "/api/resize/a1", b'{"rows": 0, "cols": 80}', 400, "invalid_request"),
    ("POST", "/api/resize/a1", b'{"rows": "24", "cols": 80}', 400, "invalid_request"),
    ("POST", "/api/resize/nobody", b'{"rows": 24, "cols": 80}', 404, "agent_not_found"),
    ("GET", "/api/spawned/a1/snapshot?format=png", None, 400, "invalid_format"),
    ("GET", "/api/spawned/nobody/snapshot", None, 404, "agent_not_found"),
    ("DELETE", "/api/spawned/nobody", None, 404, "agent_not_found"),
    ("PUT", "/api/spawned/a1/delivery-mode", b'{"mode": "sometimes"}', 400, "invalid_mode"),
    ("GET", "/api/spawned/nobody/delivery-mode", None, 404, "agent_not_found"),
    ("GET", "/api/spawned/nobody/pending", None, 404, "agent_not_found"),
    ("POST", "/api/spawned/nobody/flush", None, 404, "agent_not_found"),
    ("POST", "/api/dead-letters/redeliver", b"{}", 400, "invalid_request"),
    ("POST", "/api/dead-letters/redeliver", b'{"id": ""}', 400, "invalid_request"),
    ("POST", "/api/send", b"[" * 200_000, 400, "invalid_request"),
    ("POST", "/api/dead-letters/redeliver", b'{"id": "nope"}', 404, "agent_not_found"),
    ("GET", "/api/metrics?agent=nobody", None, 404, "agent_not_found"),
    ("GET", "/api/no-such-route", None, 404, "not_found"),
    ("PATCH", "/api/send", b"{}", 405, "method_not_allowed"),
]


def test_bad_input_gets_a_clear_error_and_the_broker_lives_on(http_broker: Any) -> None:
    status, body = call(http_broker, "POST", "/api/spawn", json.dumps({"name": "a1", "cli": "cat"}))
    assert status == 200 and body["success"] is True, body
    for method, path, body_, status, code in BAD_REQUESTS:
        answer = call(http_broker, method, path, body_)
        try:
            assert_error(answer, status, code)
        except AssertionError as exc:
            raise AssertionError(f"{method} {path} {body_!r}: {exc}") from None
    oversized = call(
        http_broker, "POST", "/api/send", b'{"to": "a1", "text": "' + b"x" * (5 << 20) + b'"}'
    )
    assert_error(oversized, 413, "payload_too_large")
    # still serving, and the agent untouched
    status, listed = call(http_broker, "GET", "/api/spawned")
    assert status == 200 and [a["name"] for a in listed["agents"]] == ["a1"]
    status, sent = call(http_broker, "POST", "/api/send", json.dumps({"to": "a1", "text": "ok"}))
    assert status == 200 and sent["targets"] == ["a1"]


def test_credentials_hosts_and_origins(http_broker: Any) -> None:
    assert_error(call(http_broker, "GET", "/api/spawned", key=None), 401, "unauthorized")
    assert_error(call(http_broker, "GET", "/api/spawned", key="wrong"), 401, "unauthorized")
    bearer = {"Authorization": f"Bearer {http_broker.token}"}
    assert call(http_broker, "GET", "/api/spawned", key=None, headers=bearer)[0] == 200
    # /health needs no key, but no foreign Host either (DNS rebinding)
    assert call(http_broker, "GET", "/health", key=None)[0] == 200
    rebound = {"Host": "attacker.example:80"}
    assert_error(call(http_broker, "GET", "/health", headers=rebound), 421, "misdirected_request")
    assert_error(
        call(http_broker, "GET", "/api/spawned", headers=rebound), 421, "misdirected_request"
    )
    foreign = {"Origin": "http://attacker.example"}
    assert_error(
        call(http_broker, "POST", "/api/send", b"{}", headers=foreign), 403, "forbidden_origin"
    )
    # an agent's own token acts within its scope
    status, _ = call(http_broker, "POST", "/api/spawn", json.dumps({"name": "a1", "cli": "cat"}))
    assert status == 200
    from trio_relay.control.auth import agent_token

    agent = agent_token(http_broker.token, "a1")
    assert_error(
        call(
            http_broker, "POST", "/api/spawn", json.dumps({"name": "a2", "cli": "cat"}), key=agent
        ),
        403,
        "forbidden",
    )
    assert_error(call(http_broker, "POST", "/api/shutdown", key=agent), 403, "forbidden")
    assert call(http_broker, "GET", "/api/spawned")[0] == 200


def test_dashboard_login_is_one_time_and_cookies_need_the_csrf_token(http_broker: Any) -> None:
    # without a login nothing is served but the login page
    status, page = call(http_broker, "GET", "/", key=None)
    assert status == 200 and "trio-relay dashboard" in page and "csrf-token" not in page
    assert_error(call(http_broker, "GET", "/static/dashboard.js", key=None), 401, "unauthorized")
    url = http_broker.relay.invoke("dashboard", "--no-open").output.strip()
    path = url[len(http_broker.url) :]
    address = urlsplit(http_broker.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    assert response.status == 303
    cookie = response.getheader("set-cookie")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie, cookie
    session = cookie.split(";")[0]
    connection.request("GET", path)  # the same link again: used
    again = connection.getresponse()
    again.read()
    assert again.status == 401 and again.getheader("set-cookie") is None
    connection.close()
    with_cookie = {"Cookie": session}
    status, page = call(http_broker, "GET", "/", key=None, headers=with_cookie)
    assert status == 200 and 'name="csrf-token"' in page
    csrf = page.split('name="csrf-token" content="')[1].split('"')[0]
    own = {**with_cookie, "Origin": http_broker.url}
    # a state-changing call with the cookie needs the token and the site's own origin
    assert_error(call(http_broker, "POST", "/api/send", b"{}", key=None, headers=own), 403, "csrf")
    forged = {**with_cookie, "X-CSRF-Token": csrf}  # no Origin: not from the page
    assert_error(
        call(http_broker, "POST", "/api/send", b"{}", key=None, headers=forged), 403, "csrf"
    )
    good = {**own, "X-CSRF-Token": csrf}
    status, _ = call(http_broker, "POST", "/logout", key=None, headers=good)
    assert status == 303
    status, page = call(http_broker, "GET", "/", key=None, headers=with_cookie)
    assert "csrf-token" not in page, "logged out"


AGENT_SCRIPT = """
import os, urllib.request
request = urllib.request.Request(
    os.environ["URL"] + "/api/spawned/victim", method="DELETE",
    headers={"X-API-Key": os.environ["OWNER_TOKEN"]},
)
try:
    urllib.request.urlopen(request, timeout=10)
    print("STATUS 200", flush=True)
except urllib.error.HTTPError as exc:
    print(f"STATUS {exc.code}", flush=True)
input()
"""


def test_an_agents_process_acts_as_that_agent_whatever_key_it_shows(http_broker: Any) -> None:
    status, _ = call(
        http_broker, "POST", "/api/spawn", json.dumps({"name": "victim", "cli": "cat"})
    )
    assert status == 200
    relay = http_broker.relay.invoke(
        "spawn",
        "thief",
        "--env",
        f"URL={http_broker.url}",
        "--env",
        f"OWNER_TOKEN={http_broker.token}",
        "--",
        sys.executable,
        "-c",
        AGENT_SCRIPT,
    )
    assert relay.exit_code == 0, relay.output

    def screen() -> str:
        return call(http_broker, "GET", "/api/spawned/thief/snapshot")[1].get("screen", "")

    wait_for(lambda: "STATUS" in screen(), timeout=20)
    assert "STATUS 403" in screen(), screen()
    _, listed = call(http_broker, "GET", "/api/spawned")
    assert {a["name"] for a in listed["agents"]} == {"victim", "thief"}
