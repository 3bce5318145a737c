"""The admin endpoint's live page in a real headless browser (Debian's chromium): it
draws this node, its peers and the candidates that are not linked with their cause,
and follows the membership as it changes without a reload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.browser import Browser, chromium_unavailable_reason

import peerlink
from peerlink.testing import free_port

pytestmark = pytest.mark.skipif(chromium_unavailable_reason() is not None,
                                reason=chromium_unavailable_reason() or "")


def local(name: str, port: int, discovery: list[peerlink.Strategy], **options: Any) -> peerlink.Node:
    return peerlink.Node(peerlink.Config.local(cluster="c", cookie="k", name=name,
                                               listen=f"127.0.0.1:{port}", discovery=discovery, **options))


def present(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector)}) !== null"


async def test_live_page_draws_and_follows_the_membership(tmp_path: Path) -> None:
    pa, pb, pc, dead, admin = (free_port() for _ in range(5))
    everyone = peerlink.Static([f"127.0.0.1:{p}" for p in (pa, pb, pc, dead)])
    a = local("a", pa, [everyone], admin_listen=f"127.0.0.1:{admin}")
    b = local("b", pb, [])
    c = local("c", pc, [])
    async with Browser.launch(tmp_path) as browser:
        async with a, b:
            await a.wait_for_peers(1, timeout=10)
            page = await browser.open(f"http://127.0.0.1:{admin}/")
            await page.wait_for(present('svg [data-peer="b"]'))
            await page.wait_for(present(f'svg [data-candidate="127.0.0.1:{dead}"][data-state="refused"]'))
            await page.wait_for(present(f'#candidates tr[data-candidate="127.0.0.1:{pc}"]'))
            dead_row = f'#candidates tr[data-candidate="127.0.0.1:{dead}"]'
            row = await page.evaluate(f"document.querySelector({json.dumps(dead_row)}).innerText")
            assert "refused" in row and "connection refused" in row and "static://" in row
            assert await page.evaluate("document.getElementById('readiness').textContent") == "ready"
            assert "a silent peer is reported within 0.5-0.6 s" in await page.evaluate(
                "document.getElementById('summary').textContent")
            await page.screenshot(tmp_path / "two-nodes.png")

            async with c:  # a third node starts: the page shows it without a reload
                await page.wait_for(present('svg [data-peer="c"]'))
                await page.wait_for(present('#peers tr[data-peer="c"]'))
                await page.screenshot(tmp_path / "three-nodes.png")
            # c said goodbye: it is gone from the peers, and its endpoint is refused again
            await page.wait_for("!(" + present('svg [data-peer="c"]') + ")")
            await page.wait_for(present(f'svg [data-candidate="127.0.0.1:{pc}"]'))
            assert await page.evaluate("document.querySelectorAll('script').length") == 1
        # the node is gone: the page says so instead of showing stale data
        await page.wait_for("document.getElementById('banner').textContent.startsWith('cannot reach the node')")
