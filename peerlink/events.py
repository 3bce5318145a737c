"""Membership events and their delivery: Peer, LeaveReason, PeerJoined, PeerLeft and the
EventBus with bounded per-subscriber queues. Imports only errors.

Delivery contract: every subscriber sees the same events in the same order; for each
(name, incarnation) they alternate join, leave, join... with no duplicates (the
membership manager is the only publisher). A subscriber that falls ``maxsize`` events
behind is closed, not waited for: links never stall on a slow consumer. Its iterator
then raises ``EventsLost`` after the events it already holds.
"""

from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, TypeAlias

from .errors import EventsLost

__all__ = ["Event", "EventBus", "LeaveReason", "Peer", "PeerJoined", "PeerLeft", "Subscription"]


class LeaveReason(enum.StrEnum):
    """Why a peer left."""

    SHUTDOWN = "shutdown"  # the peer said goodbye
    CONNECTION_LOST = "connection_lost"  # the TCP connection broke (crash, kill -9, reset)
    TIMEOUT = "timeout"  # nothing heard for `timeout` seconds (hung, partitioned)
    RESTARTED = "restarted"  # the same name came back with a new incarnation
    PROTOCOL_ERROR = "protocol_error"  # malformed or oversized data on the link


@dataclass(frozen=True, slots=True)
class Peer:
    """An authenticated peer, as the application sees it (immutable)."""

    name: str
    incarnation: str
    address: tuple[str, int]  # where the peer says it can be dialled
    metadata: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.metadata, MappingProxyType):
            object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def address_str(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def __repr__(self) -> str:
        return f"<Peer {self.name} {self.address_str} inc={self.incarnation}>"


@dataclass(frozen=True, slots=True)
class PeerJoined:
    peer: Peer


@dataclass(frozen=True, slots=True)
class PeerLeft:
    peer: Peer
    reason: LeaveReason


Event: TypeAlias = PeerJoined | PeerLeft


class Subscription:
    """A registered event stream: an async iterator and an async context manager.

    It is registered when created (``node.events()``), so no event between the call and
    the first ``__anext__`` is missed. Cancelling ``__anext__`` is safe: no event is lost.
    """

    def __init__(self, bus: EventBus, maxsize: int, initial: Iterable[Event] = ()) -> None:
        self._bus = bus
        self.maxsize = maxsize
        self._queue: collections.deque[Event] = collections.deque(initial)
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.dropped = 0

    def _put(self, event: Event) -> None:
        if self._closed:
            return
        if len(self._queue) >= self.maxsize:
            self.dropped += 1
            self._close()
            return
        self._queue.append(event)
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _close(self) -> None:
        self._closed = True
        self._bus._remove(self)
        self._wake()

    def close(self) -> None:
        """Stop receiving events; the iterator ends after what it holds."""
        self._close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while not self._queue:
            if self._closed:
                if self.dropped:
                    raise EventsLost(self.dropped)
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    async def get(self, timeout: float | None = None) -> Event:
        """The next event (``TimeoutError`` after ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventBus:
    """Fans membership events out to subscribers. Only ``Membership`` publishes."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._listeners: list[Callable[[Event], None]] = []

    def subscribe(self, maxsize: int = 1024, initial: Iterable[Event] = ()) -> Subscription:
        sub = Subscription(self, maxsize, initial)
        self._subs.append(sub)
        return sub

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        """A synchronous in-loop listener (internal: node bookkeeping, CLI output)."""
        self._listeners.append(fn)

    def _remove(self, sub: Subscription) -> None:
        try:
            self._subs.remove(sub)
        except ValueError:
            pass

    def publish(self, event: Event) -> None:
        for fn in self._listeners:
            fn(event)
        for sub in list(self._subs):
            sub._put(event)

    def close(self) -> None:
        for sub in list(self._subs):
            sub._close()


def event_dict(event: Event) -> dict[str, Any]:
    """The JSON form the CLI prints."""
    p = event.peer
    if isinstance(event, PeerJoined):
        return {"event": "join", "peer": p.name, "address": p.address_str,
                "incarnation": p.incarnation, "metadata": dict(p.metadata)}
    return {"event": "leave", "peer": p.name, "incarnation": p.incarnation, "reason": event.reason.value}
