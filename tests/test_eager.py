"""peerlink._eager: a coroutine's first step run here and now, the rest in a task."""

from __future__ import annotations

import asyncio
import sys

import pytest

from peerlink._eager import Starter, resume


async def returns(value: object) -> object:
    return value


async def suspends(gate: asyncio.Future[object], log: list[str], times: int = 1) -> object:
    log.append("started")
    try:
        for _ in range(times - 1):
            await asyncio.sleep(0)
        return await gate
    finally:
        log.append("finished")


async def raises(exc: BaseException) -> None:
    raise exc


def test_a_coroutine_that_returns_at_once_gives_its_value_without_a_stop_iteration() -> None:
    starter = Starter()
    seen: list[object] = []
    sys.setprofile(lambda frame, event, arg: seen.append(arg) if event == "c_exception" else None)
    try:
        results = [starter.start(returns(i)) for i in range(3)]
    finally:
        sys.setprofile(None)
    assert results == [(True, 0), (True, 1), (True, 2)]
    assert seen == []  # no exception raised anywhere on the way


async def test_a_suspended_coroutine_goes_on_in_a_task_and_the_starter_stays_usable() -> None:
    starter = Starter()
    gate: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    log: list[str] = []
    done, started = starter.start(suspends(gate, log, times=3))
    assert not done and log == ["started"]
    task = asyncio.ensure_future(resume(started))
    assert starter.start(returns("meanwhile")) == (True, "meanwhile")  # another, at once
    await asyncio.sleep(0)
    gate.set_result("late")
    assert await task == "late"
    assert log == ["started", "finished"]
    assert starter.start(returns("after")) == (True, "after")


@pytest.mark.parametrize("exc", [ValueError("boom"), asyncio.CancelledError()])
def test_an_exception_at_the_first_step_propagates_and_the_starter_goes_on(exc: BaseException) -> None:
    starter = Starter()
    with pytest.raises(type(exc)):
        starter.start(raises(exc))
    assert starter.start(returns(1)) == (True, 1)


async def _resumed_in_a_task() -> tuple[asyncio.Task[object], asyncio.Future[object], list[str]]:
    """A coroutine started, suspended on ``gate``, and going on in a task."""
    gate: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    log: list[str] = []
    done, started = Starter().start(suspends(gate, log))
    assert not done
    task = asyncio.ensure_future(resume(started))
    await asyncio.sleep(0)
    return task, gate, log


async def test_an_exception_after_suspending_reaches_the_awaiting_task() -> None:
    task, gate, log = await _resumed_in_a_task()
    gate.set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        await task
    assert log == ["started", "finished"]


async def test_cancelling_the_task_cancels_the_coroutine_inside() -> None:
    task, gate, log = await _resumed_in_a_task()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.cancelled() and log == ["started", "finished"]


async def test_closing_the_resumed_run_closes_the_coroutine() -> None:
    gate: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    log: list[str] = []
    done, started = Starter().start(suspends(gate, log))
    assert not done
    run = resume(started)
    assert run.send(None) is started[1]  # what the coroutine yielded, handed on
    run.close()
    assert log == ["started", "finished"]


def test_the_starter_keeps_nothing_of_a_finished_run_alive() -> None:
    import gc
    import weakref

    class Result:
        pass

    result = Result()
    ref = weakref.ref(result)
    starter = Starter()
    assert starter.start(returns(result)) == (True, result)
    del result
    gc.collect()
    assert ref() is None


def test_a_first_step_may_start_another_with_the_same_starter() -> None:
    starter = Starter()

    async def outer() -> object:
        return ("outer", starter.start(returns("inner")))

    assert starter.start(outer()) == (True, ("outer", (True, "inner")))
    assert starter.start(returns(1)) == (True, 1)
