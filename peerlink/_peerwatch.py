"""PeerWatch: how the layers above the links (pubsub, presence) follow membership.
Uses only the Node's public API (``node.events``, ``node.peers``); imports events, errors.

It consumes ``node.events(current=True)`` in one task and calls ``on_up(peer)`` for
every join and ``on_down(peer, reason)`` for every leave, except a leave that is
already stale when it is handled: the same incarnation is linked again (a quick
re-link), so its join follows and nothing must be dropped. If the watcher falls
behind (``EventsLost``) it resubscribes and reconciles against ``node.peers``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import EventsLost
from .events import LeaveReason, Peer, PeerJoined

if TYPE_CHECKING:
    from .node import Node

__all__ = ["PeerWatch"]

log = logging.getLogger(__name__)


class PeerWatch:
    def __init__(self, node: Node, on_up: Callable[[Peer], None],
                 on_down: Callable[[Peer, LeaveReason], None], what: str) -> None:
        self.node = node
        self.on_up = on_up
        self.on_down = on_down
        self.what = what
        self.up: dict[str, Peer] = {}  # the peers we told on_up about, by name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"peerlink-{self.what}-peers")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            sub = self.node.events(current=True)
            self._reconcile()  # after EventsLost: whoever left meanwhile
            try:
                async for event in sub:
                    if isinstance(event, PeerJoined):
                        self._up(event.peer)
                    else:
                        self._down(event.peer, event.reason)
                return  # the node closed
            except EventsLost as exc:
                log.warning("%s fell behind membership events (%d dropped); resynchronising",
                            self.what, exc.dropped)

    def _up(self, peer: Peer) -> None:
        self.up[peer.name] = peer
        self._guard(self.on_up, peer)

    def _down(self, peer: Peer, reason: LeaveReason) -> None:
        now = self.node.peers.get(peer.name)
        if now is not None and now.incarnation == peer.incarnation:
            return  # linked again already: its join follows
        if self.up.get(peer.name) == peer:
            del self.up[peer.name]
        self._guard(self.on_down, peer, reason)

    def _reconcile(self) -> None:
        for name, peer in list(self.up.items()):
            now = self.node.peers.get(name)
            if now is None or now.incarnation != peer.incarnation:
                self._down(peer, LeaveReason.CONNECTION_LOST)

    def _guard(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # a bug above must not stop the watch
            log.exception("%s: membership callback raised", self.what)
