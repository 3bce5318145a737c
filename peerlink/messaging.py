"""Messaging across links: handlers by topic, send / broadcast / call, replies.

Semantics (like Distributed Erlang): at most once, FIFO per link, no persistence.
Handlers of one link run in arrival order; an ``async`` handler that suspends holds
back that link's later messages (not other links'), unless registered with
``concurrent=True``. Imports link, protocol, events, errors, _log.

The hot path (one-way ``send`` into a sync handler) allocates no task and no future
per message: the sender packs straight into the link's coalescing encoder, and the
receiver calls the handler from ``data_received``. An ``async`` handler is started there
too and runs as far as it gets without suspending (most complete at once, and a call is
answered in the same write as a sync handler's); one that suspends goes on in the
link's inbox task, ahead of everything that arrived after it.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from . import protocol as p
from ._deadlines import Deadlines
from ._eager import Starter, Suspended, resume
from ._log import RateLimiter, log_limited
from .errors import PeerUnavailable, ProtocolError, RemoteError
from .events import Peer
from .link import LINK_OPEN, Link
from .stats import Stats

__all__ = ["Handler", "HandlerFunc", "Messenger"]

log = logging.getLogger(__name__)
_SEND, _CALL, _REPLY = p.SEND, p.CALL, p.REPLY

HandlerFunc: TypeAlias = Callable[[Any, Peer], Any] | Callable[[Any, Peer], Awaitable[Any]]

# A link stops reading (TCP backpressure reaches the sender) while its handlers hold
# more than ``inbox_bytes`` of its messages (Config), or this many messages queued, or
# this many concurrent handler tasks; it reads again below half of the byte budget and
# the low mark. A count as well as bytes: a tiny message is ~100x its size in memory.
INBOX_HIGH = 10_000
INBOX_LOW = 1_000
MAX_CONCURRENT_PER_LINK = 1_000
# An exception's message, as a call's RemoteError carries it.
MAX_ERROR_CHARS = 4096


class _Batch:
    """What the messages of one received chunk cost the link's inbox budget.

    Charged with the bytes of the frames the chunk completed (``Link.batch_bytes``) when
    its first message is queued or handed to a concurrent task, released when the last
    of those is done. That over-counts a chunk whose first messages were handled at
    once, and never under-counts: it needs no per-message size from the decoder."""

    __slots__ = ("link", "nbytes", "pending", "sealed")

    def __init__(self, link: Link, nbytes: int) -> None:
        self.link = link
        self.nbytes = nbytes
        self.pending = 0
        self.sealed = False  # no more messages of this chunk will be added
        link.inbox_bytes += nbytes

    def hold(self) -> None:
        self.pending += 1

    def release(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self.sealed:
            self.link.inbox_bytes -= self.nbytes

    def seal(self) -> None:
        self.sealed = True
        if self.pending == 0:
            self.link.inbox_bytes -= self.nbytes


def _being_cancelled() -> bool:
    """True if the running task itself is being cancelled (as opposed to a handler that
    let a CancelledError of its own escape)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _value(result: Any) -> Any:
    """A handler's result as a coroutine (an awaitable is awaited)."""
    return await result if inspect.isawaitable(result) else result


@dataclass(frozen=True, slots=True)
class Handler:
    fn: HandlerFunc
    is_async: bool
    concurrent: bool


