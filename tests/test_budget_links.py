"""The resource budget over real sockets, in one event loop: forged refusals, floods of
unauthenticated connections, peers that never read their replies or anything at all,
slow handlers under big messages, and attacker-chosen strings. In each case the node
refuses within its budget and its healthy links keep working. (The full attack suite
against node processes is tests/hostile/.)"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.inproc import Inbox, T, link_of, mesh
from support.rawpeer import RawPeer

from peerlink import Config, LeaveReason, Node, PeerLeft, PeerUnavailable, Static
from peerlink import protocol as p
from peerlink.testing import free_port, wait_until


async def roundtrip(a: Node, b: Node) -> None:
    if "echo" not in b._messenger.handlers:  # type: ignore[union-attr]
        b.handler("echo")(lambda m, s: m)
    assert await a.call(b.name, "echo", "ok", timeout=T) == "ok"


class FakeAcceptor:
    """Listens where a node will dial, answers HELLO with a CHALLENGE and then PROOF with
    a REFUSE of our choosing (unauthenticated words, as an impostor would send)."""

    def __init__(self, port: int, reasons: list[str]) -> None:
        self.port = port
        self.reasons = reasons
        self.dials = 0
        self.dialled = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dec = p.FrameDecoder(2**20, preauth=True)
        try:
            while not (msgs := dec.feed(await reader.read(4096))):
                pass
            writer.write(p.encode_frame([p.CHALLENGE, b"c" * 16]))
            while not (msgs := dec.feed(await reader.read(4096))):
                pass
            assert msgs[0][0] == p.PROOF
            reason = self.reasons[self.dials % len(self.reasons)]
            writer.write(p.encode_frame([p.REFUSE, reason, None]))
            await writer.drain()
        finally:
            self.dials += 1
            self.dialled.set()
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_a_forged_is_self_refusal_is_not_believed(caplog: pytest.LogCaptureFixture) -> None:
    """An impostor at a discovered address says "that is yourself": the node must keep
    dialling it (a real peer may live there later) and not log its words in full."""
    caplog.set_level(logging.INFO, logger="peerlink")
    port = free_port()
    fake = FakeAcceptor(port, ["is_self", "x" * 1000 + "unique-1", "is_self", "y" * 1000])
    await fake.start()
    node = Node(Config.local(cluster="t", cookie="k", name="a", reconnect_max=0.1,
                             discovery=[Static([f"127.0.0.1:{port}"])]))
    async with node:
        # it keeps dialling: 4 dials, two of them answered "that is yourself"
        await wait_until(lambda: fake.dials >= 4, timeout=4 * T)
        cand = node.status()["candidates"][0]
        assert cand["state"] in ("handshake_rejected", "dialling")  # never is_self
        assert len(cand["detail"] or "") < 300
        await fake.stop()
        # a real peer comes to live at that address: it links
        b = Node(Config.local(cluster="t", cookie="k", name="b", listen=f"127.0.0.1:{port}"))
        async with b:
            await node.wait_for_peers(1, timeout=T)
            await roundtrip(node, b)
    assert "unique-1" not in caplog.text  # remote words are shortened in logs
    assert max(len(r.getMessage()) for r in caplog.records) < 600


@pytest.fixture
async def target() -> AsyncIterator[tuple[Node, Node]]:
    """A node with small caps, and a healthy peer linked to it."""
    async with mesh(2, max_unauthenticated=16, max_unauthenticated_per_host=4) as (a, b):
        yield a, b


async def test_a_flood_of_idle_connections_is_capped_and_a_real_peer_still_links(
    target: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="peerlink")
    a, b = target
    host, port = b.address or ("", 0)
    one_host = [await RawPeer.connect(host, port) for _ in range(30)]
    many_hosts = [await RawPeer.connect(host, port, local_host=f"127.0.0.{2 + i % 10}") for i in range(30)]
    try:
        membership = b._membership
        assert membership is not None
        # evicted connections are closed by b: wait until it holds no more than its caps
        await wait_until(lambda: len(membership._unauthenticated) <= 16, timeout=T)
        from_one = membership._unauthenticated_by_host.get("127.0.0.1", {})
        assert len(from_one) <= 4
        evicted = sum([await _is_closed(peer) for peer in one_host + many_hosts])
        assert evicted >= 60 - 16
        # a real peer links while the flood's newest connections are still open
        c = Node(Config.local(cluster="t", cookie="k", name="c", discovery=[Static([b.address_str])]))
        async with c:
            await c.wait_for_peers(1, timeout=T)
            await roundtrip(c, b)
        await roundtrip(a, b)  # the healthy link never noticed
        assert "a" in b.peers
    finally:
        for peer in one_host + many_hosts:
            peer.close()
    warnings = [r for r in caplog.records if "too many connections" in r.getMessage()]
    assert 1 <= len(warnings) <= 12  # one per (address, reason) per minute, not one per eviction


async def _is_closed(peer: RawPeer) -> bool:
    try:
        return await asyncio.wait_for(peer.reader.read(1), 0.05) == b""
    except TimeoutError:
        return False


async def test_a_peer_that_floods_calls_and_never_reads_replies_is_paused(
    target: tuple[Node, Node]
) -> None:
    a, b = target
    b.handler("big")(lambda m, s: b"r" * 65536)
    host, port = b.address or ("", 0)
    mallory = await RawPeer.dial(host, port, cookie=b"k", cluster="t", name="mallory")
    try:
        await wait_until(lambda: "mallory" in b.peers, timeout=T)
        link = link_of(b, "mallory")
        for i in range(12_000):  # 12,000 replies of 64 KiB: 750 MiB if all were written
            mallory.send(p.CALL, i + 1, "big", None)
        # 12,000 calls take a while to arrive on a loaded machine: a generous deadline
        await wait_until(lambda: link.reading_paused, timeout=10 * T)
        assert link.transport is not None
        held = link.transport.get_write_buffer_size() + link._encoder.pending_bytes
        assert held <= b.config.write_buffer_high + 2 * 65536 + p.BATCH_BYTES
        assert link.inbox_bytes <= b.config.inbox_bytes + p.BATCH_BYTES
        await roundtrip(a, b)  # b keeps serving its healthy link
    finally:
        mallory.close()


async def test_a_peer_that_takes_none_of_our_bytes_is_reported_gone() -> None:
    """It keeps pinging (so it is not silent) but reads nothing: once our write buffer is
    stuck for `timeout`, the link is dead - else we would hold it and its buffer forever."""
    async with mesh(1, write_buffer_high=65536) as (b,):
        leaves = b.events(current=False)
        host, port = b.address or ("", 0)
        mallory = await RawPeer.dial(host, port, cookie=b"k", cluster="t", name="mallory")

        async def keep_pinging() -> None:
            while True:
                mallory.send(p.PING)
                await asyncio.sleep(b.config.tick / 2)

        async def produce() -> None:  # until the kernel's buffers and then ours are full
            while True:
                await b.send("mallory", "x", b"z" * 65536)

        pinger = asyncio.ensure_future(keep_pinging())
        await wait_until(lambda: "mallory" in b.peers, timeout=T)
        producer = asyncio.ensure_future(produce())
        try:
            async with asyncio.timeout(T):
                async for ev in leaves:
                    if isinstance(ev, PeerLeft):
                        break
            assert ev.peer.name == "mallory" and ev.reason is LeaveReason.TIMEOUT
            with pytest.raises(PeerUnavailable):
                await producer  # the sender waiting on it is told
        finally:
            pinger.cancel()
            producer.cancel()
            mallory.close()


async def test_big_messages_to_a_slow_handler_are_bounded_in_bytes() -> None:
    """1 MiB messages to an async handler that is stuck: the receiver holds about its
    inbox budget (not 10,000 messages' worth) and the sender is pushed back."""
    async with mesh(2, inbox_bytes=2**20) as (a, b):
        release = asyncio.Event()
        inbox = Inbox()

        async def slow(m: Any, sender: Any) -> None:
            await release.wait()
            inbox.add(m, sender)

        b.handler("slow")(slow)
        link = link_of(b, "a")
        sent = 0

        async def produce() -> None:
            nonlocal sent
            for i in range(40):  # 40 MiB
                await a.send("b", "slow", [i, b"m" * 2**20])
                sent += 1

        producer = asyncio.ensure_future(produce())
        await wait_until(lambda: link.reading_paused, timeout=T)
        assert len(link.inbox) <= 3
        assert link.inbox_bytes <= 2 * 2**20 + p.BATCH_BYTES
        assert not producer.done()
        release.set()
        async with asyncio.timeout(3 * T):
            await producer
        await inbox.until(40)
        assert [m[0] for m in inbox.messages] == list(range(40))  # nothing lost


async def test_unknown_topics_chosen_by_a_peer_are_counted_not_kept_or_logged_in_full(
    target: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="peerlink")
    a, b = target
    host, port = b.address or ("", 0)
    mallory = await RawPeer.dial(host, port, cookie=b"k", cluster="t", name="mallory")
    try:
        await wait_until(lambda: "mallory" in b.peers, timeout=T)
        for i in range(40):
            mallory.send(p.SEND, f"{i}-" + "t" * 200_000, None)
        mallory.send(p.CALL, 1, "z" * 100_000, None)
        replies = await mallory.receive()
        while not any(m[0] == p.REPLY for m in replies):
            replies += await mallory.receive()
        reply = next(m for m in replies if m[0] == p.REPLY)
        assert reply[2] is False and reply[3][0] == "LookupError" and len(reply[3][1]) < 300
        assert b._messenger is not None and b._messenger.unknown_topic == 41
        assert len(b._messenger._log_limit._last) <= 4  # keyed by peer, not by topic
        await roundtrip(a, b)
    finally:
        mallory.close()
    assert len(caplog.text) < 5000


async def test_a_link_closed_on_a_bomb_is_freed_at_once_not_by_the_cyclic_gc() -> None:
    """The error a link closes on must not keep its traceback: the decoder's frame (the
    hostile bytes, half-built messages) would stay alive in a cycle through the link until
    the cyclic GC ran - under a sustained attack, hundreds of MB (found by bench/hostile)."""
    async with mesh(1) as (b,):
        host, port = b.address or ("", 0)
        refs = []
        gc.disable()
        try:
            for i in range(3):
                mallory = await RawPeer.dial(host, port, cookie=b"k", cluster="t", name=f"m{i}")
                await wait_until(lambda i=i: f"m{i}" in b.peers, timeout=T)
                refs.append(weakref.ref(link_of(b, f"m{i}")))
                bomb = b"\x90" * (2 * 2**20)  # top-level empty arrays
                mallory.write(len(bomb).to_bytes(4, "big") + bomb)
                assert await mallory.closed()
                mallory.close()
            await wait_until(lambda: all(r() is None for r in refs), timeout=T)
        finally:
            gc.enable()
