"""Presence: who is where, cluster-wide (like Phoenix.Presence / Phoenix.Tracker on
Distributed Erlang). Built only on the Node's public API; the state is the sans-I/O
CRDT of ``presence_state.py``. Nothing below imports it; ``import peerlink`` does not.

Usage::

    presence = peerlink.Presence(node)
    async with node, presence:
        with presence.track("room:lobby", "ana", {"device": "phone"}):
            presence.list("room:lobby")     # {"ana": [PresenceMeta(node, ref, meta)], ...}
        async for diff in presence.subscribe("room:lobby"):   # Diff(topic, joins, leaves)
            ...

Replication: each node writes only its own entries. Its writes go to every peer as
deltas (coalesced per loop iteration); when a link forms each side sends its whole
state. The merge is a CRDT, so order, duplicates and resends do not matter. A node
holds the entries of the peers it is linked to, and drops a peer's entries (one diff
per topic) when the peer leaves: at once, or for a lost connection / heartbeat timeout
after ``grace`` seconds if it has not come back by then (``grace=0``, the default,
removes at once). A restarted node is a new incarnation: its old entries go at once and
never come back.

Wire format (node topic ``"peerlink.presence"``; meta travels as msgpack bytes)::

    [0, sync_id, [dot, topic, key, meta, ...]]   a part of a whole state (at least one)
    [1, sync_id, clock]                          its end, as a call: the state covers dots
                                                 1..clock; the answer says if it was applied
    [2, [dot, topic, key, meta, ...], [dot, ...], clock]   a delta: written, removed, clock
    [3]                                          "I miss some of your writes: whole state please"
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import gc
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._feed import Callback, Feed
from ._log import RateLimiter, log_limited
from ._peerwatch import PeerWatch
from .errors import CallTimeout, NodeClosed, PeerUnavailable, RemoteError
from .events import LeaveReason, Peer
from .presence_state import (
    Change,
    Context,
    Kernel,
    Limits,
    Origin,
    PresenceState,
    decode_dots,
    decode_entries,
    encode_entries,
    pack_meta,
    unpack_meta,
)

if TYPE_CHECKING:
    from .node import Node

__all__ = ["Diff", "DiffSubscription", "Presence", "PresenceMeta", "Tracked"]

log = logging.getLogger(__name__)

TOPIC = "peerlink.presence"
_PART, _END, _DELTA, _RESYNC = 0, 1, 2, 3
SYNC_ATTEMPTS = 10  # whole states sent to one peer before giving up until it links again
SYNC_TIMEOUT = 5.0  # seconds to wait for a peer to apply our whole state
PART_ENTRIES = 4096  # entries per message (a few hundred KiB, far below max_frame)
_CURRENT_TASK: Any = object()


@dataclass(frozen=True, slots=True)
class PresenceMeta:
    """One presence of a key: where it lives, a cluster-unique ref, and its meta."""

    node: str
    ref: str
    meta: Any


@dataclass(frozen=True, slots=True)
class Diff:
    """What changed in ``topic`` since the previous diff: key -> metas."""

    topic: str
    joins: dict[str, list[PresenceMeta]]
    leaves: dict[str, list[PresenceMeta]]


@contextlib.contextmanager
def _gc_paused(entries: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while a large state is merged: the merge makes
    no cycles, and collections triggered by its allocations would scan the whole heap
    again and again (measured: two thirds of the merge time with 100k entries held)."""
    if entries < 256 or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop: nothing owns it
        return None


def _ref(origin: Origin, dot: int) -> str:
    return f"{origin[1]}.{dot}"


class DiffSubscription(Feed[Diff]):
    """Diffs of one topic, coalesced: while the consumer is busy, changes merge into
    one pending diff (a join and a leave of the same entry cancel out), so memory is
    bounded by the topic's size, however slow the consumer."""

    def __init__(self, presence: Presence, topic: str) -> None:
        super().__init__()
        self.presence = presence
        self.topic = topic
        self._joins: dict[tuple[Origin, int], tuple[str, bytes]] = {}
        self._leaves: dict[tuple[Origin, int], tuple[str, bytes]] = {}

    def _add(self, change: Change) -> None:
        dot = (change.origin, change.dot)
        if change.joined:
            if self._leaves.pop(dot, None) is None:  # back before anyone saw it go
                self._joins[dot] = (change.entry.key, change.entry.raw)
        elif self._joins.pop(dot, None) is None:
            self._leaves[dot] = (change.entry.key, change.entry.raw)

    def _pop(self) -> Diff | None:
        if not self._joins and not self._leaves:
            return None
        joins, leaves = self._joins, self._leaves
        self._joins, self._leaves = {}, {}
        return Diff(self.topic, _group(joins), _group(leaves))

    def _unregister(self) -> None:
        self.presence._unsubscribe(self)


