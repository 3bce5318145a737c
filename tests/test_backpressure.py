"""Backpressure: ``send`` / ``broadcast`` / ``call`` wait while a link's write buffer is
over ``write_buffer_high``; the sender's memory stays bounded when its peer does not
read; nothing is lost or reordered when reading resumes. And on the receiving side, a
link whose handlers fall far behind stops reading instead of buffering without bound."""

from __future__ import annotations

import asyncio
from typing import Any

from support.inproc import Inbox, Leaves, T, Tap, link_of, mesh

from peerlink import Node, Peer
from peerlink.link import Link
from peerlink.messaging import INBOX_HIGH
from peerlink.protocol import BATCH_BYTES

HIGH = 64 * 1024
PAYLOAD = b"p" * 1024
# a paused reader must not be taken for a dead peer while the test looks at it
SLOW_READER = dict(write_buffer_high=HIGH, tick=1.0, timeout=60.0)


def pause_reading(node: Node, peer: str) -> Link:
    link = link_of(node, peer)
    assert link.transport is not None
    link.transport.pause_reading()
    return link


def resume_reading(link: Link) -> None:
    assert link.transport is not None
    link.transport.resume_reading()


def watch_pause(link: Link) -> asyncio.Event:
    """An event set when the transport tells ``link`` to stop writing."""
    paused = asyncio.Event()
    original = link.pause_writing

    def pause_writing() -> None:
        original()
        paused.set()

    link.pause_writing = pause_writing  # type: ignore[method-assign]
    return paused


def buffered(link: Link) -> int:
    """Bytes the sender holds for this link: the transport's buffer and the encoder's."""
    assert link.transport is not None
    return link.transport.get_write_buffer_size() + link._encoder.size


async def test_send_waits_and_memory_stays_bounded_when_the_peer_does_not_read() -> None:
    n = 20_000  # 20 MiB: more than the socket buffers of both ends hold
    async with mesh(2, **SLOW_READER) as (a, b):
        inbox = Inbox()
        b.handler("x")(inbox.add)
        receiver = pause_reading(b, "a")
        sender = link_of(a, "b")
        paused = watch_pause(sender)
        most = 0
        progress = 0

        async def produce() -> None:
            nonlocal most, progress
            for i in range(n):
                await a.send("b", "x", [i, PAYLOAD])
                progress = i + 1
                most = max(most, buffered(sender))

        producer = asyncio.ensure_future(produce())
        async with asyncio.timeout(T):
            await paused.wait()
        for _ in range(100):  # give a sender that does not wait every chance to run on
            await asyncio.sleep(0)
        assert not producer.done(), "send did not wait for the full write buffer"
        assert progress < n
        assert sender._drain_waiters, "the producer is not waiting for the buffer"
        stuck_at = progress
        assert most <= HIGH + BATCH_BYTES + 2 * len(PAYLOAD)
        assert not a.send_nowait("b", "x", ["refused", PAYLOAD])  # queues nothing

        resume_reading(receiver)
        async with asyncio.timeout(T):
            await producer
        await inbox.until(n)
        assert [m[0] for m in inbox.messages] == list(range(n))
        assert progress == n > stuck_at
        assert most <= HIGH + BATCH_BYTES + 2 * len(PAYLOAD)
        assert a.send_nowait("b", "x", ["accepted", b""])
        await inbox.until(n + 1)
        assert inbox.messages[-1] == ["accepted", b""]


async def test_broadcast_and_call_wait_for_a_full_buffer_too() -> None:
    async with mesh(3, **SLOW_READER) as (a, b, c):
        got: dict[str, Inbox] = {}
        for node in (b, c):
            got[node.name] = Inbox()
            node.handler("x")(got[node.name].add)
        b.handler("echo")(lambda x, sender: x[0])
        receiver = pause_reading(b, "a")
        sender = link_of(a, "b")
        sent = 0
        while not sender.paused:
            await a.send("b", "x", [sent, PAYLOAD])
            sent += 1
            assert sent < 100_000, "100 MiB written and the link never paused"
        blocked_broadcast = asyncio.ensure_future(a.broadcast("x", ["all", b""]))
        blocked_call = asyncio.ensure_future(a.call("b", "echo", ["call"], timeout=None))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not blocked_broadcast.done() and not blocked_call.done()
        assert sender.paused and len(sender._drain_waiters) == 2  # both wait for the buffer
        resume_reading(receiver)
        async with asyncio.timeout(T):
            assert await blocked_broadcast == {"b", "c"}
            assert await blocked_call == "call"
        await got["b"].until(sent + 1)
        await got["c"].until(1)
        assert [m[0] for m in got["b"].messages] == [*range(sent), "all"]
        assert got["c"].messages == [["all", b""]]


