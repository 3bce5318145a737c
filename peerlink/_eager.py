"""Run a coroutine eagerly: its first step now, the rest in a task (asyncio's own eager
tasks are Python 3.12+)."""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["resume"]


@types.coroutine
def resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Go on running ``coro``, which has run up to yielding ``yielded``, as if it had been
    awaited from its start: what it yields goes to the task awaiting this, what the task
    sends or throws (a result, CancelledError) goes back to it."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value
