"""Real nodes in the test's own event loop on 127.0.0.1, for the messaging tests.

``mesh(3)`` starts nodes "a", "b", "c" (each one's ``Static`` list names the nodes
started before it, so every pair is dialled once) and waits until every node sees all
others. ``Tap`` watches the raw messages arriving on one link, so a test can await
"the bytes are here" without sleeping. ``Inbox`` collects what a handler received.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from peerlink import Config, Node, Peer, PeerLeft, Static
from peerlink.link import Link

__all__ = ["NAMES", "Inbox", "Leaves", "T", "Tap", "config", "link_of", "mesh", "wait_for"]

T = 5.0  # generous deadline for anything awaited
NAMES = "abcdefgh"


def config(name: str, seeds: list[str] | None = None, **options: Any) -> Config:
    discovery = [Static(seeds)] if seeds else []
    return Config.local(cluster="t", cookie="k", name=name, discovery=discovery, **options)


@asynccontextmanager
async def mesh(n: int = 2, **options: Any) -> AsyncIterator[list[Node]]:
    """``n`` started nodes named a, b, c..., all linked to each other; closed on exit."""
    nodes: list[Node] = []
    try:
        for i in range(n):
            node = Node(config(NAMES[i], [x.address_str for x in nodes], **options))
            await node.start()
            nodes.append(node)
        for node in nodes:
            await node.wait_for_peers(n - 1, timeout=T)
        yield nodes
    finally:
        for node in reversed(nodes):
            await node.close()


def link_of(node: Node, peer: str) -> Link:
    """``node``'s open link to ``peer``."""
    assert node._membership is not None
    return node._membership.active[peer]


async def wait_for(changed: asyncio.Event | Callable[[], asyncio.Event], cond: Callable[[], bool],
                   timeout: float = T) -> None:
    """Wait until ``cond()`` holds, re-checking each time ``changed`` is set."""
    async with asyncio.timeout(timeout):
        while not cond():
            ev = changed() if callable(changed) else changed
            ev.clear()
            await ev.wait()


class Tap:
    """Counts (and optionally keeps) the decoded messages arriving on ``link`` before
    its node dispatches them; ``await tap.until(cond)`` re-checks after each chunk."""

    def __init__(self, link: Link, *, keep: bool = True) -> None:
        self.link = link
        self.count = 0
        self.messages: list[Any] = []
        self.changed = asyncio.Event()
        self._keep = keep
        original = link.on_messages

        def hook(lk: Link, messages: list[Any]) -> None:
            self.count += len(messages)
            if self._keep:
                self.messages.extend(messages)
            try:
                original(lk, messages)
            finally:
                self.changed.set()

        link.on_messages = hook

    async def until(self, cond: Callable[[], bool], timeout: float = T) -> None:
        await wait_for(self.changed, cond, timeout)


class Inbox:
    """What a handler received: ``(message, sender)`` pairs; ``await inbox.until(n)``."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, Peer]] = []
        self.changed = asyncio.Event()

    def add(self, message: Any, sender: Peer) -> None:
        self.items.append((message, sender))
        self.changed.set()

    @property
    def messages(self) -> list[Any]:
        return [m for m, _ in self.items]

    async def until(self, n: int, timeout: float = T) -> None:
        await wait_for(self.changed, lambda: len(self.items) >= n, timeout)

    async def until_true(self, cond: Callable[[], bool], timeout: float = T) -> None:
        await wait_for(self.changed, cond, timeout)


class Leaves:
    """Records PeerLeft events of ``node`` from now on."""

    def __init__(self, node: Node) -> None:
        self.events: list[PeerLeft] = []
        self.changed = asyncio.Event()
        self._sub = node.events(current=False)
        self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        async for ev in self._sub:
            if isinstance(ev, PeerLeft):
                self.events.append(ev)
                self.changed.set()

    async def until(self, n: int = 1, timeout: float = T) -> None:
        await wait_for(self.changed, lambda: len(self.events) >= n, timeout)

    def stop(self) -> None:
        self._task.cancel()
