"""Presence state as a delta-state CRDT, sans-I/O: no asyncio, no sockets, no clocks.
Imports nothing from peerlink but errors; ``presence.py`` drives it over the links.

Model (an "add-wins observed-remove" dot kernel, after Almeida et al., *Delta State
Replicated Data Types*, 2018):

* Each node incarnation is an **origin** ``(name, incarnation)`` and the only writer of
  its own entries. Every write it makes gets a fresh **dot** ``counter`` (1, 2, 3...):
  ``track`` creates an entry under a new dot, ``update`` replaces the entry's dot with
  a new one, ``untrack`` removes the dot.
* A replica of an origin holds ``entries`` (dot -> ``Entry``) and a **causal context**
  (every dot it has seen, compact as "all up to ``top``" plus a few ``extra``). An
  entry is removed when a replica has seen its dot but no longer holds it.
* ``join`` of two kernels keeps an entry iff both hold it, or one holds it and the
  other has not seen its dot; contexts are united. That is commutative, associative
  and idempotent, so deltas may arrive in any order, twice, or be lost and replaced by
  a later full state: every replica that got (the equivalent of) everything converges.

The owner's full state is a kernel whose context is ``1..clock``: a **sync**. A
**delta** carries the written entries and the dots it removed.

Origins come and go with links: ``drop_origin`` forgets an origin at once (its
entries leave), and the caller decides which origins are live (see ``presence.py``).
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import msgpack

__all__ = [
    "Change",
    "Context",
    "Entry",
    "Kernel",
    "Limits",
    "Origin",
    "PresenceState",
    "decode_dots",
    "decode_entries",
    "encode_entries",
    "pack_meta",
    "unpack_meta",
]

Origin: TypeAlias = tuple[str, str]  # (node name, incarnation); never a key on the wire
MAX_COUNTER = 2**63 - 1
DEPARTED_PER_NAME = 8  # retired incarnations remembered per node name...
DEPARTED_NAMES = 4096  # ...for this many names (a Deployment's pods get new names)


@dataclass(frozen=True, slots=True)
class Limits:
    """What a replica accepts from one peer (a message over a bound is dropped, logged)."""

    max_entries: int = 1_000_000
    """Entries one origin may hold at a replica."""
    max_name: int = 512
    """Characters in a topic or key."""
    max_meta: int = 4096
    """Bytes of one packed meta."""


class Entry(NamedTuple):
    """One tracked presence: ``key`` in ``topic`` with its meta, kept as msgpack bytes
    (compact, immutable, and sent as they are). A tuple: hundreds of thousands of them
    are built when a large state arrives."""

    topic: str
    key: str
    raw: bytes

    @property
    def meta(self) -> Any:
        return unpack_meta(self.raw)


class Change(NamedTuple):
    """One entry that appeared (``joined``) or disappeared at this replica."""

    joined: bool
    origin: Origin
    dot: int
    entry: Entry


class Context:
    """The dots of one origin a replica has seen: ``1..top`` plus ``extra``."""

    __slots__ = ("extra", "top")

    def __init__(self, top: int = 0, extra: Iterable[int] = ()) -> None:
        self.top = top
        self.extra: set[int] = set()
        for c in extra:
            self.add(c)

    @classmethod
    def of(cls, dots: Iterable[int]) -> Context:
        """The context of exactly ``dots`` (a delta's), compacted once."""
        ctx = cls()
        ctx.extra = set(dots)
        ctx._compact()
        return ctx

    def __contains__(self, dot: int) -> bool:
        return dot <= self.top or dot in self.extra

    def add(self, dot: int) -> None:
        if dot <= self.top:
            return
        if dot == self.top + 1:
            self.top = dot
            self._compact()
        else:
            self.extra.add(dot)

    def merge(self, other: Context) -> None:
        if other.top > self.top:
            self.top = other.top
            self.extra = {c for c in self.extra if c > self.top}
        for c in other.extra:
            self.add(c)
        self._compact()

    def _compact(self) -> None:
        extra = self.extra
        while extra and self.top + 1 in extra:
            self.top += 1
            extra.discard(self.top)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Context) and (self.top, self.extra) == (other.top, other.extra)

    def __repr__(self) -> str:
        return f"Context(top={self.top}, extra={sorted(self.extra)})"


