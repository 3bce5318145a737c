"""Counters a node keeps about itself, for operators: plain integers and a tiny
fixed-bucket histogram, no dependency. The node owns one ``Stats`` (``node.stats``);
membership and messaging increment it; the admin layer (``peerlink.admin``) reads it at
scrape time. Imports only events and errors.

Every label-like key comes from a fixed set (a ``LeaveReason``, one of
``REFUSAL_REASONS``, a ``Direction``), never from a string a remote party chose, so no
peer can grow these tables.
"""

from __future__ import annotations

import asyncio
import enum
import time
from bisect import bisect_left as _bisect_left
from collections.abc import Iterable
from typing import Final

from .errors import HANDSHAKE_REASONS
from .events import LeaveReason

__all__ = ["REFUSAL_REASONS", "Direction", "Histogram", "LoopLagMonitor", "Stats", "refusal_reason"]

#: why a handshake failed, as counted: every ``HandshakeError.reason``, a name conflict,
#: and "other" for anything else (never a string of its own)
REFUSAL_REASONS: Final = HANDSHAKE_REASONS | {"name_conflict", "other"}


def refusal_reason(reason: object) -> str:
    """``reason`` if it is one of ``REFUSAL_REASONS``, else ``"other"`` (a refusal's
    reason may come from the remote side: it never becomes a label of its own)."""
    return reason if isinstance(reason, str) and reason in REFUSAL_REASONS else "other"


class Direction(enum.StrEnum):
    """Which side started a connection."""

    INBOUND = "inbound"  # the peer dialled us
    OUTBOUND = "outbound"  # we dialled a candidate


class Histogram:
    """A cumulative-style histogram with fixed upper bounds (seconds), as Prometheus
    wants it: ``counts[i]`` holds observations <= ``bounds[i]`` and above the bound
    before it; the last slot holds those above every bound."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds: tuple[float, ...] = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # every call observes its duration: two statements, the count summed when read
        self.counts[_bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` pairs, ending with ``(inf, count)``."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


# request/reply round trips: from loopback microseconds to a timeout of seconds
CALL_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                       0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# event-loop lag: anything over 50 ms is a stall worth seeing
LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Stats:
    """What a node counts about itself since it started. Read it; only the node's own
    parts write it."""

    def __init__(self) -> None:
        self.joins = 0
        self.leaves: dict[LeaveReason, int] = dict.fromkeys(LeaveReason, 0)
        self.refusals: dict[tuple[Direction, str], int] = {}  # (direction, reason) -> count
        self.messages_in = 0
        self.messages_out = 0
        # bytes of links that are gone (open links report their own; see bytes_in/out)
        self.closed_rx_bytes = 0
        self.closed_tx_bytes = 0
        self.calls = Histogram(CALL_BUCKETS)  # completed calls, any outcome
        self.call_failures = 0  # timeouts, remote errors, links lost mid-call
        self.loop_lag = 0.0  # seconds, the last sample
        self.loop_lag_max = 0.0  # seconds, the worst sample since the node started
        self.loop_lags = Histogram(LAG_BUCKETS)

    def refused(self, direction: Direction, reason: object) -> None:
        key = (direction, refusal_reason(reason))
        self.refusals[key] = self.refusals.get(key, 0) + 1


class LoopLagMonitor:
    """Measures how late the event loop runs a timer (the loop-lag gauge): it sleeps
    ``interval`` seconds, again and again, and records how much later than asked it
    woke up. A stall that covers one of its wake-ups shows in full; a shorter stall
    between two wake-ups is not seen (a finer interval costs more wake-ups)."""

    def __init__(self, stats: Stats, interval: float = 0.5) -> None:
        self.stats = stats
        self.interval = interval

    async def run(self) -> None:
        stats = self.stats
        clock = time.monotonic
        while True:
            due = clock() + self.interval
            await asyncio.sleep(self.interval)
            lag = max(0.0, clock() - due)
            stats.loop_lag = lag
            stats.loop_lag_max = max(stats.loop_lag_max, lag)
            stats.loop_lags.observe(lag)