async def test_slow_async_handler_stops_the_link_reading() -> None:
    """The receiver's queue for a link whose async handlers fall behind is bounded: it
    stops reading (TCP pushes back to the sender) and catches up in order."""
    n = 3 * INBOX_HIGH
    body = b"b" * 100
    async with mesh(2, tick=1.0, timeout=60.0) as (a, b):
        gate = asyncio.Event()
        handled: list[int] = []
        done = asyncio.Event()

        @b.handler("slow")
        async def slow(x: list[Any], sender: Peer) -> None:
            i = x[0]
            if i == 0:
                await gate.wait()
            handled.append(i)
            if i == n - 1:
                done.set()

        link = link_of(b, "a")
        tap = Tap(link, keep=False)
        producer = asyncio.ensure_future(_send_many(a, "slow", n, body))
        await tap.until(lambda: not _reading(link) or tap.count >= n)
        assert not _reading(link), f"read all {tap.count} messages into memory"
        assert len(link.inbox) < n
        assert len(link.inbox) <= INBOX_HIGH + BATCH_BYTES // len(body)
        gate.set()
        async with asyncio.timeout(T):
            await producer
            await done.wait()
        assert handled == list(range(n))


async def test_sync_messages_queued_behind_a_slow_handler_are_bounded_too() -> None:
    """Messages for a *sync* handler that arrive while an async one is busy wait in the
    same per-link queue; that queue must stop the link reading like any other."""
    n = 3 * INBOX_HIGH
    body = b"b" * 100
    async with mesh(2, tick=1.0, timeout=60.0) as (a, b):
        gate = asyncio.Event()
        fast = Inbox()

        @b.handler("slow")
        async def slow(x: Any, sender: Peer) -> None:
            await gate.wait()

        b.handler("fast")(fast.add)
        link = link_of(b, "a")
        tap = Tap(link, keep=False)
        await a.send("b", "slow", None)
        producer = asyncio.ensure_future(_send_many(a, "fast", n, body))
        await tap.until(lambda: not _reading(link) or tap.count >= n + 1)
        try:
            assert not _reading(link), f"read all {tap.count} messages into memory"
            assert len(link.inbox) <= INBOX_HIGH + BATCH_BYTES // len(body)
        finally:
            gate.set()
        async with asyncio.timeout(T):
            await producer
        await fast.until(n)
        assert [m[0] for m in fast.messages] == list(range(n))


async def test_link_survives_a_handler_slower_than_the_heartbeat_timeout() -> None:
    """While the receiver has stopped reading because its own handlers are behind, the
    peer is alive and sending: that must not be taken for silence (leave(timeout))."""
    n = 3 * INBOX_HIGH
    body = b"b" * 100
    async with mesh(2) as (a, b):  # Config.local: timeout 0.5 s
        timeout = b.config.effective_timeout
        gate = asyncio.Event()
        handled = Inbox()

        @b.handler("slow")
        async def slow(x: list[Any], sender: Peer) -> None:
            if x[0] == 0:
                await gate.wait()
            handled.add(x[0], sender)

        leaves_a, leaves_b = Leaves(a), Leaves(b)
        link = link_of(b, "a")
        tap = Tap(link, keep=False)
        producer = asyncio.ensure_future(_send_many(a, "slow", n, body))
        await tap.until(lambda: not _reading(link) or tap.count >= n)
        try:
            assert not _reading(link), "precondition: b stopped reading (see the test above)"
            # the handler stays busy for 4 x timeout; no leave may happen meanwhile
            try:
                await leaves_b.until(1, timeout=4 * timeout)
            except TimeoutError:
                pass
            assert leaves_b.events == [] and leaves_a.events == [], (
                f"b: {leaves_b.events}, a: {leaves_a.events}")
        finally:
            gate.set()
        async with asyncio.timeout(T):
            await producer
        await handled.until(n)
        assert handled.messages == list(range(n))
        leaves_a.stop()
        leaves_b.stop()


def _reading(link: Link) -> bool:
    return link.transport is not None and link.transport.is_reading()


async def _send_many(node: Node, topic: str, n: int, body: bytes) -> None:
    for i in range(n):
        await node.send("b", topic, [i, body])