class Kernel:
    """One origin's entries and causal context (a full state or a delta)."""

    __slots__ = ("ctx", "entries")

    def __init__(self, ctx: Context | None = None, entries: dict[int, Entry] | None = None) -> None:
        self.ctx = ctx if ctx is not None else Context()
        self.entries = entries if entries is not None else {}

    def copy(self) -> Kernel:
        return Kernel(Context(self.ctx.top, self.ctx.extra), dict(self.entries))

    def join(self, other: Kernel) -> tuple[list[tuple[int, Entry]], list[tuple[int, Entry]]]:
        """Merge ``other`` into this kernel; returns the (added, removed) entries."""
        mine, ctx, theirs, tctx = self.entries, self.ctx, other.entries, other.ctx
        top, extra = ctx.top, ctx.extra  # ``c not in ctx``, inlined: this runs per entry
        added = [(c, e) for c, e in theirs.items() if c not in mine and c > top and c not in extra]
        for c, e in added:
            mine[c] = e
        # what ``other`` has seen but no longer holds is gone; a small delta names its
        # dots, a full state covers a range: walk whichever side is smaller
        if tctx.top == 0 or tctx.top + len(tctx.extra) < len(mine):
            seen: Iterable[int] = [*range(1, tctx.top + 1), *tctx.extra]
            removed = [(c, mine[c]) for c in seen if c in mine and c not in theirs]
        else:
            removed = [(c, e) for c, e in mine.items() if c in tctx and c not in theirs]
        for c, _ in removed:
            del mine[c]
        ctx.merge(tctx)
        return added, removed

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Kernel) and (self.ctx, self.entries) == (other.ctx, other.entries)

    def __repr__(self) -> str:
        return f"Kernel({self.ctx!r}, {self.entries!r})"


