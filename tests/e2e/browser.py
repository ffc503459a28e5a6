"""Headless Chromium driven over the DevTools protocol, with aiohttp's websocket client.

No extra dependency and no browser download: Debian's ``/usr/bin/chromium``
(CI installs it with apt) started with ``--remote-debugging-port=0``; it
writes the port it chose to ``DevToolsActivePort`` in its profile. A test
runs JavaScript in the page (:meth:`Browser.js`) and waits for the DOM to
reach a condition with a deadline (:meth:`Browser.wait_for`), never a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import eventually

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1500", "--remote-debugging-port=0")


class PageError(AssertionError):
    """JavaScript in the page threw; the message is the page's."""


class Browser:
    """One page of a headless Chromium."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    @asynccontextmanager
    async def launch(cls, profile: Path) -> AsyncIterator[Browser]:
        """A browser with its profile in ``profile`` (an existing, empty directory)."""
        assert CHROMIUM is not None
        with (profile / "chromium.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank",
                stdout=asyncio.subprocess.DEVNULL, stderr=log)
        try:
            port_file = profile / "DevToolsActivePort"
            await eventually(lambda: _read_text(port_file), bool, 30, "chromium's DevTools port")
            port = (await _read_text(port_file)).split()[0]
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    targets = await resp.json()
                page = next(t for t in targets if t["type"] == "page")
                async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    browser = cls(ws)
                    try:
                        yield browser
                    finally:
                        browser._reader.cancel()
        finally:
            with suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            future = self._waiting.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result; AssertionError for a protocol error."""
        call = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[call] = future
        await self._ws.send_json({"id": call, "method": method, "params": params})
        answer = await asyncio.wait_for(future, 30)
        assert "error" not in answer, answer["error"]
        result: dict[str, Any] = answer["result"]
        return result

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'", 30, f"{url} loaded")

    async def js(self, expression: str) -> Any:
        """The value of ``expression`` in the page (promises awaited)."""
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise PageError(details.get("exception", {}).get("description") or details["text"])
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float, what: str) -> Any:
        """The value of ``expression`` once it is truthy."""
        return await eventually(lambda: self.js(expression), bool, timeout_s, what)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


async def _read_text(path: Path) -> str:
    return await asyncio.to_thread(lambda: path.read_text() if path.exists() else "")
