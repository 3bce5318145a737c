"""Exponential backoff with full jitter, one policy for re-dials and discovery retries.

Built on tenacity's ``wait_random_exponential`` so the policy is the well-known one
(AWS "full jitter"), used outside a ``@retry`` loop because our loops are long-lived
tasks that also need to report *when* they will retry (``node.status()``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class Backoff:
    """Delay before attempt ``n`` (1-based): uniform in [0, min(max, initial * 2**n)].

    ``reset()`` after a success; ``next()`` after a failure returns the delay to wait.
    """

    __slots__ = ("_wait", "attempts", "initial", "maximum")

    def __init__(self, initial: float, maximum: float) -> None:
        # imported on first use (a node's start), not by `import peerlink`: ~10 ms
        from tenacity import wait_random_exponential

        self.initial = initial
        self.maximum = maximum
        self._wait = wait_random_exponential(multiplier=initial, max=maximum)
        self.attempts = 0

    def reset(self) -> None:
        self.attempts = 0

    def next(self) -> float:
        self.attempts += 1
        state: Any = SimpleNamespace(attempt_number=self.attempts)
        # full jitter can draw ~0; keep a small floor so a flapping target never spins
        return max(float(self._wait(state)), self.initial / 10)
