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
    ``period`` seconds per key (a refused handshake: once per peer per minute) and, with
    ``max_per_period``, at most that many in all per period - for keys a remote party
    can multiply (one per source address: an IPv6 attacker has 2**64 of them).
    ``suppressed`` counts what was held back since the last allowed message."""

    def __init__(
        self, period: float = 60.0, clock: Callable[[], float] = time.monotonic,
        *, max_per_period: int | None = None,
    ) -> None:
        self.period = period
        self.max_per_period = max_per_period
        self._clock = clock
        self._last: OrderedDict[Hashable, float] = OrderedDict()
        self._window_start = -float("inf")
        self._window_count = 0
        self.suppressed = 0

    def allow(self, key: Hashable) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self.suppressed += 1
            return False
        if self.max_per_period is not None:
            if now - self._window_start >= self.period:
                self._window_start, self._window_count = now, 0
            if self._window_count >= self.max_per_period:
                self.suppressed += 1
                return False
            self._window_count += 1
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
    """Log at ``level`` if ``limiter`` allows ``key`` now, otherwise at DEBUG. An allowed
    line says how many were held back before it."""
    if limiter.allow(key):
        if limiter.suppressed:
            msg += " (%d similar lines held back before this one)"
            args = (*args, limiter.suppressed)
            limiter.suppressed = 0
        logger.log(level, msg, *args)
    else:
        logger.debug(msg, *args)


class _AcceptExhaustionFilter(logging.Filter):
    """asyncio logs "socket.accept() out of system resource" with a traceback for every
    failed accept - up to ``backlog`` times per wake-up, every second - once the process
    is out of file descriptors, which a connection flood can cause (thousands of lines a
    second). Let one through per minute, without the traceback, saying how many were
    held back."""

    _PREFIX = "socket.accept() out of system resource"

    def __init__(self) -> None:
        super().__init__()
        self.limiter = RateLimiter(60.0)

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(self._PREFIX)):
            return True
        if not self.limiter.allow("accept"):
            return False
        if record.exc_info and record.exc_info[1] is not None:
            # the traceback only shows asyncio's accept loop: the error says it all
            record.msg += f"\nerror: {record.exc_info[1]!r} (the process is out of file descriptors)"
            record.exc_info, record.exc_text = None, None
        if self.limiter.suppressed:
            record.msg += f"\n({self.limiter.suppressed} like it held back before this one)"
            self.limiter.suppressed = 0
        return True


_ACCEPT_FILTER = _AcceptExhaustionFilter()


def limit_asyncio_accept_errors() -> None:
    """Install the filter above on the ``asyncio`` logger (once; a node's start does it)."""
    logger = logging.getLogger("asyncio")
    if _ACCEPT_FILTER not in logger.filters:
        logger.addFilter(_ACCEPT_FILTER)
