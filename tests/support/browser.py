"""A real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol,
for tests of pages the library serves::

    async with Browser.launch(tmp_path) as browser:
        page = await browser.open("http://127.0.0.1:8080/")
        await page.wait_for("document.querySelector('[data-peer=\\"b\\"]') !== null")
        await page.screenshot(tmp_path / "page.png")

``chromium_unavailable_reason()`` says why a test must skip (no binary). The flags are
the ones that work on this machine's closed network (no background networking, no
component updates, no sync, a fresh profile).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["Browser", "Page", "chromium_binary", "chromium_unavailable_reason"]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", "--window-size=1100,900"]


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_unavailable_reason() -> str | None:
    if chromium_binary() is None:
        return "chromium is not installed (make test installs Debian's chromium when run as root)"
    return None


class Page:
    """One tab, spoken to over its DevTools websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            msg = await self._ws.receive_json(timeout=30)
            if msg.get("id") == call_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Wait until ``expression`` is truthy in the page; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                body = await self.evaluate("document.body ? document.body.innerText : ''")
                raise AssertionError(f"page: {expression} still false after {timeout} s; page text:\n{body}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> None:
        result = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(result["data"]))


class Browser:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, session: aiohttp.ClientSession) -> None:
        self.proc = proc
        self.port = port
        self.session = session

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, workdir: Path) -> AsyncIterator[Browser]:
        binary = chromium_binary()
        assert binary is not None, chromium_unavailable_reason()
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        log = os.open(workdir / "chromium.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                binary, *FLAGS, f"--user-data-dir={profile}", "about:blank",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            os.close(log)
        session = aiohttp.ClientSession()
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise AssertionError("chromium did not start:\n"
                                         + (workdir / "chromium.log").read_text(errors="replace")[-3000:])
                await asyncio.sleep(0.05)
            port = int(port_file.read_text().split()[0])
            yield cls(proc, port, session)
        finally:
            await session.close()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async def open(self, url: str) -> Page:
        # the page's address is the query string of DevTools' /json/new: quoted, or its
        # own query string would be cut off
        async with self.session.put(
                f"http://127.0.0.1:{self.port}/json/new?{urllib.parse.quote(url, safe='')}") as response:
            target = json.loads(await response.text())
        ws = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 2**20)
        return Page(ws)
