"""Debian's headless Chromium, driven directly over the Chrome DevTools Protocol (a websocket,
with aiohttp): no Selenium, no webdriver. `browser` backs a session fixture (Chromium itself is
provisioned by provision.py), `open_page` gives a fresh tab in its own browser context."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import provision
from tests.support.waiting import CEILING_S, until_sync


def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A headless Chromium (for a session-scoped fixture); yields its DevTools websocket URL,
    or skips when Chromium cannot be installed or started."""
    provision.ready("chromium")  # installed in the background since collection
    profile = tmp_path_factory.mktemp("chromium-profile")
    log = (profile.parent / "chromium.log").open("wb")
    proc = subprocess.Popen(
        [provision.CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "about:blank"],
        stdout=log, stderr=log, start_new_session=True)
    port_file = profile / "DevToolsActivePort"

    def listening() -> bool:
        if proc.poll() is not None:
            pytest.skip(f"chromium exited with {proc.returncode} (see {log.name})")
        return port_file.exists() and len(port_file.read_text().split()) == 2
    try:
        until_sync(listening, "chromium to open its DevTools port", poll_s=0.05)
        port, path = port_file.read_text().split()
        yield f"ws://127.0.0.1:{port}{path}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


class CDPError(Exception):
    pass


@dataclass
class CDP:
    """One websocket to the browser; page commands go to a flat-attached session."""
    ws: aiohttp.ClientWebSocketResponse
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    next_id: int = 0

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self.pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def send(self, method: str, params: dict[str, Any] | None = None,
                   session: str | None = None) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, CEILING_S)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply["result"]


@dataclass
class Page:
    cdp: CDP
    session: str
    context: str

    async def evaluate(self, expression: str) -> Any:
        result = await self.cdp.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True},
            self.session)
        if "exceptionDetails" in result:
            raise CDPError(str(result["exceptionDetails"].get("exception", result)))
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str, limit_s: float = CEILING_S) -> Any:
        """Poll a DOM condition until it holds, for at most `limit_s` seconds."""
        deadline, last = time.monotonic() + limit_s, None
        while True:
            try:
                value = await self.evaluate(expression)
            except CDPError as err:  # e.g. the page is navigating
                value, last = None, err
            if value:
                return value
            if time.monotonic() > deadline:
                state = await self.evaluate("document.body ? document.body.innerText : ''")
                raise AssertionError(f"timed out waiting for {what} ({last}); page: {state!r}")
            await asyncio.sleep(0.1)

    async def navigate(self, url: str) -> None:
        await self.cdp.send("Page.navigate", {"url": url}, self.session)

    async def cookies(self) -> list[dict[str, Any]]:
        found = await self.cdp.send("Storage.getCookies", {"browserContextId": self.context})
        return list(found["cookies"])

    def errors(self) -> list[str]:
        out = []
        for e in self.cdp.events:
            if e.get("sessionId") != self.session:
                continue
            if e["method"] == "Runtime.exceptionThrown":
                out.append(str(e["params"]["exceptionDetails"]))
            elif e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error":
                out.append(e["params"]["entry"]["text"])
        return out

    async def screenshot(self, path: Path) -> bytes:
        metrics = await self.cdp.send("Page.getLayoutMetrics", {}, self.session)
        size = metrics["cssContentSize"]
        shot = await self.cdp.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                     "scale": 1}}, self.session)
        png = base64.b64decode(shot["data"])
        await asyncio.to_thread(path.write_bytes, png)
        return png


@asynccontextmanager
async def open_page(chromium: str) -> AsyncIterator[Page]:
    """A fresh tab in its own browser context (own cookies), 1440 px wide."""
    async with aiohttp.ClientSession() as session, session.ws_connect(
            chromium, max_msg_size=0) as ws:
        cdp = CDP(ws)
        reader = asyncio.create_task(cdp.read())
        context = (await cdp.send("Target.createBrowserContext"))["browserContextId"]
        target = (await cdp.send("Target.createTarget", {
            "url": "about:blank", "browserContextId": context}))["targetId"]
        attached = await cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        tab = Page(cdp, attached["sessionId"], context)
        for method in ("Runtime.enable", "Log.enable"):
            await cdp.send(method, {}, tab.session)
        await cdp.send("Emulation.setDeviceMetricsOverride", {
            "width": 1440, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, tab.session)
        yield tab
        await cdp.send("Target.disposeBrowserContext", {"browserContextId": context})
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
