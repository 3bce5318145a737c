"""Static list of candidate addresses. Imports only discovery.base."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from .base import Endpoint, LocalNode, Snapshot, Strategy, UrlOptions, parse_hostport


class Static(Strategy):
    """A fixed list of ``host:port`` addresses.

    Assumes: you know where the nodes listen (a lab, docker-compose, a fixed fleet).
    Listing this node's own address is fine: it is recognised and skipped, so every
    node can share one list.

    Options:
        addresses: ``"host:port"`` strings (``"[v6]:port"`` for IPv6), or
            ``(host, port)`` tuples, or ``Endpoint`` objects.

    URL form: ``static://10.0.0.5:4370,10.0.0.6:4370``.

    Empty and failure: the list never changes and never fails.
    """

    scheme = "static"

    def __init__(self, addresses: Iterable[str | tuple[str, int] | Endpoint]) -> None:
        endpoints: set[Endpoint] = set()
        for a in addresses:
            if isinstance(a, Endpoint):
                endpoints.add(a)
            elif isinstance(a, tuple):
                endpoints.add(Endpoint(str(a[0]), int(a[1])))
            else:
                host, port = parse_hostport(a, what="static address")
                endpoints.add(Endpoint(host, port))
        self.endpoints: Snapshot = frozenset(endpoints)

    @classmethod
    def from_url(cls, url: str) -> Static:
        opts = UrlOptions(url, cls.scheme)
        opts.finish()
        items = [x for x in opts.netloc.split(",") if x.strip()]
        return cls(items)

    def describe(self) -> str:
        return "static://" + ",".join(str(e) for e in sorted(self.endpoints))

    async def watch(self, local: LocalNode) -> AsyncIterator[Snapshot]:
        yield self.endpoints
        await asyncio.Event().wait()  # nothing ever changes; wait to be closed
