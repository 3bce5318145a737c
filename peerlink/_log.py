"""Logging helpers: the ``peerlink`` logger and rate-limited logging. Imports nothing from
peerlink."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

logging.getLogger("peerlink").addHandler(logging.NullHandler())

# Bounds the memory a stream of distinct failing peers can make us hold.
_MAX_KEYS = 1024


class RateLimiter:
    """Says whether a message keyed by ``key`` may be logged now: at most once per
    ``period`` seconds per key (a refused handshake: once per peer per minute)."""

    def __init__(
        self, period: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.period = period
        self._clock = clock
        self._last: OrderedDict[Hashable, float] = OrderedDict()

    def allow(self, key: Hashable) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > _MAX_KEYS:
            self._last.popitem(last=False)
        return True

    def forget(self, key: Hashable) -> None:
        self._last.pop(key, None)


def log_limited(
    logger: logging.Logger,
    limiter: RateLimiter,
    key: Hashable,
    level: int,
    msg: str,
    *args: object,
) -> None:
    """Log at ``level`` if ``limiter`` allows ``key`` now, otherwise at DEBUG."""
    logger.log(level if limiter.allow(key) else logging.DEBUG, msg, *args)
