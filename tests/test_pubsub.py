"""PubSub between real nodes in one event loop: delivery everywhere (and only once per
link, only where there is interest), publish_from / local_publish, interest on join
and leave, per-publisher order, bounded queues with a loss marker, hostile input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from support.inproc import T, Tap, config, link_of, mesh

from peerlink import Node
from peerlink.pubsub import INTEREST_TOPIC, MSG_TOPIC, Message, MessagesLost, PubSub


@asynccontextmanager
async def pubsubs(nodes: list[Node], **options: Any) -> AsyncIterator[list[PubSub]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(PubSub(n, **options)) for n in nodes]


async def interest_becomes(ps: PubSub, topic: str, names: set[str]) -> None:
    async with asyncio.timeout(T):
        while ps.interested_peers(topic) != names:
            await ps._interest_changed.wait()


async def take(sub: Any, n: int) -> list[Any]:
    return [await sub.get(T) for _ in range(n)]


async def test_publish_reaches_every_subscriber_once_on_every_node() -> None:
    async with mesh(3) as nodes, pubsubs(nodes) as (pa, pb, pc):
        subs = [pa.subscribe("room"), pb.subscribe("room"), pb.subscribe("room"), pc.subscribe("room")]
        await pa.wait_for_interest("room", 2, timeout=T)
        await pa.publish("room", {"text": "hi"})
        for sub in subs:
            assert await sub.get(T) == Message("room", {"text": "hi"}, "a")
        assert all(not s._queue for s in subs)  # exactly once each


async def test_a_message_crosses_a_link_once_and_only_towards_interest() -> None:
    async with mesh(3) as (a, b, c), pubsubs([a, b, c]) as (pa, pb, pc):
        subs = [pb.subscribe("room") for _ in range(5)]
        await pa.wait_for_interest("room", 1, timeout=T)
        to_b, to_c = Tap(link_of(b, "a")), Tap(link_of(c, "a"))
        for i in range(10):
            await pa.publish("room", i)
        for sub in subs:
            assert [m.data for m in await take(sub, 10)] == list(range(10))
        await pa.publish("elsewhere", "x")  # nobody subscribed: crosses no link
        marker = pc.subscribe("marker")
        await pa.wait_for_interest("marker", 1, timeout=T)
        await pa.publish("marker", "last")  # FIFO: c has everything a sent before this
        assert (await marker.get(T)).data == "last"
        sent_to_b = [m for m in to_b.messages if m[1] == MSG_TOPIC]
        assert len(sent_to_b) == 10  # once per publish, not once per subscriber
        assert [m[2][0] for m in to_c.messages if m[1] == MSG_TOPIC] == ["marker"]


async def test_publish_from_skips_own_subscription_and_local_publish_stays_local() -> None:
    async with mesh(2) as (a, b), pubsubs([a, b]) as (pa, pb):
        mine, other, remote = pa.subscribe("t"), pa.subscribe("t"), pb.subscribe("t")
        await pa.wait_for_interest("t", 1, timeout=T)
        await pa.publish_from(mine, "t", 1)
        assert pa.local_publish("t", 2) == 2
        await pa.publish("t", 3)
        assert [m.data for m in await take(other, 3)] == [1, 2, 3]
        assert [m.data for m in await take(mine, 2)] == [2, 3]
        assert [m.data for m in await take(remote, 2)] == [1, 3]  # 2 stayed on a


async def test_interest_is_learned_at_join_and_forgotten_at_leave() -> None:
    async with mesh(2) as (a, b), pubsubs([a, b]) as (pa, pb):
        pa.subscribe("room")
        pb.subscribe("room")
        late = Node(config("c", [a.address_str, b.address_str]))
        async with late, PubSub(late) as pc:
            await late.wait_for_peers(2, timeout=T)
            assert await pc.wait_for_interest("room", 2, timeout=T) == {"a", "b"}
            sub = pc.subscribe("room")
            await pa.wait_for_interest("room", 2, timeout=T)
            await pb.publish("room", "welcome")
            assert (await sub.get(T)).data == "welcome"
            sub.close()
            await interest_becomes(pa, "room", {"b"})
            pc.subscribe("room")
            await pa.wait_for_interest("room", 2, timeout=T)
        # c closed: its interest is gone everywhere
        await interest_becomes(pa, "room", {"b"})


async def test_each_publishers_order_is_kept_at_every_subscriber() -> None:
    async with mesh(3) as nodes, pubsubs(nodes) as (pa, pb, pc):
        sub = pc.subscribe("seq", maxsize=10_000)
        local = pa.subscribe("seq", maxsize=10_000)
        await pa.wait_for_interest("seq", 1, timeout=T)
        await pb.wait_for_interest("seq", 2, timeout=T)

        async def run(ps: PubSub) -> None:
            for i in range(2000):
                await ps.publish("seq", i)
                if i % 100 == 0:
                    await asyncio.sleep(0)  # interleave the publishers

        await asyncio.gather(run(pa), run(pb))
        for s in (sub, local):
            got = await take(s, 4000)
            for publisher in "ab":
                assert [m.data for m in got if m.publisher == publisher] == list(range(2000))


async def test_a_slow_subscriber_gets_a_loss_marker_and_never_stalls_others() -> None:
    async with mesh(2) as (a, b), pubsubs([a, b]) as (pa, pb):
        slow, fast = pb.subscribe("t", maxsize=10), pb.subscribe("t", maxsize=1000)
        await pa.wait_for_interest("t", 1, timeout=T)
        for i in range(100):
            await pa.publish("t", i)
        assert [m.data for m in await take(fast, 100)] == list(range(100))
        got = await take(slow, 11)
        assert [m.data for m in got[:10]] == list(range(10))
        assert got[10] == MessagesLost("t", 90)
        await pa.publish("t", "after")  # the subscriber goes on after the gap
        assert (await slow.get(T)).data == "after"
        assert pb.status()["lost"] == 90


async def test_callback_form_and_unsubscribe() -> None:
    async with mesh(2) as (a, b), pubsubs([a, b]) as (pa, pb):
        got: list[Any] = []
        done = asyncio.Event()

        async def on_message(item: Message) -> None:
            got.append(item.data)
            if len(got) == 3:
                done.set()

        sub = pb.subscribe("cb", on_message)
        await pa.wait_for_interest("cb", 1, timeout=T)
        for i in range(3):
            await pa.publish("cb", i)
        await asyncio.wait_for(done.wait(), T)
        assert got == [0, 1, 2]
        pb.unsubscribe(sub)
        await interest_becomes(pa, "cb", set())


@pytest.mark.parametrize("topic, body", [
    (MSG_TOPIC, "garbage"), (MSG_TOPIC, [1, 2, 3]), (MSG_TOPIC, ["t", "1", None]),
    (INTEREST_TOPIC, []), (INTEREST_TOPIC, [9]), (INTEREST_TOPIC, [0, -1, [], True]),
    (INTEREST_TOPIC, [0, 1, [1, 2], True]), (INTEREST_TOPIC, [1, [["t" * 5000, True, 1]]]),
    (INTEREST_TOPIC, [1, [["t", True]]]), (INTEREST_TOPIC, [1, "x"]),
])
async def test_malformed_input_is_dropped_and_counted(topic: str, body: Any) -> None:
    async with mesh(2) as (a, b), pubsubs([a, b]) as (pa, pb):
        sub = pb.subscribe("t")
        await pa.wait_for_interest("t", 1, timeout=T)
        await a.send("b", topic, body)
        await pa.publish("t", "still fine")  # same link, after the bad message
        assert (await sub.get(T)).data == "still fine"
        assert pb.status()["rejected"] == 1
        assert b.peers["a"].incarnation == a.incarnation  # the link survived


async def test_a_peer_with_too_many_topics_gets_everything_with_bounded_memory() -> None:
    async with mesh(2) as (a, b), pubsubs([a], max_remote_topics=5) as (pa,), \
            pubsubs([b]) as (pb,):
        subs = [pb.subscribe(f"t{i}") for i in range(8)]
        await pa.wait_for_interest("anything", 1, timeout=T)  # b became a wildcard
        assert len(pa._remote["b"].topics) == 0
        await pa.publish("t7", "x")
        assert (await subs[7].get(T)).data == "x"
        await pa.publish("nobody-here", "y")  # sent, and b's node drops it: no subscriber
        await pa.publish("t0", "z")
        assert (await subs[0].get(T)).data == "z"
        assert pb.stats["received"] == 3
