"""PubSub: topic-based publish/subscribe across the cluster, on the node's links (like
Phoenix.PubSub on Distributed Erlang). Built only on the Node's public API (handlers,
``send_nowait``/``send``, ``broadcast``, ``events()``, ``peers``); nothing below
imports it, and ``import peerlink`` does not import it.

Usage::

    pubsub = peerlink.PubSub(node)
    async with node, pubsub:
        sub = pubsub.subscribe("room:lobby")            # registered now
        await pubsub.publish("room:lobby", {"text": "hi"})
        async for item in sub:                          # Message or MessagesLost
            ...

Semantics (docs/pubsub-presence.md has the whole story):

* ``publish`` reaches every subscriber of the topic on every node, this one included;
  ``publish_from`` skips one local subscription (the publisher's own);
  ``local_publish`` stays on this node.
* A message crosses each link **at most once**, and only to nodes with at least one
  subscriber: subscription *interest* is replicated (versioned per topic, so any
  arrival order converges) and sent whole to every peer when its link forms.
* Per publisher, messages arrive at every subscriber in publish order (a sequence
  number drops the rare message overtaken while two links to one peer swap over).
* A subscriber's queue is bounded: when full, newer messages are dropped and the
  subscriber receives one ``MessagesLost(count)`` marker where the gap is. Links never
  wait for subscribers.

Wire format (node topics reserved for this module, see ``RESERVED_PREFIX``)::

    "peerlink.pubsub.msg"       [topic, seq, message]
    "peerlink.pubsub.interest"  [0, version, [topic, ...], final]   whole interest (in parts)
                                [1, [[topic, interested, version], ...]]   changes
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._feed import Callback, Feed
from ._log import RateLimiter, log_limited
from ._peerwatch import PeerWatch
from .errors import NodeClosed, PeerUnavailable
from .events import LeaveReason, Peer

if TYPE_CHECKING:
    from .node import Node

__all__ = ["RESERVED_PREFIX", "Message", "MessagesLost", "PubSub", "TopicSubscription"]

log = logging.getLogger(__name__)

#: Node handler topics starting with this are reserved for peerlink's own layers.
RESERVED_PREFIX = "peerlink."
MSG_TOPIC = "peerlink.pubsub.msg"
INTEREST_TOPIC = "peerlink.pubsub.interest"
_SYNC, _CHANGES = 0, 1
_SYNC_PART = 4096  # topics per interest-sync message


@dataclass(frozen=True, slots=True)
class Message:
    """A published message as a subscriber receives it."""

    topic: str
    data: Any
    publisher: str  # the node name it was published on


@dataclass(frozen=True, slots=True)
class MessagesLost:
    """Marker: this subscriber's queue was full and ``dropped`` messages of ``topic``
    were discarded here (at this point of the stream)."""

    topic: str
    dropped: int


class TopicSubscription(Feed["Message | MessagesLost"]):
    """One subscriber of one topic on this node: an async iterator of ``Message`` and
    ``MessagesLost`` items (or a callback, see ``PubSub.subscribe``). Holds at most
    ``maxsize`` messages plus one loss marker."""

    def __init__(self, pubsub: PubSub, topic: str, maxsize: int) -> None:
        super().__init__()
        self.pubsub = pubsub
        self.topic = topic
        self.maxsize = maxsize
        self.dropped = 0  # in total, over the subscription's life
        self._queue: collections.deque[Message | MessagesLost] = collections.deque()

    def _put(self, message: Message) -> None:
        q = self._queue
        if len(q) < self.maxsize:
            q.append(message)
        else:
            self.dropped += 1
            last = q[-1] if q else None
            if isinstance(last, MessagesLost):
                q[-1] = MessagesLost(self.topic, last.dropped + 1)
            else:
                q.append(MessagesLost(self.topic, 1))
        self._wake()

    def _pop(self) -> Message | MessagesLost | None:
        return self._queue.popleft() if self._queue else None

    def _unregister(self) -> None:
        self.pubsub._remove(self)

    def __repr__(self) -> str:
        return f"<TopicSubscription {self.topic!r} queued={len(self._queue)} dropped={self.dropped}>"


class _Interest:
    """What one peer (one incarnation) is subscribed to, as it told us."""

    __slots__ = ("incarnation", "pending", "topics", "wildcard")

    def __init__(self, incarnation: str) -> None:
        self.incarnation = incarnation
        self.topics: dict[str, tuple[bool, int]] = {}  # topic -> (interested, version)
        self.pending: set[str] = set()  # a sync arriving in parts
        self.wildcard = False  # it told us more than we keep: it gets everything


class PubSub:
    """Cluster publish/subscribe over ``node``'s links.

    Args:
        node: the Node (started or not; handlers are registered now).
        queue_size: default bound of a subscriber's queue (messages).
        max_remote_topics: topics kept per peer; a peer subscribed to more is sent
            every message (its node filters), so memory stays bounded.
        max_topic: longest topic accepted, in characters.

    Start with ``async with pubsub`` or ``await pubsub.start()`` (one task that follows
    membership); ``close()`` ends every subscription.
    """

    def __init__(self, node: Node, *, queue_size: int = 1024, max_remote_topics: int = 100_000,
                 max_topic: int = 1024) -> None:
        if queue_size < 1 or max_remote_topics < 1 or max_topic < 1:
            raise ValueError("queue_size, max_remote_topics and max_topic must be >= 1")
        self.node = node
        self.queue_size = queue_size
        self.max_remote_topics = max_remote_topics
        self.max_topic = max_topic
        self._local: dict[str, list[TopicSubscription]] = {}
        self._version = 0  # of our interest; bumped by every change
        self._changes: dict[str, tuple[bool, int]] = {}  # not yet announced
        self._announcer: asyncio.Task[None] | None = None
        self._remote: dict[str, _Interest] = {}  # peer name -> its interest
        self._by_topic: dict[str, set[str]] = {}  # topic -> interested peer names
        self._wildcards: set[str] = set()
        self._interest_changed = asyncio.Event()
        self._seq = 0
        self._last_seq: dict[str, tuple[str, int]] = {}  # publisher -> (incarnation, seq)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watch = PeerWatch(node, self._peer_up, self._peer_down, "pubsub")
        self._log_limit = RateLimiter(60.0)
        self.stats = {"received": 0, "out_of_order": 0, "rejected": 0, "lost": 0}
        node.handler(MSG_TOPIC)(self._on_message)
        node.handler(INTEREST_TOPIC)(self._on_interest)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._watch.start()

    async def close(self) -> None:
        for subs in list(self._local.values()):
            for sub in list(subs):
                sub.close()
        await self._watch.close()
        if self._announcer is not None:  # let peers hear that our interest is gone
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._announcer), 1.0)
        tasks = [*self._tasks, *(t for t in [self._announcer] if t is not None)]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> PubSub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- subscribing -----------------------------------------------------------------------
    def subscribe(self, topic: str, callback: Callback | None = None, *,
                  maxsize: int | None = None) -> TopicSubscription:
        """Subscribe to ``topic`` (registered at once). Iterate the returned
        TopicSubscription, or pass ``callback(item)`` (sync or async; called one item at a
        time, in order, in one task; needs a running loop). Interest reaches the other
        nodes within one loop iteration plus a link round trip."""
        self._check_topic(topic)
        sub = TopicSubscription(self, topic, maxsize or self.queue_size)
        subs = self._local.setdefault(topic, [])
        subs.append(sub)
        if len(subs) == 1:
            self._announce(topic, True)
        if callback is not None:
            sub._drive(callback, f"pubsub {topic[:64]!r}")
            if sub._task is not None:
                self._tasks.add(sub._task)
                sub._task.add_done_callback(self._tasks.discard)
        return sub

    def unsubscribe(self, sub: TopicSubscription) -> None:
        """Same as ``sub.close()``."""
        sub.close()

    def _remove(self, sub: TopicSubscription) -> None:
        subs = self._local.get(sub.topic)
        if subs is None or sub not in subs:
            return
        subs.remove(sub)
        if not subs:
            del self._local[sub.topic]
            self._announce(sub.topic, False)

    def subscribers(self, topic: str) -> int:
        """Local subscribers of ``topic``."""
        return len(self._local.get(topic, ()))

    def interested_peers(self, topic: str) -> set[str]:
        """Peers that a ``publish`` to ``topic`` is sent to right now."""
        return set(self._by_topic.get(topic, ())) | self._wildcards

    async def wait_for_interest(self, topic: str, peers: int = 1, timeout: float | None = None) -> set[str]:
        """Wait until at least ``peers`` other nodes subscribe to ``topic`` (as this
        node knows); returns them. ``TimeoutError`` after ``timeout`` s."""
        async with asyncio.timeout(timeout):
            while len(found := self.interested_peers(topic)) < peers:
                await self._interest_changed.wait()
        return found

    # -- publishing ------------------------------------------------------------------------
    async def publish(self, topic: str, message: Any) -> None:
        """Deliver ``message`` to every subscriber of ``topic`` on every node, this one
        included. Sent once to each node that has a subscriber, none to the others.
        Waits only while a link is over its write high-water mark. TypeError if a
        remote subscriber exists and msgpack cannot carry ``message``."""
        await self._publish(topic, message, None)

    async def publish_from(self, sub: TopicSubscription, topic: str, message: Any) -> None:
        """``publish``, except to ``sub`` (the publisher's own subscription)."""
        await self._publish(topic, message, sub)

    def local_publish(self, topic: str, message: Any, *, exclude: TopicSubscription | None = None) -> int:
        """Deliver to this node's subscribers only; returns how many."""
        self._check_topic(topic)
        return self._deliver(Message(topic, message, self.node.name), exclude)

    async def _publish(self, topic: str, message: Any, exclude: TopicSubscription | None) -> None:
        self._check_topic(topic)
        names = self._by_topic.get(topic)
        if names or self._wildcards:
            targets = [*names] if names else []
            targets += [n for n in self._wildcards if not names or n not in names]
            self._seq += 1
            body = [topic, self._seq, message]
            node = self.node
            for name in targets:  # the first send raises TypeError before anything went
                try:
                    if not node.send_nowait(name, MSG_TOPIC, body):
                        await node.send(name, MSG_TOPIC, body)
                except PeerUnavailable:
                    continue  # it left: it learns of that through PeerLeft, not silence
        self._deliver(Message(topic, message, self.node.name), exclude)

    def _deliver(self, message: Message, exclude: TopicSubscription | None) -> int:
        subs = self._local.get(message.topic)
        if not subs:
            return 0
        n = 0
        for sub in subs:
            if sub is not exclude:
                sub._put(message)
                n += 1
        return n

    def _check_topic(self, topic: str) -> None:
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        if not 0 < len(topic) <= self.max_topic:
            raise ValueError(f"topic must have 1..{self.max_topic} characters")

    # -- receiving -------------------------------------------------------------------------
    def _on_message(self, body: Any, sender: Peer) -> None:
        try:
            if body.__class__ is not list:
                raise ValueError("expected [topic, seq, message]")
            topic, seq, data = body
            if topic.__class__ is not str or seq.__class__ is not int:
                raise ValueError("expected [topic, seq, message]")
        except (TypeError, ValueError) as exc:
            self._reject(sender, "message", exc)
            return
        last = self._last_seq.get(sender.name)
        if last is not None and last[0] == sender.incarnation and seq <= last[1]:
            self.stats["out_of_order"] += 1  # overtaken while two links swapped over
            return
        self._last_seq[sender.name] = (sender.incarnation, seq)
        self.stats["received"] += 1
        self._deliver(Message(topic, data, sender.name), None)

    def _on_interest(self, body: Any, sender: Peer) -> None:
        try:
            if body.__class__ is not list or not body:
                raise ValueError("expected a list")
            state = self._interest_of(sender)
            if body[0] == _SYNC:
                _, version, topics, final = body
                self._apply_sync(sender.name, state, self._int(version), topics, final is True)
            elif body[0] == _CHANGES:
                changes = body[1]
                if changes.__class__ is not list or len(changes) > _SYNC_PART:
                    raise ValueError("changes must be a list")
                for change in changes:
                    if change.__class__ is not list:
                        raise ValueError("a change must be [topic, interested, version]")
                    topic, interested, version = change
                    self._set(sender.name, state, self._topic(topic), interested is True,
                              self._int(version))
            else:
                raise ValueError(f"unknown interest message kind {body[0]!r}")
        except (TypeError, ValueError) as exc:
            self._reject(sender, "interest", exc)

    def _interest_of(self, peer: Peer) -> _Interest:
        state = self._remote.get(peer.name)
        if state is None or state.incarnation != peer.incarnation:
            self._forget(peer.name)
            state = self._remote[peer.name] = _Interest(peer.incarnation)
        return state

    def _apply_sync(self, name: str, state: _Interest, version: int, topics: Any,
                    final: bool) -> None:
        if topics.__class__ is not list or len(topics) > _SYNC_PART:
            raise ValueError("topics must be a list")
        for t in topics:
            state.pending.add(self._topic(t))
        if len(state.pending) > self.max_remote_topics:
            state.pending.clear()
            self._set_wildcard(name, state)
            return
        if not final:
            return
        pending, state.pending = state.pending, set()
        if state.wildcard:
            state.wildcard = False
            self._wildcards.discard(name)
            self._interest_moved()
        for topic in pending:
            self._set(name, state, topic, True, version)
        for topic, (_, v) in list(state.topics.items()):
            if v < version and topic not in pending:
                del state.topics[topic]
                self._index(name, topic, False)

    def _set(self, name: str, state: _Interest, topic: str, interested: bool, version: int) -> None:
        if state.wildcard:
            return  # it gets everything until a whole interest that fits replaces it
        old = state.topics.get(topic)
        if old is not None and old[1] >= version:
            return  # an older word than we have
        if old is None and len(state.topics) >= self.max_remote_topics:
            self._set_wildcard(name, state)
            return
        state.topics[topic] = (interested, version)
        self._index(name, topic, interested)

    def _set_wildcard(self, name: str, state: _Interest) -> None:
        log_limited(log, self._log_limit, ("wildcard", name), logging.WARNING,
                    "%s is subscribed to more than %d topics: sending it every message",
                    name[:64], self.max_remote_topics)
        for topic in state.topics:
            self._index(name, topic, False)
        state.topics.clear()
        state.wildcard = True
        self._wildcards.add(name)
        self._interest_moved()

    def _interest_moved(self) -> None:
        self._interest_changed.set()
        self._interest_changed = asyncio.Event()

    def _index(self, name: str, topic: str, interested: bool) -> None:
        self._interest_moved()
        if interested:
            self._by_topic.setdefault(topic, set()).add(name)
        else:
            names = self._by_topic.get(topic)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._by_topic[topic]

    def _forget(self, name: str) -> None:
        state = self._remote.pop(name, None)
        if state is not None:
            for topic in state.topics:
                self._index(name, topic, False)
        self._wildcards.discard(name)

    def _topic(self, value: Any) -> str:
        if value.__class__ is not str or not 0 < len(value) <= self.max_topic:
            raise ValueError(f"a topic must be a str of 1..{self.max_topic} characters")
        return str(value)

    @staticmethod
    def _int(value: Any) -> int:
        if value.__class__ is not int or value < 0:
            raise ValueError("expected a non-negative int")
        return int(value)

    def _reject(self, sender: Peer, what: str, exc: Exception) -> None:
        self.stats["rejected"] += 1
        log_limited(log, self._log_limit, ("bad", sender.name, what), logging.WARNING,
                    "%s sent a malformed pubsub %s (dropped): %s", sender.name[:64], what,
                    str(exc)[:200])

    # -- interest announcements ------------------------------------------------------------
    def _announce(self, topic: str, interested: bool) -> None:
        self._version += 1
        self._changes[topic] = (interested, self._version)
        if self._announcer is None or self._announcer.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # not running yet: peers get the whole interest when they link
            self._announcer = loop.create_task(self._announce_changes(), name="peerlink-pubsub-interest")

    async def _announce_changes(self) -> None:
        await asyncio.sleep(0)  # coalesce the changes of this loop iteration
        while self._changes:
            changes, self._changes = self._changes, {}
            items = [[t, i, v] for t, (i, v) in changes.items()]
            for start in range(0, len(items), _SYNC_PART):
                try:
                    await self.node.broadcast(INTEREST_TOPIC, [_CHANGES, items[start:start + _SYNC_PART]])
                except NodeClosed:
                    return  # peers get the whole interest when they link

    def _peer_up(self, peer: Peer) -> None:
        self._interest_of(peer)
        self._spawn(self._send_interest(peer), f"peerlink-pubsub-sync-{peer.name[:32]}")

    def _peer_down(self, peer: Peer, reason: LeaveReason) -> None:
        state = self._remote.get(peer.name)
        if state is not None and state.incarnation == peer.incarnation:
            self._forget(peer.name)
        last = self._last_seq.get(peer.name)
        if last is not None and last[0] == peer.incarnation:
            del self._last_seq[peer.name]

    async def _send_interest(self, peer: Peer) -> None:
        topics = list(self._local)
        version = self._version
        parts: Iterable[int] = range(0, len(topics), _SYNC_PART) if topics else [0]
        last = max(0, len(topics) - 1) // _SYNC_PART * _SYNC_PART
        try:
            for start in parts:
                await self.node.send(peer, INTEREST_TOPIC,
                                     [_SYNC, version, topics[start:start + _SYNC_PART], start == last])
        except (PeerUnavailable, NodeClosed):
            pass  # it left; it gets our interest again when it is back

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def status(self) -> dict[str, Any]:
        """Local topics, what each peer is subscribed to (counts), and counters."""
        return {
            "topics": {t: len(s) for t, s in self._local.items()},
            "peers": {n: ("*" if s.wildcard else sum(1 for i, _ in s.topics.values() if i))
                      for n, s in self._remote.items()},
            **self.stats,
            "lost": sum(s.dropped for subs in self._local.values() for s in subs),
        }

    def __repr__(self) -> str:
        return f"<PubSub {self.node.name} topics={len(self._local)} peers={len(self._remote)}>"
