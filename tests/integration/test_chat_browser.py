"""``examples/chat``: three node processes with their web servers, driven by a real
headless Chromium. Users on different nodes see each other online and exchange
messages; when a node is killed (-9), its users disappear from the other pages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from support.browser import Browser, Page, chromium_unavailable_reason
from support.nodeproc import NodeFactory, static_url, wait_mesh

APP = [sys.executable, str(Path(__file__).resolve().parents[2] / "examples" / "chat" / "app.py")]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(chromium_unavailable_reason() is not None,
                                                    reason=chromium_unavailable_reason() or "")]


def online(users: list[str]) -> str:
    """JS: the page's online list is exactly ``users``."""
    return ("JSON.stringify([...document.querySelectorAll('#online li')].map(li => li.dataset.user))"
            f" == {json.dumps(json.dumps(sorted(users), separators=(',', ':')))}")


def shows_message(text: str) -> str:
    return f"[...document.querySelectorAll('#messages li')].some(li => li.textContent.includes({json.dumps(text)}))"


async def test_chat_across_three_nodes_in_a_real_browser(node_factory: NodeFactory, tmp_path: Path) -> None:
    webs = [node_factory.address() for _ in range(3)]
    listens = [node_factory.address() for _ in range(3)]
    a, b, c = nodes = [
        await node_factory.start(name, command=APP, extra=["--http", web], listen=listen,
                                 discovery=[static_url(listens)])
        for name, web, listen in zip("abc", webs, listens, strict=True)]
    await wait_mesh(nodes)
    async with Browser.launch(tmp_path) as browser:
        pages: list[Page] = [await browser.open(f"http://{web}/?room=lobby&user={user}")
                             for web, user in zip(webs, ["ana", "bo", "cy"], strict=True)]
        for page in pages:
            await page.wait_for(online(["ana", "bo", "cy"]))

        await pages[1].evaluate("document.getElementById('text').value = 'hello from bo';"
                            "document.querySelector('#send button').click()")
        for page in pages:
            await page.wait_for(shows_message("bo: hello from bo"))

        c.kill()
        await c.wait_exit()
        for page in pages[:2]:
            await page.wait_for(online(["ana", "bo"]))
        await pages[0].wait_for("document.getElementById('status').textContent == 'online'")
    assert a.returncode is None and b.returncode is None

