"""Call deadlines without a timer per call.

``loop.call_later`` per call costs a ``TimerHandle`` (a Python object whose ``__lt__``
the heap push calls several times), its cancellation, and a rebuild of the loop's heap
every so often: about a tenth of a client's CPU per ``call`` on loopback. Calls with the
same timeout expire in the order they started (the loop's clock is monotonic), so one
FIFO queue per distinct timeout, with one timer at its oldest live deadline, does the
same job: a call appends a small entry, its end marks the entry done and pops done
entries off the front. A queue holds its live calls plus, at most, the done ones behind
a slower call, and is compacted when those outnumber the live ones (as asyncio rebuilds
its heap), so memory stays proportional to the calls in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

from .errors import CallTimeout

__all__ = ["Deadlines"]

# an entry is a list, not an object: one allocation per call, no __init__ to run
_AT, _FUT, _PEER, _TOPIC, _QUEUE = range(5)  # _FUT is None once the call is done


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _Queue:
    __slots__ = ("entries", "live", "timeout", "timer")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.entries: deque[list[Any]] = deque()
        self.live = 0
        self.timer: asyncio.TimerHandle | None = None


class Deadlines:
    """Fails a call's future with ``CallTimeout`` when ``timeout`` seconds have passed
    since ``start``, unless ``finish`` came first."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, _Queue] = {}

    def start(self, now: float, timeout: float, fut: asyncio.Future[Any], peer: _Named,
              topic: str) -> list[Any]:
        """Arm a deadline at ``now + timeout`` for a call of ``topic`` to ``peer`` (its
        name is read only if the call times out); returns the handle ``finish`` takes."""
        q = self._queues.get(timeout)
        if q is None:
            q = self._queues[timeout] = _Queue(timeout)
        entry = [now + timeout, fut, peer, topic, q]
        q.entries.append(entry)
        q.live += 1
        if q.timer is None:
            q.timer = self._loop.call_at(now + timeout, self._expire, q)
        return entry

    def finish(self, entry: list[Any]) -> None:
        """The call ended (any way, timed out included): forget its deadline."""
        if entry[_FUT] is None:
            return  # expired: already forgotten
        entry[_FUT] = entry[_PEER] = None  # a done entry behind a slow call keeps nothing alive
        q: _Queue = entry[_QUEUE]
        q.live -= 1
        entries = q.entries
        if entries[0] is entry:  # the oldest: calls mostly end in the order they started
            entries.popleft()
        elif len(entries) > 2 * q.live + 64:  # done calls piling up behind a slow one
            q.entries = deque(e for e in entries if e[_FUT] is not None)

    def _expire(self, q: _Queue) -> None:
        q.timer = None
        now = self._loop.time()
        entries = q.entries
        while entries:
            entry = entries[0]
            fut = entry[_FUT]
            if fut is not None:
                if entry[_AT] > now:
                    # the oldest live call: the timer moves to its deadline (one timer
                    # per queue whatever the number of calls)
                    q.timer = self._loop.call_at(entry[_AT], self._expire, q)
                    return
                entry[_FUT] = None
                q.live -= 1
                if not fut.done():
                    fut.set_exception(CallTimeout(entry[_PEER].name, entry[_TOPIC], q.timeout))
            entries.popleft()
        del self._queues[q.timeout]

    def close(self) -> None:
        """Cancel the timers (the calls themselves are failed by whoever closes)."""
        for q in self._queues.values():
            if q.timer is not None:
                q.timer.cancel()
        self._queues.clear()

    def __len__(self) -> int:
        """Calls with a live deadline."""
        return sum(q.live for q in self._queues.values())
