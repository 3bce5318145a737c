"""Messaging across links: handlers by topic, send / broadcast / call, replies.

Semantics (like Distributed Erlang): at most once, FIFO per link, no persistence.
Handlers of one link run in arrival order; an ``async`` handler that suspends holds
back that link's later messages (not other links'), unless registered with
``concurrent=True``. Imports link, protocol, events, errors, _log.

The hot path (one-way ``send`` into a sync handler) allocates no task and no future
per message: the sender packs straight into the link's coalescing encoder, and the
receiver calls the handler from ``data_received``.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from . import protocol as p
from ._log import RateLimiter, log_limited
from .errors import CallTimeout, PeerUnavailable, ProtocolError, RemoteError
from .events import Peer
from .link import LINK_OPEN, Link
from .stats import Stats

__all__ = ["Handler", "HandlerFunc", "Messenger"]

log = logging.getLogger(__name__)
_SEND, _CALL, _REPLY = p.SEND, p.CALL, p.REPLY

HandlerFunc: TypeAlias = Callable[[Any, Peer], Any] | Callable[[Any, Peer], Awaitable[Any]]

# A link whose async handlers fall this many messages behind stops reading (TCP
# backpressure reaches the sender) until it is back under the low mark.
INBOX_HIGH = 10_000
INBOX_LOW = 1_000


def _being_cancelled() -> bool:
    """True if the running task itself is being cancelled (as opposed to a handler that
    let a CancelledError of its own escape)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _expire(fut: asyncio.Future[Any], peer: str, topic: str, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(CallTimeout(peer, topic, timeout))


@dataclass(frozen=True, slots=True)
class Handler:
    fn: HandlerFunc
    is_async: bool
    concurrent: bool


class Messenger:
    """Dispatches inbound messages to handlers and implements send/broadcast/call over
    the active links (a read-only name -> Link mapping owned by Membership)."""

    def __init__(self, links: Mapping[str, Link]) -> None:
        self.links = links
        self.handlers: dict[str, Handler] = {}
        self._sync: dict[str, Callable[[Any, Peer], Any]] = {}  # the hot path's view
        self._ids = itertools.count(1)
        self.unknown_topic = 0  # messages for topics nobody handles
        self.handler_errors = 0
        self._log_limit = RateLimiter(60.0)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats = Stats()  # the node hands in its own

    # -- registration --------------------------------------------------------------
    def add_handler(self, topic: str, fn: HandlerFunc, *, concurrent: bool = False) -> None:
        if not isinstance(topic, str):
            raise TypeError("topic must be a str")
        if topic in self.handlers:
            raise ValueError(f"a handler for topic {topic!r} is already registered")
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        self.handlers[topic] = Handler(fn, is_async, concurrent)
        if not is_async and not concurrent:
            self._sync[topic] = fn

    # -- sending -------------------------------------------------------------------
    def link_for(self, peer: Peer | str) -> Link:
        name = peer if isinstance(peer, str) else peer.name
        link = self.links.get(name)
        if link is None or link.state is not LINK_OPEN:
            raise PeerUnavailable(name, "no link")
        if not isinstance(peer, str) and link.peer_obj is not None and link.peer_obj.incarnation != peer.incarnation:
            raise PeerUnavailable(name, f"incarnation {peer.incarnation} is gone")
        return link

    async def send(self, peer: Peer | str, topic: str, message: Any) -> None:
        link = self.link_for(peer)
        if link.paused:
            await link.drain()
        link.send_nowait(topic, message)
        self.stats.messages_out += 1

    def send_nowait(self, peer: Peer | str, topic: str, message: Any) -> bool:
        """Queue without waiting; False (nothing queued) when the link is over its
        high-water mark."""
        link = self.link_for(peer)
        if link.paused:
            return False
        link.send_nowait(topic, message)
        self.stats.messages_out += 1
        return True

    async def broadcast(self, topic: str, message: Any) -> set[str]:
        links = [link for link in self.links.values() if link.state is LINK_OPEN]
        if not links:
            return set()
        # pack once, check once: a TypeError leaves nothing half-sent
        p.FrameEncoder(links[0]._encoder.max_frame).add((p.SEND, topic, message))
        reached: set[str] = set()
        for link in links:
            try:
                if link.paused:
                    await link.drain()
                link.send_nowait(topic, message)
            except PeerUnavailable:
                continue
            reached.add(link.name)
        self.stats.messages_out += len(reached)
        return reached

    async def call(self, peer: Peer | str, topic: str, message: Any, timeout: float | None) -> Any:
        if topic.__class__ is not str:
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        link = self.link_for(peer)
        if link.paused:
            await link.drain()
        call_id = next(self._ids)
        loop = link._loop  # asyncio.get_running_loop() costs a getpid() syscall on 3.11
        fut: asyncio.Future[Any] = loop.create_future()
        link.calls[call_id] = fut
        try:
            link.write((p.CALL, call_id, topic, message), now=True)
        except BaseException:
            del link.calls[call_id]
            raise
        # a plain timer rather than asyncio.timeout(): no task cancellation on the
        # latency-critical path, and a late reply finds no future and is dropped
        timer = None if timeout is None else loop.call_later(
            timeout, _expire, fut, link.name, topic, timeout)
        stats = self.stats
        stats.messages_out += 1
        started = loop.time()
        try:
            return await fut
        except Exception:
            stats.call_failures += 1
            raise
        finally:
            stats.calls.observe(loop.time() - started)
            link.calls.pop(call_id, None)
            if timer is not None:
                timer.cancel()

    # -- receiving -----------------------------------------------------------------
    def dispatch(self, link: Link, messages: list[Any]) -> None:
        """Handle a chunk of messages from ``link`` (called from data_received).

        The first branch is the hot path: a SEND to a sync handler, nothing queued
        ahead of it on this link. Everything else goes through ``_dispatch_other``."""
        sync = self._sync
        inbox = link.inbox
        peer = link.peer_obj
        self.stats.messages_in += len(messages)
        try:
            for msg in messages:
                kind = msg[0]
                if kind == _SEND and not inbox:
                    fn = sync.get(msg[1])
                    if fn is not None:
                        try:
                            fn(msg[2], peer)  # type: ignore[arg-type]
                        except Exception as exc:
                            self._handler_failed(msg[1], exc)
                        continue
                elif kind == _CALL and not inbox:
                    fn = sync.get(msg[2])
                    if fn is not None:
                        try:
                            result = fn(msg[3], peer)  # type: ignore[arg-type]
                        except Exception as exc:
                            self._reply_error(link, msg[1], type(exc).__name__, str(exc))
                        else:
                            self._reply(link, msg[1], result)
                        continue
                elif kind == _REPLY and msg[2] is True:
                    fut = link.calls.pop(msg[1], None)
                    if fut is not None:  # else: late, or moved with a retired link
                        if not fut.done():
                            fut.set_result(msg[3])
                        continue
                self._dispatch_other(link, msg)
        except (IndexError, TypeError, KeyError) as exc:
            raise ProtocolError(f"malformed message: {exc}") from exc

    def _dispatch_other(self, link: Link, msg: Any) -> None:
        kind = msg[0]
        inbox = link.inbox
        peer = link.peer_obj
        if kind == p.SEND or kind == p.CALL:
            if inbox:  # something is still being handled: keep arrival order
                self._queue(link, msg)
                return
            topic = msg[1] if kind == p.SEND else msg[2]
            h = self.handlers.get(topic)
            if h is None:
                self._unknown(link, msg)
            elif h.concurrent:
                self._spawn(link, msg, h)
            elif h.is_async:
                self._queue(link, msg)
            elif kind == p.SEND:  # a sync handler registered after the fast path looked
                self._run_sync(link, msg, h)
            else:
                try:
                    result = h.fn(msg[3], peer)  # type: ignore[arg-type]
                except Exception as exc:
                    self._reply_error(link, msg[1], type(exc).__name__, str(exc))
                else:
                    self._reply(link, msg[1], result)
        elif kind == p.REPLY:
            fut = link.calls.pop(msg[1], None)
            if fut is None and link.retiring:  # its calls moved to the surviving link
                active = self.links.get(link.name)
                if active is not None:
                    fut = active.calls.pop(msg[1], None)
            if fut is not None and not fut.done():
                if msg[2]:
                    fut.set_result(msg[3])
                else:
                    err = msg[3]
                    fut.set_exception(RemoteError(str(err[0]), str(err[1])))
        else:
            link.control(msg)

    def _run_sync(self, link: Link, msg: Any, h: Handler) -> None:
        try:
            h.fn(msg[2], link.peer_obj)  # type: ignore[arg-type]
        except Exception as exc:
            self._handler_failed(msg[1], exc)

    def _spawn(self, link: Link, msg: Any, h: Handler) -> None:
        task = asyncio.get_running_loop().create_task(self._run_one(link, msg, h))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _queue(self, link: Link, msg: Any) -> None:
        """Queue behind the link's running handler; stop reading the link while the
        queue is long (TCP backpressure reaches the sender), resume when it drains."""
        inbox = link.inbox
        inbox.append(msg)
        if link.inbox_task is None:
            link.inbox_task = asyncio.get_running_loop().create_task(self._drain_inbox(link))
        if len(inbox) >= INBOX_HIGH:
            link.pause_reading()

    async def _drain_inbox(self, link: Link) -> None:
        inbox = link.inbox
        handlers = self.handlers
        try:
            while inbox:
                msg = inbox[0]
                if msg[0] == _SEND:
                    # the common case inline: no _run_one coroutine per message
                    h = handlers.get(msg[1])
                    if h is not None and not h.concurrent:
                        try:
                            r = h.fn(msg[2], link.peer_obj)  # type: ignore[arg-type]
                            if r is not None and inspect.isawaitable(r):
                                await r
                        except asyncio.CancelledError as exc:
                            if _being_cancelled():
                                raise
                            self._handler_failed(msg[1], exc)  # leaked by the handler
                        except Exception as exc:
                            self._handler_failed(msg[1], exc)
                        inbox.popleft()
                        if len(inbox) <= INBOX_LOW:
                            link.resume_reading()
                        continue
                topic = msg[1] if msg[0] == p.SEND else msg[2]
                h = handlers.get(topic)
                if h is None:
                    self._unknown(link, msg)
                elif h.concurrent:
                    self._spawn(link, msg, h)
                else:
                    await self._run_one(link, msg, h)
                inbox.popleft()
                if len(inbox) <= INBOX_LOW:
                    link.resume_reading()
        finally:
            link.inbox_task = None
            link.resume_reading()

    async def _run_one(self, link: Link, msg: Any, h: Handler) -> None:
        is_send = msg[0] == p.SEND
        try:
            r = h.fn(msg[2] if is_send else msg[3], link.peer_obj)  # type: ignore[arg-type]
            if inspect.isawaitable(r):
                r = await r
        except asyncio.CancelledError as exc:
            if _being_cancelled():
                raise  # we are being cancelled (the link closed): not the handler's doing
            self._failed(link, msg, exc)  # the handler leaked a CancelledError
        except Exception as exc:
            self._failed(link, msg, exc)
        else:
            if not is_send:
                self._reply(link, msg[1], r)

    def _failed(self, link: Link, msg: Any, exc: BaseException) -> None:
        if msg[0] == p.SEND:
            self._handler_failed(msg[1], exc)
        else:
            self._reply_error(link, msg[1], type(exc).__name__, str(exc))

    def _reply_link(self, link: Link) -> Link | None:
        """Where a reply goes: the link the call came on, or - if that one was retired
        as a duplicate meanwhile - the peer's surviving link (calls move with it)."""
        if link.state is LINK_OPEN:
            return link
        active = self.links.get(link.name)
        if active is not None and active.state is LINK_OPEN and active.peer == link.peer:
            return active
        return None

    def _reply(self, link: Link, call_id: int, result: Any) -> None:
        target = self._reply_link(link)
        if target is None:
            return  # the caller's link is gone; it got PeerUnavailable
        try:
            target.write((p.REPLY, call_id, True, result))
        except (TypeError, ValueError) as exc:
            self._reply_error(link, call_id, type(exc).__name__, f"reply cannot be sent: {exc}")

    def _reply_error(self, link: Link, call_id: int, type_name: str, message: str) -> None:
        target = self._reply_link(link)
        if target is not None:
            target.write((p.REPLY, call_id, False, (type_name, message)))

    def _unknown(self, link: Link, msg: Any) -> None:
        self.unknown_topic += 1
        topic = msg[1] if msg[0] == p.SEND else msg[2]
        log_limited(log, self._log_limit, ("topic", topic), logging.WARNING,
                    "%s: message for topic %r, which has no handler", link.name, topic)
        if msg[0] == p.CALL:
            self._reply_error(link, msg[1], "LookupError", f"no handler for topic {topic!r}")

    def _handler_failed(self, topic: str, exc: BaseException) -> None:
        self.handler_errors += 1
        log.error("handler for topic %r raised", topic, exc_info=exc)

    # -- link lifecycle --------------------------------------------------------------
    def link_closed(self, link: Link) -> None:
        """Fail every call waiting on ``link`` at once."""
        calls, link.calls = link.calls, {}
        name = link.name
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(PeerUnavailable(name, "link closed before the reply"))
        if link.inbox_task is not None:
            link.inbox_task.cancel()
        link.inbox.clear()

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