class PresenceState:
    """One replica: its own origin (which it writes) and the origins it merges.

    Local writes return the new dot and queue a delta (``take_delta``); remote input
    goes through ``merge``; every method that changes what is visible returns the
    ``Change`` list, in order, for the caller's diffs. ``view`` indexes every visible
    entry by topic and key.
    """

    def __init__(self, me: Origin, limits: Limits = Limits()) -> None:
        self.me = me
        self.limits = limits
        self.own = Kernel()
        self.origins: dict[Origin, Kernel] = {me: self.own}
        self._pending = Kernel()  # the delta not yet taken
        self._pending_full = False  # the delta grew past a sync's size: send a sync
        self._live: dict[str, str] = {}  # name -> its live incarnation
        # name -> incarnations that shut down or were replaced (refused if they speak)
        self._departed: dict[str, collections.deque[str]] = {}
        # topic -> key -> (origin, dot) -> packed meta: what list() reads
        self.view: dict[str, dict[str, dict[tuple[Origin, int], bytes]]] = {}

    # -- local writes ------------------------------------------------------------------
    @property
    def clock(self) -> int:
        return self.own.ctx.top

    def add(self, topic: str, key: str, raw: bytes) -> tuple[int, list[Change]]:
        """Track a new entry (``raw``: its meta from ``pack_meta``); returns its dot."""
        dot = self.clock + 1
        entry = Entry(sys.intern(topic), key, raw)
        self.own.entries[dot] = entry
        self.own.ctx.add(dot)
        self._record(dot, entry)
        return dot, [self._show(self.me, dot, entry)]

    def update(self, dot: int, raw: bytes) -> tuple[int, list[Change]]:
        """Replace our entry ``dot`` by one with meta ``raw``; returns the new dot."""
        old = self.own.entries[dot]
        changes = self.remove(dot)
        new, added = self.add(old.topic, old.key, raw)
        return new, changes + added

    def remove(self, dot: int) -> list[Change]:
        entry = self.own.entries.pop(dot)
        self._record(dot, None)
        return [self._hide(self.me, dot, entry)]

    def _record(self, dot: int, entry: Entry | None) -> None:
        p = self._pending
        p.ctx.add(dot)
        if entry is None:
            p.entries.pop(dot, None)
        else:
            p.entries[dot] = entry
        # a delta that names more dots than a sync would carry entries is replaced by
        # a sync: memory stays bounded by our own state, however many writes queue up
        if len(p.ctx.extra) > 2 * len(self.own.entries) + 1024:
            self._pending_full = True
            self._pending = Kernel()

    def take_delta(self) -> tuple[Kernel, bool] | None:
        """The writes since the last call as one delta, and whether it is our whole
        state instead (a delta that grew too large); None: nothing new."""
        if self._pending_full:
            self._pending_full = False
            self._pending = Kernel()
            return self.own.copy(), True
        p = self._pending
        if not p.ctx.top and not p.ctx.extra:
            return None
        self._pending = Kernel()
        return p, False

    def snapshot(self) -> Kernel:
        """Our full state (a sync)."""
        return self.own.copy()

    # -- remote input ------------------------------------------------------------------
    def merge(self, origin: Origin, kernel: Kernel, watched: Container[str] | None = None) -> list[Change]:
        """Join a remote origin's sync or delta. Returns the changes (only those of
        topics in ``watched``, if given: nobody else needs them). Raises ValueError
        (nothing changed) if it would take the origin over ``limits.max_entries``."""
        if origin == self.me or self._live.get(origin[0]) != origin[1]:
            raise ValueError("entries of an origin that is not admitted")
        state = self.origins.get(origin)
        if state is None:
            state = self.origins[origin] = Kernel()
        if len(state.entries) + len(kernel.entries) > self.limits.max_entries:
            grown = sum(1 for c in kernel.entries if c not in state.entries)
            if len(state.entries) + grown > self.limits.max_entries:
                raise ValueError(f"more than {self.limits.max_entries} entries from one node")
        added, removed = state.join(kernel)
        changes = [self._hide(origin, c, e) for c, e in removed]
        if watched is not None:
            changes = [ch for ch in changes if ch.entry.topic in watched]
        view = self.view
        for c, e in added:  # _show, inlined: a large state brings many
            keys = view.get(e.topic)
            if keys is None:
                keys = view[e.topic] = {}
            metas = keys.get(e.key)
            if metas is None:
                metas = keys[e.key] = {}
            metas[(origin, c)] = e.raw
            if watched is None or e.topic in watched:
                changes.append(Change(True, origin, c, e))
        return changes

    def admit(self, origin: Origin) -> list[Change]:
        """Make ``origin`` the live incarnation of its name before merging from it: a
        newer incarnation retires the older one for good (its entries leave). Raises
        ValueError for an incarnation already retired: it never comes back."""
        name, incarnation = origin
        if incarnation in self._departed.get(name, ()):
            raise ValueError(f"incarnation {incarnation[:16]!r} of {name[:64]!r} is gone")
        current = self._live.get(name)
        self._live[name] = incarnation
        if current is None or current == incarnation:
            return []
        return self.drop_origin((name, current), for_good=True)

    def drop_origin(self, origin: Origin, *, for_good: bool) -> list[Change]:
        """Forget a remote origin (its node left): all its entries leave. ``for_good``
        (it shut down or restarted) also refuses that incarnation from now on; without
        it (a timeout, a lost connection) the same incarnation may come back with a
        full sync after a partition heals."""
        if origin == self.me:
            return []
        name, incarnation = origin
        if self._live.get(name) == incarnation:
            del self._live[name]
        if for_good:
            gone = self._departed.pop(name, None) or collections.deque(maxlen=DEPARTED_PER_NAME)
            self._departed[name] = gone  # most recent last: the oldest name goes first
            if incarnation not in gone:
                gone.append(incarnation)
            while len(self._departed) > DEPARTED_NAMES:
                del self._departed[next(iter(self._departed))]
        state = self.origins.pop(origin, None)
        if state is None:
            return []
        return [self._hide(origin, c, e) for c, e in state.entries.items()]

    def remote_origins(self) -> list[Origin]:
        return [o for o in self.origins if o != self.me]

    # -- the view ----------------------------------------------------------------------
    def _show(self, origin: Origin, dot: int, entry: Entry) -> Change:
        self.view.setdefault(entry.topic, {}).setdefault(entry.key, {})[(origin, dot)] = entry.raw
        return Change(True, origin, dot, entry)

    def _hide(self, origin: Origin, dot: int, entry: Entry) -> Change:
        keys = self.view.get(entry.topic)
        if keys is not None:
            metas = keys.get(entry.key)
            if metas is not None:
                metas.pop((origin, dot), None)
                if not metas:
                    del keys[entry.key]
                    if not keys:
                        del self.view[entry.topic]
        return Change(False, origin, dot, entry)

    def visible(self) -> Iterator[tuple[Origin, int, Entry]]:
        """Every entry this replica shows (for tests and status)."""
        for origin, state in self.origins.items():
            for dot, entry in state.entries.items():
                yield origin, dot, entry


