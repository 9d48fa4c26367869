"""The dashboard in headless Chromium (Debian's `chromium`, driven over the DevTools
protocol): log in with the one-time URL, see the agents, watch and drive a bash agent's
terminal, send a message and see it verified, and see a real Claude Code's trust dialog
flagged. Each step is checked in the page and in a screenshot."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from browser import Page, chromium_binary, open_page
from real_cli import clean_environment, record_agent_screens, skip_unless_installed

from trio_relay import open_broker
from trio_relay.control.auth import Principal
from trio_relay.control.server import ControlServer
from trio_relay.http.site import Site
from trio_relay.wire import ResizeOp, SpawnOp

pytestmark = pytest.mark.timeout(120)

#: Colours of dashboard.css, as a screenshot shows them.
ATTENTION_BANNER = (255, 159, 26)  # .attention-list .item
TERMINAL_BLACK = (0, 0, 0)


@pytest.fixture
def chromium() -> str:
    found = chromium_binary()
    if found is None:
        pytest.skip(
            "chromium is not installed: `apt-get install chromium` (.ci/run does it as root)"
        )
    return found


@pytest.fixture
async def dashboard(tmp_path: Path) -> AsyncIterator[tuple[Site, Any]]:
    token = secrets.token_urlsafe(16)
    async with open_broker(event_capacity=1 << 16) as broker, trio.open_nursery() as nursery:
        server = ControlServer(broker, token, overlays=tmp_path / "mcp")
        site = Site(server, token, host="127.0.0.1")
        await nursery.start(site.serve, "127.0.0.1", 0)
        server.operations.login_url = site.login_url
        yield site, server.operations
        nursery.cancel_scope.cancel()


async def spawn(operations: Any, name: str, command: list[str], **options: Any) -> None:
    op = SpawnOp(id=name, name=name, command=command, **options)
    await operations.perform(op, Principal())


async def logged_in(page: Page, site: Site) -> None:
    await page.goto(site.login_url())
    await page.wait_for(
        "document.querySelector('#connection').textContent == 'connected'", "connected"
    )


def row(name: str, cell: str) -> str:
    return f"document.querySelector('#agents tr[data-agent=\"{name}\"] .{cell}').textContent"


async def test_dashboard_shows_agents_terminals_and_deliveries(
    chromium: str, dashboard: tuple[Site, Any], tmp_path: Path
) -> None:
    site, operations = dashboard
    await spawn(operations, "shell", ["bash", "--norc", "--noprofile"], env={"PS1": "ready$ "})
    await spawn(operations, "reader", ["cat"])
    async with open_page(chromium) as page:
        # nothing but the login page without the link
        await page.goto(site.url)
        await page.wait_for(
            "document.body.innerText.includes('trio-relay dashboard')", "login page"
        )
        assert not await page.evaluate("!!document.querySelector('#agents')")

        await logged_in(page, site)
        await page.wait_for(
            "document.querySelectorAll('#agents tbody tr').length == 2", "two agents"
        )
        await page.wait_for(f"{row('shell', 'activity')} == 'idle'", "the shell idle")
        assert await page.evaluate(row("reader", "state")) == "running"
        assert (await page.evaluate(row("shell", "pid"))).isdigit()

        # its terminal: the prompt, from the snapshot
        await page.evaluate("document.querySelector('#agents tr[data-agent=\"shell\"]').click()")
        screen = "document.querySelector('#terminal .xterm-rows').innerText"
        await page.wait_for(f"{screen}.includes('ready$')", "the bash prompt in the terminal")
        shot = await page.screenshot(tmp_path / "prompt.png")
        box = await page.evaluate(
            "(() => { const r = document.querySelector('#terminal').getBoundingClientRect();"
            " return [r.left, r.top, r.right, r.bottom].map(Math.round); })()"
        )
        assert shot.count(TERMINAL_BLACK, tuple(box)) > 1000, "the terminal is drawn"
        assert shot.count(lambda p: min(p) > 180, tuple(box)) > 30, "and its text is legible"

        # watching is the default: keys do nothing; in drive mode they reach bash
        await page.evaluate("document.querySelector('#terminal textarea').focus()")
        await page.type_text("echo ignored")  # watching: never sent
        await page.evaluate("document.querySelector('#drive').click()")
        await page.evaluate("document.querySelector('#terminal textarea').focus()")
        await page.type_text("echo h''i")
        await page.press_enter()
        await page.wait_for(
            f"{screen}.split('\\n').some(line => line.trim() == 'hi')", "bash's answer 'hi'"
        )
        # keys go in order: had the watched ones been sent, they would show before this
        assert "ignored" not in await page.evaluate(screen)

        # the terminal follows the agent's size
        await operations.perform(ResizeOp(id="r", name="shell", rows=30, cols=100), Principal())
        size = "document.querySelector('#agent-size').textContent"
        await page.wait_for(f"{size} == '30x100'", "the terminal resized with the agent")
        await page.wait_for(f"{screen}.includes('ready$')", "the prompt, repainted")

        # a message to the reader, seen verified
        await page.evaluate("document.querySelector('#agents tr[data-agent=\"reader\"]').click()")
        await page.wait_for(
            "document.querySelector('#agent-name').textContent == 'reader'", "reader"
        )
        await page.evaluate("document.querySelector('#send-body').value = 'hello from the page'")
        await page.evaluate("document.querySelector('#send button').click()")
        state = "document.querySelector('#deliveries tbody tr .state').textContent"
        await page.wait_for(f"{state} == 'verified'", "the delivery verified", timeout=20)
        verification = await page.evaluate(
            "document.querySelector('#deliveries tbody tr .verification').textContent"
        )
        assert verification in ("submitted", "echo")
        await page.wait_for(f"{screen}.includes('hello from the page')", "the message on screen")
        await page.screenshot(tmp_path / "verified.png")


@pytest.fixture
def claude_binary(monkeypatch: pytest.MonkeyPatch) -> Path:
    binary = skip_unless_installed("claude")
    clean_environment(monkeypatch)
    return binary


async def test_dashboard_flags_a_trust_dialog(
    chromium: str, claude_binary: Path, dashboard: tuple[Site, Any], tmp_path: Path
) -> None:
    site, operations = dashboard
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    env = record_agent_screens.seed("claude", home, project)
    command = [*record_agent_screens.no_network_prefix(), str(claude_binary)]
    await spawn(operations, "claude", command, env=env, cwd=str(project), rows=40, cols=120)
    async with open_page(chromium) as page:
        await logged_in(page, site)
        banner = "document.querySelector('#attention .item[data-agent=\"claude\"]')"
        await page.wait_for(f"!!{banner}", "the attention banner", timeout=30)
        text = await page.evaluate(f"{banner}.innerText")
        assert "claude needs you" in text and "trust" in text.lower(), text
        assert await page.evaluate(row("claude", "activity")) == "attention"
        assert "attention" in await page.evaluate(
            "document.querySelector('#agents tr[data-agent=\"claude\"]').className"
        )
        shot = await page.screenshot(tmp_path / "attention.png")
        assert shot.count(ATTENTION_BANNER, (0, 0, shot.width, 200)) > 2000, "it stands out"
    await operations.broker.release("claude")
