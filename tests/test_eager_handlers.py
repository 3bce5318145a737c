"""The hot path (issue 14). ``async def`` handlers start where a sync handler runs (in
``data_received``) and go on in the link's inbox task only if they suspend (a call to an
async handler was a task and two loop turns slower than to a sync one): arrival order,
replies and errors of calls, and cancellation of a suspended handler must not change.
``bytes`` bodies skip the packer: they must arrive intact at every header size."""

from __future__ import annotations

import asyncio

import pytest
from support.inproc import T, mesh

from peerlink import Peer, PeerUnavailable, RemoteError


async def test_calls_to_async_handlers_that_suspend_or_not_are_answered_in_order() -> None:
    async with mesh(2) as (a, b):
        order: list[int] = []

        @b.handler("work")
        async def work(i: int, sender: Peer) -> int:
            if i % 3 == 0:
                await asyncio.sleep(0)  # suspends: later messages wait for it
            elif i % 3 == 1:
                done = asyncio.get_running_loop().create_future()
                done.set_result(None)
                await done  # awaits, but does not suspend
            order.append(i)
            return i * 2

        results = await asyncio.gather(*(a.call("b", "work", i, timeout=T) for i in range(300)))
        assert results == [i * 2 for i in range(300)]
        assert order == list(range(300))


@pytest.mark.parametrize("suspend", [False, True])
async def test_an_async_handler_error_is_a_remote_error_before_or_after_suspending(suspend: bool) -> None:
    async with mesh(2) as (a, b):

        @b.handler("fail")
        async def fail(msg: str, sender: Peer) -> None:
            if suspend:
                await asyncio.sleep(0.01)
            raise ValueError(msg)

        for text in ("no", "still serving"):
            with pytest.raises(RemoteError) as info:
                await a.call("b", "fail", text, timeout=T)
            assert (info.value.type, info.value.message) == ("ValueError", text)


async def test_a_suspended_handler_is_cancelled_when_its_link_closes() -> None:
    async with mesh(2) as (a, b):
        started, cancelled = asyncio.Event(), asyncio.Event()

        @b.handler("wait")
        async def wait(msg: str, sender: Peer) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        call = asyncio.ensure_future(a.call("b", "wait", "x", timeout=T))
        async with asyncio.timeout(T):
            await started.wait()
        await a.close()
        with pytest.raises(PeerUnavailable):
            await call
        async with asyncio.timeout(T):
            await cancelled.wait()


@pytest.mark.parametrize("size", [0, 255, 256, 65535, 65536, 300_000])
async def test_bytes_bodies_of_every_header_size_arrive_intact(size: int) -> None:
    # the send path writes msgpack's bin header itself for bytes below 64 KiB (no copy
    # of the body before the frame's join); above, and for anything else, msgpack packs
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    async with mesh(2) as (a, b):
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        b.handler("blob")(lambda m, s: got.set_result(m))
        await a.send("b", "blob", body)
        async with asyncio.timeout(T):
            assert await got == body