def _group(items: dict[tuple[Origin, int], tuple[str, bytes]]) -> dict[str, list[PresenceMeta]]:
    out: dict[str, list[PresenceMeta]] = {}
    for (origin, dot), (key, raw) in items.items():
        out.setdefault(key, []).append(PresenceMeta(origin[0], _ref(origin, dot), unpack_meta(raw)))
    return out


class Tracked:
    """A presence this node tracks. ``update(meta)``, ``untrack()``; as a context
    manager (``with`` or ``async with``) it untracks when the block ends."""

    def __init__(self, presence: Presence, topic: str, key: str, dot: int) -> None:
        self.presence = presence
        self.topic = topic
        self.key = key
        self.dot: int | None = dot
        self._owner: asyncio.Task[Any] | None = None

    @property
    def ref(self) -> str | None:
        return None if self.dot is None else _ref(self.presence.state.me, self.dot)

    def update(self, meta: Any) -> None:
        """Replace the meta (others see a leave of the old meta and a join of the new)."""
        if self.dot is None:
            raise ValueError(f"{self.key!r} in {self.topic!r} is no longer tracked")
        self.dot = self.presence._update(self.dot, meta)

    def untrack(self) -> None:
        """Stop tracking (idempotent)."""
        if self.dot is not None:
            dot, self.dot = self.dot, None
            self.presence._untrack(self, dot)

    def __enter__(self) -> Tracked:
        return self

    def __exit__(self, *exc: object) -> None:
        self.untrack()

    async def __aenter__(self) -> Tracked:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.untrack()

    def __repr__(self) -> str:
        return f"<Tracked {self.topic!r}/{self.key!r} ref={self.ref}>"


