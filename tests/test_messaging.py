"""Messaging between real nodes in one event loop on 127.0.0.1: send / broadcast / call,
handler kinds, per-link order, errors (RemoteError, CallTimeout, PeerUnavailable,
TypeError, MessageTooLarge), unknown topics, failing handlers, old incarnations."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from support.inproc import Inbox, Leaves, T, Tap, config, link_of, mesh

import peerlink
from peerlink import (
    CallTimeout,
    MessageTooLarge,
    Node,
    Peer,
    PeerJoined,
    PeerUnavailable,
    RemoteError,
)
from peerlink.protocol import REPLY, SEND
from peerlink.testing import free_port

# -- send ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_send_reaches_the_handler_with_sender(kind: str) -> None:
    async with mesh(2) as (a, b):
        inbox = Inbox()
        if kind == "sync":
            b.handler("greet")(inbox.add)
        else:
            @b.handler("greet")
            async def greet(message: Any, sender: Peer) -> None:
                await asyncio.sleep(0)
                inbox.add(message, sender)

        body = {"text": "hi", "n": [1, 2.5, None, True], "raw": b"\x00\xff", "t": (1, 2)}
        await a.send("b", "greet", body)
        await a.send(a.peers["b"], "greet", "by Peer object")
        await inbox.until(2)
        (m1, s1), (m2, s2) = inbox.items
        # tuples travel as lists; everything else as it was
        assert m1 == {"text": "hi", "n": [1, 2.5, None, True], "raw": b"\x00\xff", "t": [1, 2]}
        assert m2 == "by Peer object"
        assert s1 == s2 == b.peers["a"]
        assert (s1.name, s1.incarnation) == ("a", a.incarnation)


async def test_send_both_directions_on_one_link() -> None:
    # the link was dialled by b; a (the acceptor) can send over it just the same
    async with mesh(2) as (a, b):
        got_a, got_b = Inbox(), Inbox()
        a.handler("x")(got_a.add)
        b.handler("x")(got_b.add)
        await a.send("b", "x", "to b")
        await b.send("a", "x", "to a")
        await got_a.until(1)
        await got_b.until(1)
        assert got_a.messages == ["to a"] and got_b.messages == ["to b"]


async def test_send_nowait_queues_when_writable() -> None:
    async with mesh(2) as (a, b):
        inbox = Inbox()
        b.handler("x")(inbox.add)
        assert a.send_nowait("b", "x", 1) is True
        assert a.send_nowait(a.peers["b"], "x", 2) is True
        await inbox.until(2)
        assert inbox.messages == [1, 2]


# -- order -----------------------------------------------------------------------------


async def test_fifo_per_link_with_mixed_sync_and_async_handlers() -> None:
    """Messages of one link are handled in arrival order whatever the handler kind,
    including messages to a sync handler queued behind a suspended async one, and
    calls interleaved with sends."""
    n = 3000
    async with mesh(2) as (a, b):
        seen: list[int] = []
        done = asyncio.Event()

        def record(i: int) -> None:
            seen.append(i)
            if i == n - 1:
                done.set()

        @b.handler("sync")
        def on_sync(i: int, sender: Peer) -> None:
            record(i)

        @b.handler("async")
        async def on_async(i: int, sender: Peer) -> None:
            if i % 3 == 0:
                await asyncio.sleep(0)  # suspend: later messages must wait for us
            record(i)

        @b.handler("call")
        def on_call(i: int, sender: Peer) -> int:
            record(i)
            return i

        topics = ["sync", "async", "sync", "sync", "async", "async", "sync"]
        calls = []
        for i in range(n):
            if i % 50 == 49:
                calls.append(asyncio.ensure_future(a.call("b", "call", i)))
                await asyncio.sleep(0)  # let the call task queue its message now
            else:
                await a.send("b", topics[i % len(topics)], i)
        async with asyncio.timeout(T):
            await done.wait()
        assert await asyncio.gather(*calls) == list(range(49, n, 50))
        assert seen == list(range(n))


async def test_broadcast_is_fifo_per_link_and_interleaves_with_send() -> None:
    n = 2000
    async with mesh(3) as (a, b, c):
        inboxes = {}
        for node in (b, c):
            inbox = inboxes[node.name] = Inbox()
            node.handler("sync")(inbox.add)

            async def on_async(message: Any, sender: Peer, inbox: Inbox = inbox) -> None:
                await asyncio.sleep(0)
                inbox.add(message, sender)

            node.handler("async")(on_async)
        for i in range(n):
            topic = "async" if i % 4 == 0 else "sync"
            if i % 3 == 0:
                await a.send("b", topic, ["b", i])
                await a.send("c", topic, ["c", i])
            else:
                assert await a.broadcast(topic, ["all", i]) == {"b", "c"}
        for name, inbox in inboxes.items():
            await inbox.until(n)
            assert [m[1] for m in inbox.messages] == list(range(n))
            assert {m[0] for m in inbox.messages} == {name, "all"}


async def test_slow_handler_delays_only_its_own_link() -> None:
    async with mesh(3) as (a, b, c):
        started, gate = asyncio.Event(), asyncio.Event()
        fast = Inbox()

        @c.handler("slow")
        async def slow(message: Any, sender: Peer) -> None:
            started.set()
            await gate.wait()

        c.handler("fast")(fast.add)
        tap = Tap(link_of(c, "a"))

        await a.send("c", "slow", None)
        async with asyncio.timeout(T):
            await started.wait()
        await a.send("c", "fast", "from a, behind slow")
        # c has the message from a in hand (not only in a socket buffer)...
        await tap.until(lambda: any(m[1] == "fast" for m in tap.messages))
        # ...while b's message on another link goes straight through
        await b.send("c", "fast", "from b")
        await fast.until(1)
        assert fast.messages == ["from b"]
        gate.set()
        await fast.until(2)
        assert fast.messages == ["from b", "from a, behind slow"]


async def test_concurrent_handler_runs_calls_concurrently() -> None:
    """Two calls that can only finish together: they need ``concurrent=True``."""
    async with mesh(2) as (a, b):
        for topic, concurrent in (("meet", True), ("meet-ordered", False)):
            arrived: list[int] = []
            both = asyncio.Event()

            async def meet(i: int, sender: Peer, arrived: list[int] = arrived,
                           both: asyncio.Event = both) -> int:
                arrived.append(i)
                if len(arrived) == 2:
                    both.set()
                await both.wait()
                return i * 10

            b.handler(topic, concurrent=concurrent)(meet)
            # ordered, they never meet: a short timeout; concurrent, a generous one
            calls = [a.call("b", topic, i, timeout=T if concurrent else 0.5) for i in (1, 2)]
            if concurrent:
                assert await asyncio.gather(*calls) == [10, 20]
            else:  # the default runs them one after the other: they never meet
                results = await asyncio.gather(*calls, return_exceptions=True)
                assert all(isinstance(r, CallTimeout) for r in results)
                both.set()  # release the first so the link drains


async def test_concurrent_handler_queued_behind_a_busy_one_does_not_hold_the_link() -> None:
    """A message for a ``concurrent=True`` handler that arrives while an ordered async
    handler is busy may wait for it, but must then run in its own task: later messages
    of the link must not wait for it (here: the message that would release it)."""
    async with mesh(2) as (a, b):
        busy_started, busy_gate, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

        @b.handler("busy")
        async def busy(x: Any, sender: Peer) -> None:
            busy_started.set()
            await busy_gate.wait()

        @b.handler("wait", concurrent=True)
        async def wait(x: Any, sender: Peer) -> str:
            await release.wait()
            return "released"

        @b.handler("release")
        def on_release(x: Any, sender: Peer) -> None:
            release.set()

        await a.send("b", "busy", None)
        async with asyncio.timeout(T):
            await busy_started.wait()
        tap = Tap(link_of(b, "a"))
        waiting = asyncio.ensure_future(a.call("b", "wait", None, timeout=1.0))
        await asyncio.sleep(0)  # the call is written before the release
        await a.send("b", "release", None)
        # b holds both, queued behind the busy handler
        await tap.until(lambda: any(m[0] == SEND and m[1] == "release" for m in tap.messages))
        assert not release.is_set()
        busy_gate.set()
        try:
            assert await waiting == "released"
        finally:
            release.set()


async def test_concurrent_sync_handler_for_send() -> None:
    async with mesh(2) as (a, b):
        inbox = Inbox()
        b.handler("x", concurrent=True)(inbox.add)
        for i in range(10):
            await a.send("b", "x", i)
        await inbox.until(10)
        assert sorted(inbox.messages) == list(range(10))


# -- broadcast -------------------------------------------------------------------------


async def test_broadcast_returns_the_names_reached() -> None:
    async with mesh(3) as (a, b, c):
        inboxes = {n.name: Inbox() for n in (b, c)}
        b.handler("news")(inboxes["b"].add)
        c.handler("news")(inboxes["c"].add)
        assert await a.broadcast("news", {"v": 1}) == {"b", "c"}
        for inbox in inboxes.values():
            await inbox.until(1)
            assert inbox.messages == [{"v": 1}]
            assert inbox.items[0][1].name == "a"
        leaves = Leaves(a)
        await c.close()
        await leaves.until(1)
        assert await a.broadcast("news", {"v": 2}) == {"b"}
        await inboxes["b"].until(2)
        assert inboxes["b"].messages == [{"v": 1}, {"v": 2}]
        leaves.stop()


async def test_broadcast_without_peers_reaches_nobody() -> None:
    node = Node(config("alone"))
    async with node:
        assert await node.broadcast("news", 1) == set()


# -- call ------------------------------------------------------------------------------


async def test_call_returns_the_handler_value() -> None:
    async with mesh(2) as (a, b):
        @b.handler("double")
        def double(x: int, sender: Peer) -> int:
            return x * 2

        @b.handler("describe")
        async def describe(x: Any, sender: Peer) -> dict[str, Any]:
            await asyncio.sleep(0)
            return {"got": x, "from": sender.name, "pair": (1, 2)}

        @b.handler("nothing")
        def nothing(x: Any, sender: Peer) -> None:
            return None

        assert await a.call("b", "double", 21) == 42
        assert await a.call(a.peers["b"], "describe", [b"x"]) == {"got": [b"x"], "from": "a", "pair": [1, 2]}
        assert await a.call("b", "nothing", 0, timeout=None) is None
        # many in flight at once: each gets its own answer
        results = await asyncio.gather(*(a.call("b", "double", i) for i in range(200)))
        assert results == [2 * i for i in range(200)]
        assert link_of(a, "b").calls == {}


class Boom(Exception):
    pass


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_remote_error_carries_type_and_message(kind: str) -> None:
    async with mesh(2) as (a, b):
        if kind == "sync":
            @b.handler("fail")
            def fail_sync(x: Any, sender: Peer) -> None:
                raise Boom(f"cannot do {x}")
        else:
            @b.handler("fail")
            async def fail_async(x: Any, sender: Peer) -> None:
                await asyncio.sleep(0)
                raise Boom(f"cannot do {x}")

        @b.handler("ok")
        def ok(x: Any, sender: Peer) -> str:
            return "fine"

        with pytest.raises(RemoteError) as info:
            await a.call("b", "fail", "that")
        assert info.value.type == "Boom"
        assert info.value.message == "cannot do that"
        assert str(info.value) == "Boom: cannot do that"
        assert info.value.__traceback__ is not None and not isinstance(info.value, Boom)
        # the link stays up and answers the next call
        assert await a.call("b", "ok", None) == "fine"
        assert set(a.peers) == {"b"}


async def test_reply_that_cannot_be_sent_becomes_remote_error() -> None:
    async with mesh(2, max_frame=64 * 1024) as (a, b):
        @b.handler("bad-value")
        def bad_value(x: Any, sender: Peer) -> Any:
            return object()

        @b.handler("too-big")
        def too_big(x: Any, sender: Peer) -> bytes:
            return b"x" * 100_000

        with pytest.raises(RemoteError) as info:
            await a.call("b", "bad-value", None)
        assert info.value.type == "TypeError"
        with pytest.raises(RemoteError) as info:
            await a.call("b", "too-big", None)
        assert info.value.type == "MessageTooLarge"
        assert set(a.peers) == {"b"}


async def test_unknown_topic_is_answered_counted_and_keeps_the_link() -> None:
    async with mesh(2) as (a, b):
        leaves = Leaves(a)
        known = Inbox()
        b.handler("known")(known.add)
        started, gate = asyncio.Event(), asyncio.Event()

        @b.handler("slow")
        async def slow(x: Any, sender: Peer) -> None:
            started.set()
            await gate.wait()

        with pytest.raises(RemoteError) as info:
            await a.call("b", "nobody-handles-this", 1)
        assert info.value.type == "LookupError"
        assert "no handler for topic 'nobody-handles-this'" in str(info.value)
        await a.send("b", "nobody-either", 2)  # one-way: counted, no answer
        await a.send("b", "known", "after")
        await known.until(1)
        assert b.status()["messaging"]["unknown_topic"] == 2

        # the same while messages are queued behind a busy async handler
        await a.send("b", "slow", None)
        async with asyncio.timeout(T):
            await started.wait()
        queued_call = asyncio.ensure_future(a.call("b", "still-nobody", 3))
        await a.send("b", "nor-this", 4)
        await a.send("b", "known", "after queued")
        gate.set()
        with pytest.raises(RemoteError, match="no handler for topic 'still-nobody'"):
            await queued_call
        await known.until(2)
        assert b.status()["messaging"]["unknown_topic"] == 4
        assert a.status()["messaging"]["unknown_topic"] == 0
        assert leaves.events == [] and set(a.peers) == {"b"}
        leaves.stop()


async def test_call_timeout_then_late_reply_is_discarded() -> None:
    async with mesh(2) as (a, b):
        gate = asyncio.Event()
        answered = asyncio.Event()

        @b.handler("stall")
        async def stall(x: Any, sender: Peer) -> str:
            await gate.wait()
            answered.set()
            return "late"

        @b.handler("echo")
        def echo(x: Any, sender: Peer) -> Any:
            return x

        with pytest.raises(CallTimeout) as info:
            await a.call("b", "stall", None, timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        assert (info.value.peer, info.value.topic, info.value.timeout) == ("b", "stall", 0.2)
        assert link_of(a, "b").calls == {}
        tap = Tap(link_of(a, "b"))
        gate.set()
        async with asyncio.timeout(T):
            await answered.wait()
        await tap.until(lambda: any(m[0] == REPLY for m in tap.messages))
        # the late reply found no caller; the next call gets its own answer
        assert await a.call("b", "echo", "fresh") == "fresh"
        assert link_of(a, "b").calls == {}


# -- PeerUnavailable -------------------------------------------------------------------


async def test_unknown_peer_is_unavailable() -> None:
    async with mesh(2) as (a, _b):
        with pytest.raises(PeerUnavailable) as info:
            await a.send("zed", "x", 1)
        assert info.value.peer == "zed"
        with pytest.raises(PeerUnavailable) as info:
            await a.call("zed", "x", 1)
        assert info.value.peer == "zed"
        with pytest.raises(PeerUnavailable):
            a.send_nowait("zed", "x", 1)


@pytest.mark.parametrize("how", ["close", "abort-remote", "abort-local"])
async def test_dying_link_fails_every_waiting_call(how: str) -> None:
    async with mesh(2) as (a, b):
        reached = 0
        all_reached = asyncio.Event()
        never = asyncio.Event()

        @b.handler("hang", concurrent=True)
        async def hang(x: Any, sender: Peer) -> None:
            nonlocal reached
            reached += 1
            if reached == 5:
                all_reached.set()
            await never.wait()

        calls = [asyncio.ensure_future(a.call("b", "hang", i, timeout=None)) for i in range(5)]
        async with asyncio.timeout(T):
            await all_reached.wait()
        assert not any(c.done() for c in calls)
        if how == "close":
            await b.close()
        elif how == "abort-remote":
            transport = link_of(b, "a").transport
            assert transport is not None
            transport.abort()
        else:
            transport = link_of(a, "b").transport
            assert transport is not None
            transport.abort()
        # at once: by the time the first one has finished, so have all the others
        _, pending = await asyncio.wait(calls, timeout=T, return_when=asyncio.FIRST_COMPLETED)
        assert not pending
        results = [c.exception() for c in calls]
        assert all(isinstance(r, PeerUnavailable) and r.peer == "b" for r in results), results
        # and now there is no link at all
        with pytest.raises(PeerUnavailable):
            await a.call("b", "hang", 0, timeout=None)


async def test_old_incarnation_is_unavailable() -> None:
    port = free_port()
    a = Node(config("a", [f"127.0.0.1:{port}"]))
    b1 = Node(config("b", listen=f"127.0.0.1:{port}"))
    b2: Node | None = None
    try:
        await b1.start()
        await a.start()
        await a.wait_for_peers(1, timeout=T)
        old = a.peers["b"]
        sub = a.events(current=False)
        await b1.close()
        b2 = Node(config("b", listen=f"127.0.0.1:{port}"))
        inbox = Inbox()
        b2.handler("x")(inbox.add)
        await b2.start()
        async with asyncio.timeout(T):
            async for ev in sub:
                if isinstance(ev, PeerJoined) and ev.peer.name == "b":
                    break
        new = a.peers["b"]
        assert new.incarnation == b2.incarnation != old.incarnation
        with pytest.raises(PeerUnavailable, match="incarnation"):
            await a.send(old, "x", "to the old one")
        with pytest.raises(PeerUnavailable):
            await a.call(old, "x", "to the old one")
        with pytest.raises(PeerUnavailable):
            a.send_nowait(old, "x", "to the old one")
        await a.send(new, "x", "to the new one")
        await a.send("b", "x", "by name")
        await inbox.until(2)
        assert inbox.messages == ["to the new one", "by name"]
    finally:
        await a.close()
        await b1.close()
        if b2 is not None:
            await b2.close()


async def test_message_sent_on_join_survives_a_simultaneous_dial() -> None:
    """Both nodes dial each other at once; each greets the other from ``on_join``.
    The two links are resolved to one, and a message sent meanwhile must still arrive
    (or its loss be reported with a PeerLeft): never a silent drop. Today the greeting
    sent on the link that loses is dropped by the receiver, which closes that link
    without handling what arrived on it, and neither side is told."""
    pa, pb = free_port(), free_port()
    a = Node(config("a", [f"127.0.0.1:{pb}"], listen=f"127.0.0.1:{pa}"))
    b = Node(config("b", [f"127.0.0.1:{pa}"], listen=f"127.0.0.1:{pb}"))
    got = {"a": Inbox(), "b": Inbox()}
    for node in (a, b):
        node.handler("hello")(got[node.name].add)

        async def greet(peer: Peer, node: Node = node) -> None:
            await node.send(peer, "hello", f"from {node.name}")

        node.on_join(greet)
    leaves = {"a": Leaves(a), "b": Leaves(b)}
    try:
        await asyncio.gather(a.start(), b.start())
        await a.wait_for_peers(1, timeout=T)
        await b.wait_for_peers(1, timeout=T)
        for name, other in (("a", "b"), ("b", "a")):
            try:
                await got[name].until(1, timeout=2.0)
            except TimeoutError:
                pass
            assert got[name].messages == [f"from {other}"] or leaves[name].events, (
                f"{name} never got {other}'s greeting and no leave was reported")
    finally:
        for rec in leaves.values():
            rec.stop()
        await a.close()
        await b.close()


# -- values and sizes ------------------------------------------------------------------


class Opaque:
    pass


BAD_VALUES = [object(), {1, 2}, Opaque(), [1, 2, object()], {"ok": 1, "bad": {3}}]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=["object", "set", "instance", "nested-list", "nested-dict"])
async def test_uncarriable_value_is_type_error_and_loses_nothing(bad: Any) -> None:
    async with mesh(2) as (a, b):
        inbox = Inbox()
        b.handler("x")(inbox.add)

        @b.handler("echo")
        def echo(x: Any, sender: Peer) -> Any:
            return x

        # in one loop iteration: the good messages share a frame with the failed one
        await a.send("b", "x", "before")
        with pytest.raises(TypeError):
            await a.send("b", "x", bad)
        with pytest.raises(TypeError):
            a.send_nowait("b", "x", bad)
        with pytest.raises(TypeError):
            await a.broadcast("x", bad)
        with pytest.raises(TypeError):
            await a.call("b", "echo", bad)
        await a.send("b", "x", "after")
        await inbox.until(2)
        assert await a.call("b", "echo", "still up") == "still up"
        assert inbox.messages == ["before", "after"]
        assert link_of(a, "b").calls == {}


@pytest.mark.parametrize(
    "bad",
    [2**64, -(2**63) - 1, "\ud800"],
    ids=["int-too-big", "int-too-small", "lone-surrogate"],
)
async def test_other_uncarriable_values_are_type_error(bad: Any) -> None:
    """DESIGN: anything msgpack cannot carry is a TypeError at the sender; msgpack raises
    OverflowError / UnicodeEncodeError for these, and peerlink passes them through."""
    async with mesh(2) as (a, b):
        inbox = Inbox()
        b.handler("x")(inbox.add)
        await a.send("b", "x", "before")
        with pytest.raises(TypeError):
            await a.send("b", "x", bad)
        await a.send("b", "x", "after")
        await inbox.until(2)
        assert inbox.messages == ["before", "after"]


async def test_dict_with_tuple_keys_does_not_kill_the_link() -> None:
    """msgpack packs ``{(1, 2): "x"}`` (the key as an array), but the receiver cannot
    rebuild a dict with a list key: the sender must refuse it (TypeError) or the
    receiver must survive it; today the receiver closes the link (protocol_error),
    losing whatever shared its frame and failing every call in flight."""
    async with mesh(2) as (a, b):
        inbox = Inbox()
        b.handler("x")(inbox.add)
        b.handler("echo")(lambda x, sender: x)
        await a.send("b", "x", "before")
        try:
            await a.send("b", "x", {(1, 2): "tuple key"})
        except TypeError:
            pass  # refusing it at the sender is fine
        await a.send("b", "x", "after")
        # queued behind the bad message: answered only if the link survived it
        assert await a.call("b", "echo", "still up") == "still up"
        assert inbox.messages[0] == "before" and inbox.messages[-1] == "after"


@pytest.mark.parametrize("op", ["send", "call", "broadcast"])
async def test_unhashable_topic_does_not_kill_the_link(op: str) -> None:
    """Topics are str (``handler()`` accepts nothing else). A list topic packs fine but
    the receiver cannot look it up: the sender must refuse it (TypeError) or the
    receiver must count it as unknown; today the receiver closes the link."""
    async with mesh(2) as (a, b):
        b.handler("echo")(lambda x, sender: x)
        bad_topic: Any = ["not", "a", "str"]
        try:
            if op == "send":
                await a.send("b", bad_topic, 1)
            elif op == "broadcast":
                await a.broadcast(bad_topic, 1)
            else:
                with pytest.raises(RemoteError):
                    await a.call("b", bad_topic, 1)
        except TypeError:
            pass  # refusing it at the sender is fine
        assert await a.call("b", "echo", "still up") == "still up"


async def test_message_too_large_is_refused_at_the_sender() -> None:
    limit = 64 * 1024
    async with mesh(2, max_frame=limit) as (a, b):
        inbox = Inbox()
        b.handler("x")(inbox.add)
        b.handler("echo")(lambda x, sender: len(x))
        big = b"x" * (limit + 1)
        await a.send("b", "x", b"small")
        with pytest.raises(MessageTooLarge) as info:
            await a.send("b", "x", big)
        assert isinstance(info.value, ValueError)
        assert info.value.limit == limit and info.value.size > limit
        with pytest.raises(MessageTooLarge):
            await a.call("b", "echo", big)
        with pytest.raises(MessageTooLarge):
            await a.broadcast("x", big)
        with pytest.raises(MessageTooLarge):
            a.send_nowait("b", "x", big)
        # the largest message that fits: its whole envelope is exactly max_frame bytes
        n = limit - 16
        while len(msgpack.packb([SEND, "x", b"y" * (n + 1)])) <= limit:
            n += 1
        assert len(msgpack.packb([SEND, "x", b"y" * n])) == limit
        with pytest.raises(MessageTooLarge):
            await a.send("b", "x", b"y" * (n + 1))
        largest = b"y" * n
        for _ in range(3):
            await a.send("b", "x", largest)
            await a.send("b", "x", b"between")
        await a.send("b", "x", b"last")
        await inbox.until(8)
        assert inbox.messages == [b"small", *[largest, b"between"] * 3, b"last"]
        assert await a.call("b", "echo", b"y" * (limit - 100)) == limit - 100
        assert link_of(a, "b").calls == {}


async def test_large_messages_mixed_with_small_ones() -> None:
    """Messages far above the coalescing batch and the decoder's read size (default
    max_frame 8 MiB) arrive whole and in order among small ones."""
    async with mesh(2) as (a, b):
        inbox = Inbox()
        b.handler("x")(inbox.add)
        sizes = [10, 300_000, 10, 3_000_000, 1_000_000, 10, 8 * 2**20 - 64]
        for i, size in enumerate(sizes):
            await a.send("b", "x", [i, b"z" * size])
        await inbox.until(len(sizes))
        assert [(m[0], len(m[1])) for m in inbox.messages] == list(enumerate(sizes))


# -- failing handlers ------------------------------------------------------------------


async def test_raising_handler_does_not_break_the_link(caplog: pytest.LogCaptureFixture) -> None:
    async with mesh(2) as (a, b):
        leaves = Leaves(a)
        inbox = Inbox()

        @b.handler("bad-sync")
        def bad_sync(x: Any, sender: Peer) -> None:
            raise RuntimeError(f"sync {x}")

        @b.handler("bad-async")
        async def bad_async(x: Any, sender: Peer) -> None:
            await asyncio.sleep(0)
            raise RuntimeError(f"async {x}")

        b.handler("good")(inbox.add)
        for i in range(3):
            await a.send("b", "bad-sync", i)
            await a.send("b", "good", i)
            await a.send("b", "bad-async", i)
        await a.send("b", "good", "end")
        await inbox.until(4)
        assert inbox.messages == [0, 1, 2, "end"]
        assert b.status()["messaging"]["handler_errors"] == 6
        assert "bad-sync" in caplog.text and "bad-async" in caplog.text
        assert leaves.events == [] and set(a.peers) == {"b"}
        leaves.stop()


async def _raise_cancelled() -> None:
    """What a handler sees when it awaits a task or future someone else cancelled."""
    fut = asyncio.get_running_loop().create_future()
    fut.cancel()
    await fut


async def test_handler_leaking_cancelled_error_does_not_stall_the_link() -> None:
    """An async handler that lets a ``CancelledError`` out (it awaited something that
    was cancelled; the handler itself was not) is a failing handler like any other:
    the link's later messages must still be handled."""
    async with mesh(2) as (a, b):
        inbox = Inbox()

        @b.handler("oops")
        async def oops(x: Any, sender: Peer) -> None:
            await _raise_cancelled()

        b.handler("x")(inbox.add)
        await a.send("b", "oops", None)
        await a.send("b", "x", "after")
        await inbox.until(1)
        assert inbox.messages == ["after"]


