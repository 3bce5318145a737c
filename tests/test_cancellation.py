"""Cancelling messaging operations (in the spirit of httpcore's cancellation tests):
whatever point a ``call`` or ``send`` is cancelled at, the link stays usable, no call
is left registered, and a reply that arrives for a cancelled call is dropped."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.inproc import Inbox, Leaves, T, Tap, link_of, mesh

from peerlink import Node, Peer
from peerlink.protocol import REPLY


def _gated(node: Node, topic: str, *, concurrent: bool = False) -> tuple[asyncio.Event, asyncio.Event, list[Any]]:
    """An async handler that records its message, reports it started, waits for the gate
    and answers ``("late", message)``."""
    started, gate = asyncio.Event(), asyncio.Event()
    got: list[Any] = []

    async def handler(x: Any, sender: Peer) -> Any:
        got.append(x)
        started.set()
        await gate.wait()
        return ["late", x]

    node.handler(topic, concurrent=concurrent)(handler)
    return started, gate, got


async def test_cancel_call_mid_flight_discards_the_late_reply() -> None:
    async with mesh(2) as (a, b):
        leaves = Leaves(a)
        started, gate, _ = _gated(b, "slow")
        b.handler("echo")(lambda x, sender: x)
        call = asyncio.ensure_future(a.call("b", "slow", 1, timeout=None))
        async with asyncio.timeout(T):
            await started.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert link_of(a, "b").calls == {}
        tap = Tap(link_of(a, "b"))
        gate.set()
        # the reply comes back and finds no caller
        await tap.until(lambda: any(m[0] == REPLY for m in tap.messages))
        assert link_of(a, "b").calls == {}
        assert await a.call("b", "echo", "fresh") == "fresh"
        assert await a.call("b", "slow", 2) == ["late", 2]
        assert leaves.events == []
        leaves.stop()


async def test_cancel_call_queued_behind_a_busy_handler() -> None:
    """The cancelled call was already sent: its handler still runs (at most once), its
    answer is dropped, and the messages after it are handled in order."""
    async with mesh(2) as (a, b):
        started, gate, got = _gated(b, "slow")
        b.handler("echo")(lambda x, sender: x)
        first = asyncio.ensure_future(a.call("b", "slow", "first", timeout=None))
        async with asyncio.timeout(T):
            await started.wait()
        tap = Tap(link_of(b, "a"))
        queued = asyncio.ensure_future(a.call("b", "slow", "queued", timeout=None))
        await tap.until(lambda: tap.count >= 1)  # b holds it, behind "first"
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        after = asyncio.ensure_future(a.call("b", "echo", "after"))
        gate.set()
        assert await first == ["late", "first"]
        assert await after == "after"
        assert got == ["first", "queued"]
        assert link_of(a, "b").calls == {}


@pytest.mark.parametrize("steps", range(12))
async def test_cancel_call_at_any_point(steps: int) -> None:
    """Cancel after 0..11 loop iterations (before the request is written, while it
    travels, while the handler runs, as the reply arrives): the link stays usable."""
    async with mesh(2) as (a, b):
        leaves = Leaves(a)

        @b.handler("work")
        async def work(x: int, sender: Peer) -> int:
            for _ in range(3):
                await asyncio.sleep(0)
            return x + 1

        call = asyncio.ensure_future(a.call("b", "work", 1))
        for _ in range(steps):
            await asyncio.sleep(0)
        call.cancel()
        try:
            assert await call == 2  # it may have finished before the cancel
        except asyncio.CancelledError:
            pass
        assert link_of(a, "b").calls == {}
        assert await asyncio.gather(*(a.call("b", "work", i) for i in range(10))) == list(range(1, 11))
        assert link_of(a, "b").calls == {}
        assert leaves.events == []
        leaves.stop()


async def test_outer_timeout_cancels_call_cleanly() -> None:
    async with mesh(2) as (a, b):
        _, gate, _ = _gated(b, "slow", concurrent=True)
        b.handler("echo")(lambda x, sender: x)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await a.call("b", "slow", 1, timeout=None)
        assert link_of(a, "b").calls == {}
        gate.set()
        assert await a.call("b", "echo", "ok") == "ok"


async def test_cancel_some_of_many_calls() -> None:
    async with mesh(2) as (a, b):
        started, gate, _ = _gated(b, "slow", concurrent=True)
        calls = [asyncio.ensure_future(a.call("b", "slow", i, timeout=None)) for i in range(20)]
        async with asyncio.timeout(T):
            await started.wait()
        for c in calls[::2]:
            c.cancel()
        gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        for i, r in enumerate(results):
            if i % 2:
                assert r == ["late", i]
            else:
                assert isinstance(r, asyncio.CancelledError)
        assert link_of(a, "b").calls == {}


async def test_cancel_send_waiting_for_the_buffer_queues_nothing() -> None:
    """``send`` waiting on a full write buffer can be cancelled: that message is not
    sent, the ones before and after it are, in order."""
    async with mesh(2, write_buffer_high=16 * 1024, tick=1.0, timeout=30.0) as (a, b):
        inbox = Inbox()
        b.handler("x")(inbox.add)
        receiver = link_of(b, "a")
        assert receiver.transport is not None
        receiver.transport.pause_reading()
        sender = link_of(a, "b")
        payload = b"p" * 1024
        sent = 0
        while not sender.paused:  # fill the socket buffers and then the transport's
            await a.send("b", "x", [sent, payload])
            sent += 1
            assert sent < 100_000, "100 MiB written and the link never paused"
        blocked = asyncio.ensure_future(a.send("b", "x", ["cancelled", payload]))
        blocked_call = asyncio.ensure_future(a.call("b", "x", ["cancelled call", payload]))
        await asyncio.sleep(0)
        assert not blocked.done() and not blocked_call.done()
        blocked.cancel()
        blocked_call.cancel()
        for task in (blocked, blocked_call):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert sender.calls == {}
        receiver.transport.resume_reading()
        await a.send("b", "x", ["last", payload])
        await inbox.until(sent + 1)
        assert [m[0] for m in inbox.messages] == [*range(sent), "last"]
