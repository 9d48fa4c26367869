"""Headless Chromium driven over the Chrome DevTools Protocol, from Trio (trio-websocket),
for the dashboard's tests: open a page, evaluate JavaScript, wait for a condition, type,
take a screenshot and read its pixels.

Debian's ``chromium`` is started as the machine's probe found works here (no sandbox as
root, no background networking: this machine's network is closed), with a fresh profile
that is removed afterwards, and killed (its whole process group) on the way out.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    "--remote-debugging-port=0",
]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class PageError(Exception):
    """A DevTools command failed, or JavaScript threw."""


Answers = dict[int, "trio.MemorySendChannel[dict[str, Any]]"]


async def _read(ws: WebSocketConnection, answers: Answers) -> None:
    """Hand each answer to the command waiting for it (events are not used here)."""
    while True:
        message = json.loads(await ws.get_message())
        channel = answers.pop(message.get("id", -1), None)
        if channel is not None:
            await channel.send(message)


class Page:
    """One tab, over the browser's DevTools connection (flat sessions)."""

    def __init__(
        self, ws: WebSocketConnection, session: str, answers: Answers, ids: itertools.count[int]
    ) -> None:
        self._ws = ws
        self._session = session
        self._answers = answers
        self._ids = ids

    async def command(self, method: str, **params: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._answers[request_id] = send
        request = {"id": request_id, "method": method, "params": params}
        if self._session:
            request["sessionId"] = self._session
        await self._ws.send_message(json.dumps(request))
        answer = await receive.receive()
        if "error" in answer:
            raise PageError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def goto(self, url: str) -> None:
        await self.command("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` (awaited if it is a promise). Raises PageError if it
        throws."""
        result = await self.command(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise PageError(details.get("exception", {}).get("description") or str(details))
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout: float = 15.0) -> Any:
        """Evaluate ``expression`` until it is truthy (then return it); fail with ``what``
        and the page's text after ``timeout`` seconds. An expression that throws (an
        element not there yet) counts as false."""
        last: Any = None
        with trio.move_on_after(timeout):
            while True:
                try:
                    last = await self.evaluate(expression)
                except PageError as exc:
                    last = exc
                if last and not isinstance(last, PageError):
                    return last
                await trio.sleep(0.05)
        text = await self.evaluate("document.body ? document.body.innerText : ''")
        raise AssertionError(f"timed out waiting for {what} ({last!r}); the page shows:\n{text}")

    async def type_text(self, text: str) -> None:
        await self.command("Input.insertText", text=text)

    async def press_enter(self) -> None:
        key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
        await self.command("Input.dispatchKeyEvent", type="keyDown", text="\r", **key)
        await self.command("Input.dispatchKeyEvent", type="keyUp", **key)

    async def screenshot(self, path: Path) -> Screenshot:
        data = await self.command("Page.captureScreenshot", format="png")
        png = base64.b64decode(data["data"])
        path.write_bytes(png)  # noqa: ASYNC240 (a test artefact, small)
        return Screenshot.decode(png)


Box = tuple[int, int, int, int]


class Screenshot:
    """A decoded PNG (8-bit RGB or RGBA, not interlaced: what Chromium writes)."""

    def __init__(self, width: int, height: int, rows: list[bytes], channels: int) -> None:
        self.width, self.height, self._rows, self._channels = width, height, rows, channels

    @classmethod
    def decode(cls, png: bytes) -> Screenshot:
        assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
        pos, idat, header = 8, b"", None
        while pos < len(png):
            (length,) = struct.unpack(">I", png[pos : pos + 4])
            kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
            if kind == b"IHDR":
                header = struct.unpack(">IIBBBBB", body)
            elif kind == b"IDAT":
                idat += body
            pos += 12 + length
        assert header is not None
        width, height, depth, colour, _, _, interlace = header
        assert depth == 8 and colour in (2, 6) and not interlace, header
        channels = 3 if colour == 2 else 4
        raw = zlib.decompress(idat)
        stride = width * channels
        rows: list[bytes] = []
        previous = bytearray(stride)
        for y in range(height):
            kind = raw[y * (stride + 1)]
            line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
            _unfilter(kind, line, previous, channels)
            rows.append(bytes(line))
            previous = line
        return cls(width, height, rows, channels)

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = x * self._channels
        r, g, b = self._rows[y][i : i + 3]
        return r, g, b

    def count(
        self, colour: tuple[int, int, int] | Callable[[tuple[int, int, int]], bool], box: Box
    ) -> int:
        """How many pixels of ``colour`` (or for which it is true) lie in ``box`` (left,
        top, right, bottom)."""
        test = colour if callable(colour) else colour.__eq__
        left, top, right, bottom = box
        return sum(
            1
            for y in range(max(0, top), min(self.height, bottom))
            for x in range(max(0, left), min(self.width, right))
            if test(self.pixel(x, y))
        )


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = previous[i]
        c = previous[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + a) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + b) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (a + b) // 2) & 0xFF
        elif kind == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + predictor) & 0xFF


@asynccontextmanager
async def open_page(binary: str) -> AsyncIterator[Page]:
    """A fresh headless Chromium with one blank tab. Everything is killed on exit."""
    profile = Path(tempfile.mkdtemp(prefix="trio-relay-chromium-"))
    process = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        with trio.fail_after(30):
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                assert process.poll() is None, f"chromium exited with {process.returncode}"
                await trio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        async with open_websocket_url(
            f"ws://127.0.0.1:{port}{path}", max_message_size=64 * 1024 * 1024
        ) as ws:
            async with trio.open_nursery() as nursery:
                answers: Answers = {}
                ids = itertools.count(1)
                nursery.start_soon(_read, ws, answers)
                browser = Page(ws, "", answers, ids)
                target = await browser.command("Target.createTarget", url="about:blank")
                attached = await browser.command(
                    "Target.attachToTarget", targetId=target["targetId"], flatten=True
                )
                page = Page(ws, attached["sessionId"], answers, ids)
                await page.command("Page.enable")
                await page.command("Runtime.enable")
                yield page
                nursery.cancel_scope.cancel()
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        shutil.rmtree(profile, ignore_errors=True)
