"""Helpers for testing applications built on peerlink (and peerlink itself).

``ManualDiscovery`` is a strategy the test drives; ``free_port()`` finds a port;
``wait_until()`` polls a condition with a deadline instead of sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable

from .discovery.base import Endpoint, LocalNode, Snapshot, Strategy, parse_hostport
from .errors import DiscoveryError

__all__ = ["ManualDiscovery", "free_port", "free_ports", "wait_until"]


class ManualDiscovery(Strategy):
    """A strategy whose snapshot the test sets: ``set([...])``, ``fail("why")``."""

    scheme = "manual"

    def __init__(self, addresses: Iterable[str | Endpoint] = ()) -> None:
        self._snapshot: Snapshot = self._parse(addresses)
        self._error: str | None = None
        self._changed = asyncio.Event()
        self.watching = 0

    @staticmethod
    def _parse(addresses: Iterable[str | Endpoint]) -> Snapshot:
        out = set()
        for a in addresses:
            out.add(a if isinstance(a, Endpoint) else Endpoint(*parse_hostport(a)))
        return frozenset(out)

    def set(self, addresses: Iterable[str | Endpoint]) -> None:
        """Publish a new whole snapshot (an empty one is an authoritative "nobody")."""
        self._snapshot = self._parse(addresses)
        self._error = None
        self._changed.set()

    def fail(self, reason: str = "lookup failed") -> None:
        """Make the next lookups fail until ``set()`` is called again."""
        self._error = reason
        self._changed.set()

    async def watch(self, local: LocalNode) -> AsyncIterator[Snapshot]:
        self.watching += 1
        try:
            while True:
                if self._error is not None:
                    raise DiscoveryError(self.scheme, self._error)
                yield self._snapshot
                self._changed.clear()
                await self._changed.wait()
        finally:
            self.watching -= 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago (held open together while
    chosen, so no two are the same)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(family)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``cond`` until true; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout:g} s")
        await asyncio.sleep(interval)
