"""Two links to one peer (both ends dialled at once): the loser is retired and what was
sent on it is still handled - also what waits in its inbox behind a slow handler when the
peer closes it, and what arrives after the retirement's grace while our handlers hold its
reading paused. The peer stays linked throughout, so a loss here would be silent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from support.inproc import Inbox, T, config, link_of

from peerlink import Node, Peer
from peerlink import protocol as p
from peerlink.discovery.base import Endpoint
from peerlink.testing import wait_until


async def open_second_link(dialler: Node, target: Node) -> None:
    """Make ``dialler`` open another link to ``target``, as if both had dialled at once
    (membership itself would not: the peer is linked already)."""
    membership = dialler._membership
    assert membership is not None and target.address is not None
    host, port = target.address
    loop = asyncio.get_running_loop()
    await loop.create_connection(
        lambda: membership.new_link(p.Side.DIALER, Endpoint(host, port)), host, port)


@asynccontextmanager
async def stuck_receiver(**options: Any) -> AsyncIterator[tuple[Node, Node, asyncio.Event, Inbox]]:
    """Node "b", whose handler "slow" takes a message only once the event is set, and
    node "z" linked to it (z dialled)."""
    b = Node(config("b", **options))
    release = asyncio.Event()
    inbox = Inbox()

    @b.handler("slow")
    async def slow(message: Any, sender: Peer) -> None:
        await release.wait()
        inbox.add(message, sender)

    async with b:
        z = Node(config("z", [b.address_str]))
        async with z:
            await z.wait_for_peers(1, timeout=T)
            await b.wait_for_peers(1, timeout=T)
            yield b, z, release, inbox


async def test_messages_queued_on_a_retired_link_are_all_handled() -> None:
    # "z" dials "b"; a second link dialled by "b" wins the tie-break (the smaller dialler
    # name), so z's first link - carrying 200 messages queued behind a stuck handler at
    # b - is retired on both sides, and b closes it on z's GOODBYE
    async with stuck_receiver(inbox_bytes=2**20) as (b, z, release, inbox):
        first = link_of(b, "z")
        for i in range(200):
            await z.send("b", "slow", i)
        await wait_until(lambda: len(first.inbox) >= 150, timeout=T)
        await open_second_link(b, z)
        await wait_until(lambda: link_of(b, "z") is not first and first.transport is None, timeout=T)
        assert "z" in b.peers and "b" in z.peers  # the peer never left
        release.set()
        await inbox.until(200)
        assert inbox.messages == list(range(200))
        await z.send("b", "slow", "after")  # and the surviving link works
        await inbox.until(201)


async def test_a_retired_link_is_not_reset_while_our_handlers_hold_its_reading() -> None:
    """Its grace (handshake_timeout) runs out while a stuck handler keeps the link's
    reading paused, with messages still unread in the socket: they must arrive."""
    async with stuck_receiver(inbox_bytes=4096, handshake_timeout=0.2) as (b, z, release, inbox):
        first = link_of(b, "z")
        for i in range(300):
            await z.send("b", "slow", [i, b"x" * 1024])
        await wait_until(lambda: first.reading_paused, timeout=T)
        deadlines = 0
        original = first._retire_deadline

        def counted(linger: float) -> None:
            nonlocal deadlines
            deadlines += 1
            original(linger)

        first._retire_deadline = counted  # type: ignore[method-assign]
        await open_second_link(b, z)
        await wait_until(lambda: deadlines >= 3, timeout=T)  # the grace ran out, thrice
        assert first.transport is not None  # still reading what z sent on it
        release.set()
        await inbox.until(300)
        assert [m[0] for m in inbox.messages] == list(range(300))
        assert "z" in b.peers and "b" in z.peers
