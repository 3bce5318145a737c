"""Mesh formation under load, in one event loop over real sockets (issue 14): what a
slow handshake must not turn into. A dialler that proved the cookie already reports the
link joined, so the acceptor must neither evict it (the unauthenticated budget) nor time
it out while READY is on its way; a peer discovery lists may dial at once with all the
others; a node does not dial a peer whose own dial is about to open; two nodes that dial
each other at once settle on one link before either opens."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from support.inproc import T
from support.rawpeer import RawPeer

from peerlink import Config, Node
from peerlink import protocol as p
from peerlink.errors import SimultaneousDial
from peerlink.testing import ManualDiscovery, free_port, wait_until

COOKIE = b"k"


class SlowDialler:
    """A dialler driven step by step: HELLO, PROOF and READY go out when the test says."""

    def __init__(self, raw: RawPeer, name: str, port: int = 9) -> None:
        self.raw = raw
        self.identity = p.Identity("t", name, secrets.token_hex(8), "127.0.0.1", port, {})
        self.hs = p.Handshake(p.Side.DIALER, identity=self.identity, cookies=[COOKIE])

    @classmethod
    async def connect(cls, node: Node, name: str, port: int = 9) -> SlowDialler:
        host, node_port = node.address or ("", 0)
        return cls(await RawPeer.connect(host, node_port), name, port)

    async def prove(self) -> None:
        """HELLO, CHALLENGE, PROOF, WELCOME: the acceptor now waits for READY, and a
        dialler treats the link as open."""
        for m in self.hs.take_outgoing():  # HELLO
            self.raw.send(*m)
        for m in await self.raw.receive():  # CHALLENGE
            self.hs.receive(m)
        for m in self.hs.take_outgoing():  # PROOF
            self.raw.send(*m)
        while not self.hs.done:
            msgs = await self.raw.receive()
            assert msgs, "the acceptor hung up before WELCOME"
            for m in msgs:
                self.hs.receive(m)

    def ready(self) -> None:
        for m in self.hs.take_outgoing():
            self.raw.send(*m)


@pytest.fixture
async def acceptor() -> AsyncIterator[Node]:
    """A node with the smallest unauthenticated budget and no discovery."""
    node = Node(Config.local(cluster="t", cookie=COOKIE, name="acceptor", handshake_timeout=T,
                             max_unauthenticated=1, max_unauthenticated_per_host=1))
    async with node:
        yield node


async def test_a_dialler_that_proved_the_cookie_is_not_evicted(acceptor: Node) -> None:
    proven = await SlowDialler.connect(acceptor, "d1")
    await proven.prove()
    # more unauthenticated connections from the same address than the cap allows
    flood = [await RawPeer.connect(*(acceptor.address or ("", 0))) for _ in range(3)]
    try:
        membership = acceptor._membership
        assert membership is not None
        await wait_until(lambda: len(membership._unauthenticated) <= 1, timeout=T)
        proven.ready()
        await acceptor.wait_for_peers(1, timeout=T)  # the proven link was kept, and opens
        assert "d1" in acceptor.peers
    finally:
        proven.raw.close()
        for raw in flood:
            raw.close()


async def test_ready_has_a_handshake_timeout_of_its_own_after_welcome() -> None:
    # handshake_timeout 1 s: the dialler takes 0.7 s to prove the cookie, then 0.6 s to
    # send READY (1.3 s in all); the acceptor must wait, as the dialler already
    # reported the link joined
    node = Node(Config.local(cluster="t", cookie=COOKIE, name="acceptor", handshake_timeout=1.0))
    async with node:
        slow = await SlowDialler.connect(node, "slow")
        try:
            await asyncio.sleep(0.7)
            await slow.prove()
            await asyncio.sleep(0.6)
            slow.ready()
            await node.wait_for_peers(1, timeout=T)
        finally:
            slow.raw.close()


async def test_every_discovered_peer_may_dial_at_once() -> None:
    # 20 candidates on this address: 20 peers may be unauthenticated here at one moment,
    # beyond the per-address cap of 1, and none is evicted
    discovery = ManualDiscovery([f"127.0.0.1:{free_port()}" for _ in range(20)])
    node = Node(Config.local(cluster="t", cookie=COOKIE, name="acceptor", discovery=[discovery],
                             handshake_timeout=T, max_unauthenticated=1,
                             max_unauthenticated_per_host=1))
    async with node:
        membership = node._membership
        assert membership is not None
        await wait_until(lambda: len(membership.candidates) == 20, timeout=T)
        raws = [await RawPeer.connect(*(node.address or ("", 0))) for _ in range(20)]
        try:
            await wait_until(lambda: len(membership._unauthenticated) == 20, timeout=T)
            assert not any([await _hung_up(raw) for raw in raws])
        finally:
            for raw in raws:
                raw.close()


async def test_no_dial_to_a_peer_whose_proven_dial_is_about_to_open(acceptor: Node) -> None:
    # the peer's advertised address is a listener that counts connections: the node
    # must not dial it while the peer's own link (cookie proven) waits for READY
    dials = 0

    def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal dials
        dials += 1
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    discovery = ManualDiscovery()
    node = Node(Config.local(cluster="t", cookie=COOKIE, name="b", discovery=[discovery],
                             handshake_timeout=T))
    async with server, node:
        peer = await SlowDialler.connect(node, "a", port=port)
        try:
            await peer.prove()
            membership = node._membership
            assert membership is not None
            discovery.set([f"127.0.0.1:{port}"])
            await wait_until(lambda: len(membership.candidates) == 1, timeout=T)
            (cand,) = membership.candidates.values()
            assert cand.task is None and cand.retry is None and cand.peer == "a"
            peer.ready()
            await node.wait_for_peers(1, timeout=T)
        finally:
            peer.raw.close()
        assert dials == 0


async def _hung_up(raw: RawPeer) -> bool:
    try:
        return await asyncio.wait_for(raw.reader.read(1), 0.05) == b""
    except TimeoutError:
        return False


@pytest.mark.parametrize(("dialler", "refused"), [("c", True), ("a", False)])
async def test_simultaneous_dials_are_resolved_before_welcome(dialler: str, refused: bool) -> None:
    # b's own dial to the peer's address is connected and waits in its handshake (the
    # listener there never answers); the peer dials b meanwhile. If b's dial wins the
    # duplicate rule (b < c), b refuses the peer's before WELCOME, as Distributed Erlang
    # does; if the peer's wins (a < b), b admits it.
    stalled: list[asyncio.StreamWriter] = []

    def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stalled.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    node = Node(Config.local(cluster="t", cookie=COOKIE, name="b", handshake_timeout=T,
                             discovery=[ManualDiscovery([f"127.0.0.1:{port}"])]))
    async with server, node:
        membership = node._membership
        assert membership is not None
        await wait_until(lambda: bool(stalled), timeout=T)  # b's dial is connected
        (cand,) = membership.candidates.values()
        await wait_until(lambda: cand.link is not None, timeout=T)
        peer = await SlowDialler.connect(node, dialler, port=port)
        try:
            if refused:
                with pytest.raises(SimultaneousDial):
                    await peer.prove()
            else:
                await peer.prove()
                peer.ready()
                await node.wait_for_peers(1, timeout=T)
        finally:
            peer.raw.close()
            for w in stalled:
                w.close()
