"""A real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol
with aiohttp's websocket client: open pages, evaluate JavaScript, wait for the DOM.

    async with Browser.launch(tmp_path) as browser:
        page = await browser.open("http://127.0.0.1:8080/?user=ana")
        await page.wait_for("document.querySelectorAll('#online li').length == 2")

``chromium_unavailable_reason()`` says why a browser test must skip (``None``: it can run).
Flags: the ones that work on this machine with no network (machines/python.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

__all__ = ["Browser", "Page", "chromium_unavailable_reason"]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-allow-origins=*"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_unavailable_reason() -> str | None:
    if chromium() is None:
        return "needs Debian's chromium (apt-get install chromium; make test installs it as root)"
    return None


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> Any:
        call_id = next(self._ids)
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        async for msg in self.ws:
            data = json.loads(msg.data)
            if data.get("id") == call_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result")
        raise RuntimeError("the browser closed the page's connection")

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> None:
        """Poll the page until ``expression`` is truthy (as a person watching it would)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await self.eval(expression)
            if last:
                return
            await asyncio.sleep(0.05)
        text = await self.eval("document.body.innerText")
        raise AssertionError(f"page never showed {expression!r} (last {last!r}); it reads:\n{text}")


class Browser:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, session: aiohttp.ClientSession) -> None:
        self.proc = proc
        self.port = port
        self.session = session

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, workdir: Path) -> AsyncIterator[Browser]:
        exe = chromium()
        assert exe is not None, chromium_unavailable_reason()
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        log = os.open(workdir / "chromium.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                exe, *FLAGS, f"--user-data-dir={profile}", "about:blank",
                stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL)
        finally:
            os.close(log)
        session = aiohttp.ClientSession()
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text().strip():
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chromium did not start:\n{(workdir / 'chromium.log').read_text()[-2000:]}")
                await asyncio.sleep(0.05)
            port = int(port_file.read_text().split()[0])
            yield cls(proc, port, session)
        finally:
            await session.close()
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            with contextlib.suppress(OSError):
                shutil.rmtree(profile)

    async def open(self, url: str) -> Page:
        async with self.session.put(f"http://127.0.0.1:{self.port}/json/new?{quote(url, safe='')}") as r:
            target = await r.json()
        ws = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        return Page(ws)


os.environ.setdefault("NO_AT_BRIDGE", "1")  # no accessibility bus warnings in the log
