"""Run a coroutine eagerly: its first step now, the rest in a task (asyncio's own eager
tasks are Python 3.12+).

``coro.send(None)`` would do the first step, but a coroutine that completes at once -
most handlers do - then raises StopIteration to hand back its value: an exception
object, a traceback entry and an unwinding for every message. ``Starter`` instead
delegates to the coroutine from a generator of its own (``yield from``), which receives
a return value as a plain value, the way ``await`` does.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeAlias, cast

__all__ = ["Starter", "Suspended", "resume"]


class _Done:
    """What a driver yields when the coroutine it ran has returned (``value``)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = None


# a coroutine that suspended at its first step: the driver that goes on running it,
# what it yielded (for the task that takes over), and the driver's _Done
Suspended: TypeAlias = tuple[Generator[Any, Any, Any], Any, _Done]


@types.coroutine
def _driver(done: _Done) -> Generator[Any, Any, None]:
    coro = yield None
    while True:
        done.value = yield from coro  # Starter.start takes it out at once
        coro = None  # nothing of a finished run kept alive while waiting for the next
        coro = yield done


class Starter:
    """Runs coroutines up to their first suspension, one after another."""

    __slots__ = ("_done", "_driver", "_send")

    def __init__(self) -> None:
        self._fresh()

    def _fresh(self) -> None:
        done = self._done = _Done()
        driver = self._driver = cast("types.GeneratorType[Any, Any, None]", _driver(done))
        driver.send(None)
        self._send = driver.send

    def start(self, coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
        """Run ``coro`` until it returns or suspends: ``(True, its value)``, or
        ``(False, Suspended)`` - hand that to ``resume`` in the task that goes on with it.
        An exception the coroutine raises propagates."""
        if self._driver.gi_running:  # called from inside the first step of another
            return Starter().start(coro)
        done = self._done
        try:
            out = self._send(coro)
        except BaseException:
            self._fresh()  # the exception went through the driver and ended it
            raise
        if out is done:
            value, done.value = done.value, None
            return True, value
        driver = self._driver
        self._fresh()  # that driver now belongs to the suspended coroutine
        return False, (driver, out, done)


@types.coroutine
def resume(started: Suspended) -> Generator[Any, Any, Any]:
    """Go on running a coroutine that ``Starter.start`` left suspended, as if it had been
    awaited from its start: what it yields goes to the task awaiting this, what the task
    sends or throws (a result, CancelledError) goes back to it."""
    driver, yielded, done = started
    while True:
        if yielded is done:
            driver.close()
            return done.value
        try:
            sent = yield yielded
        except GeneratorExit:
            driver.close()
            raise
        except BaseException as exc:
            yielded = driver.throw(exc)
        else:
            yielded = driver.send(sent)
