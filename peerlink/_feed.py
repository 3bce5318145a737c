"""Feed: the consumer side shared by pubsub subscriptions and presence diff
subscriptions: an async iterator (and async context manager) that waits for items
without a task, or a callback driven by one task. Imports nothing from peerlink.

A subclass decides how items are held (a bounded queue with a loss marker, a
coalesced diff) through ``_pop``; producers call ``_wake`` after adding.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

__all__ = ["Feed"]

log = logging.getLogger("peerlink")
T = TypeVar("T")

Callback = Callable[[Any], Awaitable[None] | None]


class Feed(ABC, Generic[T]):
    """Registered when created; ``close()`` (or leaving ``async with``) unregisters
    it, and iteration ends after the items it holds. Cancelling ``__anext__`` is safe:
    nothing is lost."""

    def __init__(self) -> None:
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    # -- for subclasses ----------------------------------------------------------------
    @abstractmethod
    def _pop(self) -> T | None:
        """The next item, or None if there is none yet."""

    @abstractmethod
    def _unregister(self) -> None:
        """Stop receiving (called once, by close)."""

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- consumer side -------------------------------------------------------------------
    def close(self) -> None:
        """Stop receiving; iteration ends after what is held. A callback's task stops."""
        if not self.closed:
            self.closed = True
            self._unregister()
            self._wake()

    def __aiter__(self) -> Feed[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            item = self._pop()
            if item is not None:
                return item
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def get(self, timeout: float | None = None) -> T:
        """The next item (``TimeoutError`` after ``timeout`` s; StopAsyncIteration once
        closed and empty)."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    async def __aenter__(self) -> Feed[T]:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    def _drive(self, fn: Callback, what: str) -> None:
        """Call ``fn(item)`` (sync or async) for each item, one at a time, in order, in
        one task; an exception is logged and the next item is delivered."""

        async def run() -> None:
            async for item in self:
                try:
                    r = fn(item)
                    if inspect.isawaitable(r):
                        await r
                except Exception:
                    log.exception("%s callback raised", what)

        self._task = asyncio.get_running_loop().create_task(run(), name=f"peerlink-{what}")