class Presence:
    """Cluster-wide presence over ``node``'s links.

    Args:
        node: the Node (started or not; the handler is registered now).
        grace: seconds a peer's entries stay after it was lost through a broken
            connection or a heartbeat timeout (a short partition); if it comes back
            within them, its full state reconciles what changed. 0 (default): removed
            at once. A peer that shut down or restarted is always removed at once.
        limits: what one peer may make this node hold (``presence_state.Limits``).

    Start with ``async with presence`` or ``await presence.start()``.
    """

    def __init__(self, node: Node, *, grace: float = 0.0, limits: Limits | None = None) -> None:
        if grace < 0:
            raise ValueError("grace must be >= 0 seconds")
        self.node = node
        self.grace = grace
        self.limits = limits = limits or Limits()
        self.state = PresenceState((node.name, node.incarnation), limits)
        self._subs: dict[str, builtins.list[DiffSubscription]] = {}
        self._tracked: dict[int, Tracked] = {}  # our dot -> handle
        self._flusher: asyncio.Task[None] | None = None
        self._syncs: dict[str, asyncio.Task[None]] = {}  # peer name -> its sync being sent
        self._incoming: dict[Origin, tuple[int, dict[int, Any]]] = {}  # syncs arriving in parts
        self._grace_timers: dict[Origin, asyncio.TimerHandle] = {}
        self._sync_ids = itertools.count(1)
        self._watch = PeerWatch(node, self._peer_up, self._peer_down, "presence")
        self._log_limit = RateLimiter(60.0)
        self._changed = asyncio.Event()  # set whenever the view changes (see wait)
        self.stats = {"rejected": 0, "resyncs": 0}
        self._asked: set[Origin] = set()  # origins we asked for a whole state
        node.handler(TOPIC)(self._on_message)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._watch.start()

    async def close(self) -> None:
        """Stop replicating and end every diff subscription (tracked entries stay
        until the node closes: peers drop them when it leaves)."""
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()
        await self._watch.close()
        tasks = [*self._syncs.values(), *(t for t in [self._flusher] if t is not None)]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for timer in self._grace_timers.values():
            timer.cancel()

    async def __aenter__(self) -> Presence:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- local writes ------------------------------------------------------------------
    def track(self, topic: str, key: str, meta: Any = None, *, owner: Any = _CURRENT_TASK) -> Tracked:
        """Track ``key`` in ``topic`` on this node with ``meta`` (a msgpack value of at
        most ``limits.max_meta`` bytes packed). Untracked when the returned handle's
        block ends, when ``untrack`` is called, or when ``owner`` (default: the current
        task, if any; None: no owner) finishes."""
        self._check_name(topic, "topic")
        self._check_name(key, "key")
        dot, changes = self.state.add(topic, key, self._pack(meta))
        handle = Tracked(self, topic, key, dot)
        self._tracked[dot] = handle
        task = _current_task() if owner is _CURRENT_TASK else owner
        if task is not None:
            handle._owner = task
            task.add_done_callback(lambda _: handle.untrack())
        self._wrote(changes)
        return handle

    def update(self, topic: str, key: str, meta: Any) -> int:
        """Update every presence of ``key`` in ``topic`` tracked on this node; returns
        how many (KeyError if none)."""
        handles = self._mine(topic, key)
        for h in handles:
            h.update(meta)
        return len(handles)

    def untrack(self, topic: str, key: str) -> int:
        """Untrack every presence of ``key`` in ``topic`` tracked on this node; returns
        how many (0 if none)."""
        handles = self._mine(topic, key, missing_ok=True)
        for h in handles:
            h.untrack()
        return len(handles)

    def _mine(self, topic: str, key: str, *, missing_ok: bool = False) -> builtins.list[Tracked]:
        found = [h for h in self._tracked.values() if h.topic == topic and h.key == key]
        if not found and not missing_ok:
            raise KeyError(f"{key!r} is not tracked in {topic!r} on this node")
        return found

    def _update(self, dot: int, meta: Any) -> int:
        new, changes = self.state.update(dot, self._pack(meta))
        self._tracked[new] = self._tracked.pop(dot)
        self._wrote(changes)
        return new

    def _untrack(self, handle: Tracked, dot: int) -> None:
        self._tracked.pop(dot, None)
        self._wrote(self.state.remove(dot))

    def _pack(self, meta: Any) -> bytes:
        raw = pack_meta(meta)
        if len(raw) > self.limits.max_meta:
            raise ValueError(f"meta of {len(raw)} bytes packed exceeds {self.limits.max_meta}")
        return raw

    def _check_name(self, value: Any, what: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"{what} must be a str, not {type(value).__name__}")
        if not 0 < len(value) <= self.limits.max_name:
            raise ValueError(f"{what} must have 1..{self.limits.max_name} characters")

    def _wrote(self, changes: builtins.list[Change]) -> None:
        self._publish(changes)
        if self._flusher is None or self._flusher.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # not running: peers get our whole state when they link
            self._flusher = loop.create_task(self._flush(), name="peerlink-presence-deltas")

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # coalesce the writes of this loop iteration
        while (taken := self.state.take_delta()) is not None:
            delta, whole = taken
            if whole:  # the delta grew too large: our whole state instead, to everyone
                for peer in list(self.node.peers.values()):
                    self._sync_to(peer, restart=True)
                continue
            try:
                for msg in _delta_messages(delta, self.state.clock):
                    await self.node.broadcast(TOPIC, msg)
            except NodeClosed:
                return  # peers get our whole state when they link

    # -- reading -----------------------------------------------------------------------
    def list(self, topic: str) -> dict[str, builtins.list[PresenceMeta]]:
        """The cluster-wide view of ``topic``: key -> its presences (this node's and
        those of every peer it is linked to)."""
        keys = self.state.view.get(topic, {})
        return {key: [PresenceMeta(o[0], _ref(o, d), unpack_meta(raw)) for (o, d), raw in metas.items()]
                for key, metas in keys.items()}

    def topics(self) -> builtins.list[str]:
        return list(self.state.view)

    def subscribe(self, topic: str, callback: Callback | None = None) -> DiffSubscription:
        """Diffs of ``topic`` from now on (registered at once; read ``list(topic)`` in
        the same step for the starting point). Iterate it, or pass ``callback(diff)``."""
        sub = DiffSubscription(self, topic)
        self._subs.setdefault(topic, []).append(sub)
        if callback is not None:
            sub._drive(callback, f"presence {topic[:64]!r}")
        return sub

    def _unsubscribe(self, sub: DiffSubscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.topic]

    def _publish(self, changes: builtins.list[Change]) -> None:
        if not changes:
            return
        self._changed.set()
        if not self._subs:
            return
        for change in changes:
            for sub in self._subs.get(change.entry.topic, ()):
                sub._add(change)
        for subs in self._subs.values():
            for sub in subs:
                sub._wake()

    async def wait(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Wait until ``predicate()`` holds, re-checked after every change of the view
        (``TimeoutError`` after ``timeout`` s)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                # safe to clear: nothing changes between the check and the wait
                self._changed.clear()
                await self._changed.wait()

    # -- replication -------------------------------------------------------------------
    def _peer_up(self, peer: Peer) -> None:
        origin = (peer.name, peer.incarnation)
        self._cancel_grace(origin)
        try:
            self._publish(self.state.admit(origin))
        except ValueError:
            return  # a retired incarnation (cannot be linked; defensive)
        self._sync_to(peer, restart=True)

    def _sync_to(self, peer: Peer, *, restart: bool) -> None:
        """Send our whole state to ``peer`` in a task of its own (``restart``: abandon
        one in progress and start from a fresh snapshot)."""
        old = self._syncs.get(peer.name)
        if old is not None and not old.done():
            if not restart:
                return
            old.cancel()
        task = asyncio.get_running_loop().create_task(
            self._send_state(peer), name=f"peerlink-presence-sync-{peer.name[:32]}")
        self._syncs[peer.name] = task
        task.add_done_callback(lambda t: self._syncs.pop(peer.name, None) if self._syncs.get(peer.name) is t else None)

    def _peer_down(self, peer: Peer, reason: LeaveReason) -> None:
        origin = (peer.name, peer.incarnation)
        self._incoming.pop(origin, None)
        self._asked.discard(origin)
        for_good = reason in (LeaveReason.SHUTDOWN, LeaveReason.RESTARTED)
        log.debug("%s left (%s): %s", peer.name, reason.value,
                  f"kept for {self.grace:g} s" if self.grace > 0 and not for_good else "entries dropped")
        if self.grace > 0 and not for_good:
            if origin not in self._grace_timers:
                self._grace_timers[origin] = asyncio.get_running_loop().call_later(
                    self.grace, self._grace_over, origin)
            return
        self._publish(self.state.drop_origin(origin, for_good=for_good))

    def _grace_over(self, origin: Origin) -> None:
        self._grace_timers.pop(origin, None)
        now = self.node.peers.get(origin[0])
        if now is None or now.incarnation != origin[1]:
            self._publish(self.state.drop_origin(origin, for_good=False))

    def _cancel_grace(self, origin: Origin) -> None:
        timer = self._grace_timers.pop(origin, None)
        if timer is not None:
            timer.cancel()

    async def _send_state(self, peer: Peer) -> None:
        """Our whole state to ``peer``: one or more parts (at least one, so an empty
        state is announced too), then the end as a call, so we know it was applied; if
        the peer lacked parts (lost on a link that was swapped) or did not answer, the
        whole state is sent again, while the same incarnation is linked. One task per
        peer (``_sync_to``): the parts of two states never interleave on a link."""
        for attempt in range(1, SYNC_ATTEMPTS + 1):
            now = self.node.peers.get(peer.name)
            if now is None or now.incarnation != peer.incarnation:
                return  # it left: it gets our state again when it is back
            sync_id = next(self._sync_ids)
            try:
                state = self.state.snapshot()
                items = list(state.entries.items())
                for start in range(0, max(1, len(items)), PART_ENTRIES):
                    await self.node.send(peer, TOPIC, [_PART, sync_id, encode_entries(items[start:start + PART_ENTRIES])])
                applied = await self.node.call(peer, TOPIC, [_END, sync_id, state.ctx.top], timeout=SYNC_TIMEOUT)
            except (PeerUnavailable, NodeClosed) as exc:
                log.debug("whole state #%d not sent to %s: %s", sync_id, peer.name, exc)
                return
            except (CallTimeout, RemoteError) as exc:
                applied = False
                log.debug("whole state #%d to %s: %s", sync_id, peer.name, exc)
            if applied is True:
                log.debug("whole state #%d (%d entries) applied by %s", sync_id, len(items), peer.name)
                return
            log_limited(log, self._log_limit, ("resend", peer.name), logging.WARNING,
                        "%s did not apply our whole state #%d (attempt %d of %d); sending it again",
                        peer.name[:64], sync_id, attempt, SYNC_ATTEMPTS)

    def _on_message(self, msg: Any, sender: Peer) -> bool | None:
        """A message of ours from ``sender``; for the end of a whole state (a call) the
        answer says whether it was applied."""
        size = max((len(x) for x in msg if x.__class__ is list), default=0) if msg.__class__ is list else 0
        with _gc_paused(size // 4):
            return self._handle(msg, sender)

    def _handle(self, msg: Any, sender: Peer) -> bool | None:
        origin = (sender.name, sender.incarnation)
        try:
            if msg.__class__ is not list or not msg:
                raise ValueError("expected a non-empty list")
            kind = msg[0]
            if kind == _RESYNC:  # it found a gap in what we sent: our whole state again
                self._sync_to(sender, restart=False)
                return None
            clock = None
            if kind == _DELTA:
                _, flat, dots, clock = msg
                entries = decode_entries(flat, self.limits)
                removed = decode_dots(dots, 4 * PART_ENTRIES)
                if clock.__class__ is not int or clock < 0:
                    raise ValueError("a delta's clock must be an int")
                kernel = Kernel(Context.of([*entries, *removed]), entries)
            elif kind in (_PART, _END):
                _, sync_id, body = msg
                kernel_or_none = self._assemble(origin, kind, sync_id, body)
                if kernel_or_none is None:
                    return False if kind == _END else None
                kernel = kernel_or_none
            else:
                raise ValueError(f"unknown presence message kind {kind!r}")
            self._cancel_grace(origin)
            changes = self.state.admit(origin)
            changes += self.state.merge(origin, kernel, self._subs)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            self.stats["rejected"] += 1
            log_limited(log, self._log_limit, ("bad", sender.name), logging.WARNING,
                        "%s sent presence data we refuse (dropped): %s", sender.name[:64], str(exc)[:200])
            return False
        self._publish(changes)
        self._changed.set()  # also for changes of topics nobody subscribes to
        if clock is not None:
            if clock:  # 0: a part of a delta whose last part comes next (see _delta_messages)
                self._check_gap(origin, clock, sender)
        else:
            self._asked.discard(origin)
        return True

    def _check_gap(self, origin: Origin, clock: int, sender: Peer) -> None:
        """After a delta: if some of the sender's writes up to ``clock`` never reached
        us (lost with a link that was swapped), ask it for its whole state, once."""
        state = self.state.origins.get(origin)
        if state is None or (state.ctx.top >= clock and not state.ctx.extra) or origin in self._asked:
            return
        self._asked.add(origin)
        self.stats["resyncs"] += 1
        try:
            if not self.node.send_nowait(sender, TOPIC, [_RESYNC]):
                self._asked.discard(origin)  # the link is busy: the next delta asks again
        except (PeerUnavailable, NodeClosed):
            self._asked.discard(origin)

    def _assemble(self, origin: Origin, kind: Any, sync_id: Any, body: Any) -> Kernel | None:
        if sync_id.__class__ is not int:
            raise ValueError("sync id must be an int")
        current = self._incoming.get(origin)
        if kind == _END and (current is None or current[0] != sync_id):
            return None  # the end of a state whose parts we dropped: ignore it
        if current is None or current[0] != sync_id:  # a new state replaces an unfinished one
            current = self._incoming[origin] = (sync_id, {})
        parts = current[1]
        if kind == _PART:
            parts.update(decode_entries(body, self.limits))
            if len(parts) > self.limits.max_entries:
                del self._incoming[origin]
                raise ValueError(f"a state of more than {self.limits.max_entries} entries")
            return None
        del self._incoming[origin]
        if body.__class__ is not int or body < 0 or any(d > body for d in parts):
            raise ValueError("a state's clock must cover its entries")
        log.debug("whole state #%d (%d entries) received from %s", sync_id, len(parts), origin[0][:64])
        return Kernel(Context(body), parts)

    def status(self) -> dict[str, Any]:
        """Entries held per node, topics, subscribers and counters."""
        return {
            "entries": {o[0]: len(k.entries) for o, k in self.state.origins.items()},
            "topics": len(self.state.view),
            "subscribers": sum(len(s) for s in self._subs.values()),
            "in_grace": sorted(o[0] for o in self._grace_timers),
            **self.stats,
        }

    def __repr__(self) -> str:
        return f"<Presence {self.node.name} tracked={len(self._tracked)} topics={len(self.state.view)}>"


def _delta_messages(delta: Kernel, clock: int) -> list[list[Any]]:
    """A delta as messages of at most PART_ENTRIES entries (and 4x as many removed dots);
    each is a valid delta of its own. The last carries our clock (a receiver that finds a
    gap below it asks for our whole state); the others carry 0, "more of this delta
    follows": checked after one of them, the rest of the delta would look missing and
    every receiver of a large burst would ask for our whole state on top of it."""
    entries = list(delta.entries.items())
    removed = [d for d in [*range(1, delta.ctx.top + 1), *delta.ctx.extra] if d not in delta.entries]
    out: list[list[Any]] = []
    while entries or removed or not out:
        chunk, entries = entries[:PART_ENTRIES], entries[PART_ENTRIES:]
        dots, removed = removed[:4 * PART_ENTRIES], removed[4 * PART_ENTRIES:]
        out.append([_DELTA, encode_entries(chunk), dots, 0])
    out[-1][3] = clock
    return out