# -- wire format: plain msgpack values, no tuples as keys ---------------------------------
def pack_meta(meta: Any) -> bytes:
    """A meta as msgpack bytes (TypeError for a value msgpack cannot carry)."""
    try:
        return msgpack.packb(meta, use_bin_type=True)  # type: ignore[no-any-return]
    except (OverflowError, ValueError) as exc:
        raise TypeError(f"msgpack cannot carry this meta: {exc}") from exc


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not accepted")


def unpack_meta(raw: bytes) -> Any:
    """Decode a packed meta; no container or string can be longer than ``raw`` itself,
    and no extension type is accepted (ValueError)."""
    limit = len(raw)
    return msgpack.unpackb(raw, raw=False, strict_map_key=True, ext_hook=_no_ext,
                           max_str_len=limit, max_bin_len=limit, max_array_len=limit,
                           max_map_len=limit, max_ext_len=0)


def encode_entries(items: Iterable[tuple[int, Entry]]) -> list[Any]:
    """``[dot, topic, key, packed meta, dot, topic, ...]`` (flat: small and fast)."""
    out: list[Any] = []
    for dot, entry in items:
        out += (dot, entry.topic, entry.key, entry.raw)
    return out


def _dot(value: Any) -> int:
    if value.__class__ is not int or not 1 <= value <= MAX_COUNTER:
        raise ValueError(f"a dot must be an int in 1..2**63-1, not {type(value).__name__}")
    return int(value)


def decode_entries(flat: Any, limits: Limits) -> dict[int, Entry]:
    """Validate and decode ``encode_entries`` output from a peer (ValueError if bad)."""
    if flat.__class__ is not list or len(flat) % 4:
        raise ValueError("entries must be a flat list of [dot, topic, key, meta] quads")
    if len(flat) // 4 > limits.max_entries:
        raise ValueError(f"more than {limits.max_entries} entries in one message")
    out: dict[int, Entry] = {}
    intern, max_name, max_meta = sys.intern, limits.max_name, limits.max_meta
    quads = iter(flat)
    for dot, topic, key, raw in zip(quads, quads, quads, quads, strict=True):
        if topic.__class__ is not str or key.__class__ is not str:
            raise ValueError("topic and key must be strings")
        if len(topic) > max_name or len(key) > max_name:
            raise ValueError(f"topic or key longer than {max_name} characters")
        if raw.__class__ is not bytes or len(raw) > max_meta:
            raise ValueError(f"meta must be msgpack bytes of at most {max_meta}")
        try:
            unpack_meta(raw)  # validated once here; read again only when listed
        except Exception as exc:  # msgpack raises many types for garbage
            raise ValueError(f"bad meta: {type(exc).__name__}") from None
        if dot.__class__ is not int or not 1 <= dot <= MAX_COUNTER:
            raise ValueError("a dot must be an int in 1..2**63-1")
        out[dot] = Entry(intern(topic), key, raw)
    return out


def decode_dots(dots: Any, limit: int) -> list[int]:
    if dots.__class__ is not list or len(dots) > limit:
        raise ValueError(f"dots must be a list of at most {limit} ints")
    return [_dot(d) for d in dots]