class Messenger:
    """Dispatches inbound messages to handlers and implements send/broadcast/call over
    the active links (a read-only name -> Link mapping owned by Membership)."""

    def __init__(self, links: Mapping[str, Link], *, inbox_bytes: int = 256 * 1024) -> None:
        self.links = links
        self.inbox_bytes = inbox_bytes
        self.handlers: dict[str, Handler] = {}
        self._sync: dict[str, Callable[[Any, Peer], Any]] = {}  # the hot path's view
        self._eager: dict[str, Handler] = {}  # ... and its async handlers (not concurrent)
        self._starter = Starter()
        self._ids = itertools.count(1)
        self.unknown_topic = 0  # messages for topics nobody handles
        self.handler_errors = 0
        self._log_limit = RateLimiter(60.0)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._deadlines: Deadlines | None = None  # of calls; made on the first (needs the loop)
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
        elif not concurrent:
            self._eager[topic] = self.handlers[topic]

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
        link = self.links.get(peer) if peer.__class__ is str else None
        if link is None or link.state is not LINK_OPEN:
            link = self.link_for(peer)  # a Peer (its incarnation checked), or the error
        if link.paused:
            await link.drain()
        call_id = next(self._ids)
        loop = link.loop  # asyncio.get_running_loop() costs a getpid() syscall on 3.11
        fut: asyncio.Future[Any] = loop.create_future()
        link.calls[call_id] = fut
        try:
            link.write([_CALL, call_id, topic, message], now=True)
        except BaseException:
            del link.calls[call_id]
            raise
        clock = link.clock
        started = clock()
        # a deadline rather than asyncio.timeout(): no task cancellation on the
        # latency-critical path, and a late reply finds no future and is dropped
        deadline = None
        deadlines = self._deadlines
        if timeout is not None:
            if deadlines is None:
                deadlines = self._deadlines = Deadlines(loop)
            deadline = deadlines.start(started, timeout, fut, link, topic)
        stats = self.stats
        stats.messages_out += 1
        try:
            return await fut
        except BaseException as exc:
            # timed out, cancelled or failed: a late reply must find no call (a reply
            # that arrives pops its own), here or where a retired link moved it
            if link.calls.pop(call_id, None) is None and link.retiring:
                active = self.links.get(link.name)
                if active is not None:
                    active.calls.pop(call_id, None)
            if isinstance(exc, Exception):
                stats.call_failures += 1
            raise
        finally:
            stats.calls.observe(clock() - started)
            if deadline is not None and deadlines is not None:
                deadlines.finish(deadline)

    # -- receiving -----------------------------------------------------------------
    def dispatch(self, link: Link, messages: list[Any]) -> None:
        """Handle a chunk of messages from ``link`` (called from data_received).

        The first branch is the hot path: a SEND to a sync handler, nothing queued
        ahead of it on this link. Everything else goes through ``_dispatch_other``.
        A malformed message raises ProtocolError (the link closes)."""
        sync = self._sync
        eager = self._eager
        inbox = link.inbox
        peer = link.peer_obj
        self.stats.messages_in += len(messages)
        woken = 0  # calls answered by this chunk
        try:
            for msg in messages:
                kind = msg[0]
                if kind == _SEND and not inbox:
                    fn = sync.get(msg[1])
                    if fn is not None:
                        body = msg[2]
                        try:
                            fn(body, peer)  # type: ignore[arg-type]
                        except Exception as exc:
                            self._handler_failed(msg[1], exc)
                        continue
                    h = eager.get(msg[1])
                    if h is not None and len(msg) == 3:
                        self._start(link, msg, h)
                        continue
                elif kind == _CALL and not inbox and not link.paused:
                    h = eager.get(msg[2])
                    if h is not None and len(msg) == 4 and type(msg[1]) is int:
                        self._start(link, msg, h)
                        continue
                    fn = sync.get(msg[2])
                    if fn is not None:
                        call_id, body = msg[1], msg[3]
                        try:
                            result = fn(body, peer)  # type: ignore[arg-type]
                        except Exception as exc:
                            self._reply_error(link, call_id, exc)
                        else:
                            self._reply(link, call_id, result)
                        continue
                elif kind == _REPLY and msg[2] is True:
                    fut = link.calls.pop(msg[1], None)
                    if fut is not None:  # else: late, or moved with a retired link
                        if not fut.done():
                            fut.set_result(msg[3])
                            woken += 1
                        continue
                self._dispatch_other(link, msg)
        except (IndexError, TypeError, KeyError, ValueError) as exc:
            raise ProtocolError(f"malformed message: {type(exc).__name__}") from exc
        finally:
            batch = link.batch
            if batch is not None:
                link.batch = None
                batch.seal()
            if woken > 1:  # their callers' next requests: one write, not one each
                link.gather_writes()

    def _dispatch_other(self, link: Link, msg: Any) -> None:
        kind = msg[0]
        if kind == p.SEND or kind == p.CALL:
            # checked here, before anything is queued: the inbox must only hold
            # messages its task can handle without tripping over their shape
            if len(msg) != (3 if kind == p.SEND else 4) or (kind == p.CALL and type(msg[1]) is not int):
                raise ProtocolError("malformed SEND or CALL")
            topic = msg[1] if kind == p.SEND else msg[2]
            if type(topic) is not str:
                raise ProtocolError("a topic must be a str")
            if link.inbox or (kind == p.CALL and link.paused):
                # something is still being handled (keep arrival order), or the peer is
                # not reading what we write (its replies would only pile up here)
                self._queue(link, msg)
                return
            h = self.handlers.get(topic)
            if h is None:
                self._unknown(link, msg)
            elif h.concurrent:
                if link.running >= MAX_CONCURRENT_PER_LINK:
                    self._queue(link, msg)  # its task waits for a free slot
                else:
                    self._spawn(link, msg, h, self._batch(link))
            elif h.is_async:
                self._start(link, msg, h)
            elif kind == p.SEND:  # a sync handler registered after the fast path looked
                self._run_sync(link, msg, h)
            else:
                try:
                    result = h.fn(msg[3], link.peer_obj)  # type: ignore[arg-type]
                except Exception as exc:
                    self._reply_error(link, msg[1], exc)
                else:
                    self._reply(link, msg[1], result)
        elif kind == p.REPLY:
            fut = link.calls.pop(msg[1], None)
            if fut is None and link.retiring:  # its calls moved to the surviving link
                active = self.links.get(link.name)
                if active is not None:
                    fut = active.calls.pop(msg[1], None)
            if msg[2] is True:
                value = msg[3]
            else:
                err = msg[3]
                if msg[2] is not False or type(err) is not list or len(err) != 2 or not all(
                        type(e) is str for e in err):
                    raise ProtocolError("malformed REPLY")
                value = RemoteError(err[0], err[1])
            if fut is not None and not fut.done():
                if isinstance(value, RemoteError):
                    fut.set_exception(value)
                else:
                    fut.set_result(value)
        else:
            link.control(msg)

    def _run_sync(self, link: Link, msg: Any, h: Handler) -> None:
        try:
            h.fn(msg[2], link.peer_obj)  # type: ignore[arg-type]
        except Exception as exc:
            self._handler_failed(msg[1], exc)

    # -- the budget of messages waiting for handlers ---------------------------------
    def _batch(self, link: Link) -> _Batch:
        """The accounting of the chunk being dispatched, charged on first use."""
        batch: _Batch | None = link.batch
        if batch is None:
            batch = link.batch = _Batch(link, link.batch_bytes)
        return batch

    def _over_budget(self, link: Link) -> bool:
        return (link.inbox_bytes > self.inbox_bytes or len(link.inbox) >= INBOX_HIGH
                or link.running >= MAX_CONCURRENT_PER_LINK)

    def _maybe_resume(self, link: Link) -> None:
        if link.reading_paused and (
                link.inbox_bytes <= self.inbox_bytes // 2 and len(link.inbox) <= INBOX_LOW
                and link.running < MAX_CONCURRENT_PER_LINK):
            link.resume_reading()

    def _spawn(self, link: Link, msg: Any, h: Handler, batch: _Batch) -> None:
        batch.hold()
        link.running += 1
        task = asyncio.get_running_loop().create_task(self._run_spawned(link, msg, h, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._over_budget(link):
            link.pause_reading()

    async def _run_spawned(self, link: Link, msg: Any, h: Handler, batch: _Batch) -> None:
        try:
            await self._run_one(link, msg, h)
        finally:
            link.running -= 1
            batch.release()
            waiter = link.slot_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            self._maybe_resume(link)

    def _start(self, link: Link, msg: Any, h: Handler) -> None:
        """An async handler, nothing queued ahead of it: run it here, like a sync one,
        until it completes or suspends (no task for the common handler that never
        waits); one that suspends goes on first in the link's inbox task."""
        is_send = msg[0] == _SEND
        try:
            coro = h.fn(msg[2] if is_send else msg[3], link.peer_obj)  # type: ignore[arg-type]
            if not isinstance(coro, types.CoroutineType):  # an async __call__'s awaitable...
                coro = _value(coro)
            done, result = self._starter.start(coro)
        except (Exception, asyncio.CancelledError) as exc:
            self._failed(link, msg, exc)
        else:
            if not done:
                self._queue(link, msg, result)
            elif not is_send:
                self._reply(link, msg[1], result)

    def _queue(self, link: Link, msg: Any,
               started: Suspended | None = None) -> None:
        """Queue behind the link's running handler; stop reading the link while the
        queue is over budget (TCP backpressure reaches the sender), resume when it drains.
        ``started``: ``msg``'s handler already ran up to its first suspension (the inbox
        was empty); the inbox task finishes it first."""
        batch = self._batch(link)
        batch.hold()
        link.inbox.append((msg, batch))
        if link.inbox_task is None:
            task = link.inbox_task = asyncio.get_running_loop().create_task(self._drain_inbox(link, started))
            self._tasks.add(task)  # the node's close cancels it, whatever became of the link
            task.add_done_callback(self._tasks.discard)
        if self._over_budget(link):
            link.pause_reading()

    async def _drain_inbox(self, link: Link,
                           started: Suspended | None = None) -> None:
        inbox = link.inbox
        handlers = self.handlers
        try:
            if started is not None:
                msg, batch = inbox[0]
                await self._run_one(link, msg, None, started)
                inbox.popleft()
                batch.release()
                self._maybe_resume(link)
            while inbox:
                msg, batch = inbox[0]
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
                        batch.release()
                        self._maybe_resume(link)
                        continue
                elif link.paused:
                    await link.drain()  # a CALL: answer only once the peer reads again
                topic = msg[1] if msg[0] == p.SEND else msg[2]
                h = handlers.get(topic)
                if h is None:
                    self._unknown(link, msg)
                elif h.concurrent:
                    while link.running >= MAX_CONCURRENT_PER_LINK:
                        link.slot_waiter = asyncio.get_running_loop().create_future()
                        await link.slot_waiter
                    inbox.popleft()
                    self._spawn(link, msg, h, batch)
                    batch.release()  # the spawned task holds the batch now
                    continue
                else:
                    await self._run_one(link, msg, h)
                inbox.popleft()
                batch.release()
                self._maybe_resume(link)
        except PeerUnavailable:
            pass  # the link closed while we waited to answer: link_closed clears the rest
        finally:
            link.inbox_task = None
            link.slot_waiter = None
            self._maybe_resume(link)

    async def _run_one(self, link: Link, msg: Any, h: Handler | None,
                       started: Suspended | None = None) -> None:
        is_send = msg[0] == p.SEND
        try:
            r: Any
            if started is not None:
                r = resume(started)
            else:
                assert h is not None
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
            self._reply_error(link, msg[1], exc)

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
        target = link if link.state is LINK_OPEN else self._reply_link(link)
        if target is None:
            return  # the caller's link is gone; it got PeerUnavailable
        try:
            target.write([p.REPLY, call_id, True, result])
        except (TypeError, ValueError) as exc:  # ValueError: MessageTooLarge
            self._reply_error(link, call_id, exc, prefix="reply cannot be sent: ")

    def _reply_error(self, link: Link, call_id: int, exc: BaseException, prefix: str = "") -> None:
        """Answer a call with the handler's exception: its type name and message (cut
        to ``MAX_ERROR_CHARS``), never a traceback."""
        target = self._reply_link(link)
        if target is not None:
            text = prefix + str(exc)
            if len(text) > MAX_ERROR_CHARS:
                text = text[:MAX_ERROR_CHARS - 3] + "..."
            target.write([p.REPLY, call_id, False, [type(exc).__name__, text]])

    def _unknown(self, link: Link, msg: Any) -> None:
        self.unknown_topic += 1
        topic = msg[1] if msg[0] == p.SEND else msg[2]
        # keyed by the (authenticated) peer, not by the topic it chose
        log_limited(log, self._log_limit, ("unknown-topic", link.name), logging.WARNING,
                    "%s: message for topic %s, which has no handler (%d so far)",
                    link.name, p.shorten(topic), self.unknown_topic)
        if msg[0] == p.CALL:
            self._reply_error(link, msg[1], LookupError(f"no handler for topic {p.shorten(topic)}"))

    def _handler_failed(self, topic: str, exc: BaseException) -> None:
        """A handler raised: the first time per topic per minute at ERROR with its
        traceback, then one DEBUG line each (a peer can make a handler fail at will)."""
        self.handler_errors += 1
        if self._log_limit.allow(("handler", topic)):
            log.error("handler for topic %r raised (%d handler errors so far)", topic,
                      self.handler_errors, exc_info=exc)
        else:
            log.debug("handler for topic %r raised %s", topic, type(exc).__name__)

    # -- link lifecycle --------------------------------------------------------------
    def link_closed(self, link: Link, peer_remains: bool = False) -> None:
        """Fail every call waiting on ``link`` at once. If the peer is gone, its queued
        messages go and a handler still running for it is cancelled; if it is still
        linked (``link`` was a retired duplicate), they are handled as usual - replies
        take the surviving link."""
        calls, link.calls = link.calls, {}
        name = link.name
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(PeerUnavailable(name, "link closed before the reply"))
        if peer_remains:
            return
        if link.inbox_task is not None:
            link.inbox_task.cancel()
        link.inbox.clear()

    async def close(self) -> None:
        if self._deadlines is not None:
            self._deadlines.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