@pytest.mark.parametrize("concurrent", [False, True], ids=["ordered", "concurrent"])
async def test_call_whose_handler_leaks_cancelled_error_is_answered(concurrent: bool) -> None:
    """The caller gets a RemoteError at once, not a CallTimeout much later."""
    async with mesh(2) as (a, b):
        @b.handler("oops", concurrent=concurrent)
        async def oops(x: Any, sender: Peer) -> None:
            await _raise_cancelled()

        b.handler("echo")(lambda x, sender: x)
        with pytest.raises(RemoteError) as info:
            await a.call("b", "oops", None, timeout=2.0)
        assert info.value.type == "CancelledError"
        assert await a.call("b", "echo", "after") == "after"


async def test_one_handler_per_topic() -> None:
    node = Node(config("solo"))
    node.handler("t")(lambda m, s: None)
    with pytest.raises(ValueError, match="already registered"):
        node.handler("t")(lambda m, s: None)
    async with node:
        node.handler("u")(lambda m, s: None)
        with pytest.raises(ValueError, match="already registered"):
            node.handler("u")(lambda m, s: None)
        with pytest.raises(ValueError, match="already registered"):
            node.handler("t")(lambda m, s: None)


async def test_messaging_on_a_closed_node_raises_node_closed() -> None:
    node = Node(config("solo"))
    with pytest.raises(peerlink.NodeClosed):
        await node.call("x", "t", 1)
    async with node:
        pass
    pending = node.call("x", "t", 1)  # like any coroutine: nothing raised until awaited
    with pytest.raises(peerlink.NodeClosed):
        await pending
    with pytest.raises(peerlink.NodeClosed):
        await node.send("x", "t", 1)
    with pytest.raises(peerlink.NodeClosed):
        await node.broadcast("t", 1)

