"""Presence between real nodes in one event loop: track / update / untrack and the
context-manager and owner-task forms, list() everywhere, coalesced diffs, a full state
for a node that joins late (in parts), removal with one diff when a node leaves, the
grace period for a lost connection, and hostile input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from support.inproc import T, config, link_of, mesh

from peerlink import LeaveReason, Node
from peerlink.presence import PART_ENTRIES, TOPIC, Diff, Presence
from peerlink.presence_state import pack_meta
from peerlink.testing import wait_until


@asynccontextmanager
async def presences(nodes: list[Node], **options: Any) -> AsyncIterator[list[Presence]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Presence(n, **options)) for n in nodes]


def view(p: Presence, topic: str) -> dict[str, list[tuple[str, Any]]]:
    return {k: sorted((m.node, m.meta) for m in metas) for k, metas in p.list(topic).items()}


async def agree(ps: list[Presence], topic: str, expected: dict[str, list[tuple[str, Any]]]) -> None:
    for p in ps:
        await p.wait(lambda p=p: view(p, topic) == expected, timeout=T)  # type: ignore[misc]


def flat(diff: Diff) -> tuple[list[tuple[str, str, Any]], list[tuple[str, str, Any]]]:
    def f(side: dict[str, Any]) -> list[tuple[str, str, Any]]:
        return sorted((k, m.node, m.meta) for k, metas in side.items() for m in metas)
    return f(diff.joins), f(diff.leaves)


async def test_track_update_untrack_are_seen_everywhere_with_diffs() -> None:
    async with mesh(3) as nodes, presences(nodes) as ps:
        pa, pb, pc = ps
        diffs = pc.subscribe("room")
        ana = pa.track("room", "ana", {"tab": 1})
        pb.track("room", "bo", None)
        await agree(ps, "room", {"ana": [("a", {"tab": 1})], "bo": [("b", None)]})
        joins: list[Any] = []
        while len(joins) < 2:
            j, leaves = flat(await diffs.get(T))
            joins += j
            assert leaves == []
        assert sorted(joins) == [("ana", "a", {"tab": 1}), ("bo", "b", None)]

        ana.update({"tab": 2})
        await agree(ps, "room", {"ana": [("a", {"tab": 2})], "bo": [("b", None)]})
        # an update is one diff: the old meta leaves and the new one joins
        assert flat(await diffs.get(T)) == ([("ana", "a", {"tab": 2})], [("ana", "a", {"tab": 1})])

        assert pb.untrack("room", "bo") == 1
        await agree(ps, "room", {"ana": [("a", {"tab": 2})]})
        assert flat(await diffs.get(T)) == ([], [("bo", "b", None)])
        assert pa.list("room")["ana"][0].ref == ana.ref


async def test_the_same_key_on_two_nodes_has_two_metas() -> None:
    async with mesh(2) as nodes, presences(nodes) as ps:
        ps[0].track("room", "ana", "phone")
        ps[1].track("room", "ana", "laptop")
        await agree(ps, "room", {"ana": [("a", "phone"), ("b", "laptop")]})


async def test_block_and_owner_task_end_untrack() -> None:
    async with mesh(2) as nodes, presences(nodes) as (pa, pb):
        with pa.track("room", "block", 1, owner=None):
            await agree([pa, pb], "room", {"block": [("a", 1)]})
        await agree([pa, pb], "room", {})

        started = asyncio.Event()

        async def session() -> None:
            pa.track("room", "task", 2)  # owned by this task
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(session())
        await started.wait()
        await agree([pa, pb], "room", {"task": [("a", 2)]})
        task.cancel()
        await agree([pa, pb], "room", {})


async def test_diffs_are_coalesced_for_a_busy_consumer() -> None:
    async with mesh(2) as nodes, presences(nodes) as (pa, pb):
        diffs = pb.subscribe("room")
        handles = [pa.track("room", f"u{i}", i, owner=None) for i in range(50)]
        for h in handles[:10]:
            h.untrack()
        await agree([pb], "room", {f"u{i}": [("a", i)] for i in range(10, 50)})
        joins, leaves = flat(await diffs.get(T))  # one diff; 10 joins cancelled by leaves
        assert len(joins) == 40 and leaves == []


async def test_a_late_node_gets_the_whole_state_in_parts() -> None:
    async with mesh(2) as (a, b), presences([a, b]) as (pa, pb):
        n = PART_ENTRIES * 2 + 10
        for i in range(n):
            pa.track("big", f"k{i}", i, owner=None)
        pb.track("big", "bo", None, owner=None)
        late = Node(config("c", [a.address_str, b.address_str]))
        async with late, Presence(late) as pc:
            await pc.wait(lambda: len(pc.list("big")) == n + 1, timeout=T)
            assert view(pc, "big") == view(pa, "big")


async def test_a_node_that_leaves_takes_its_entries_with_one_diff_per_topic() -> None:
    async with mesh(2) as (a, b), presences([a, b]) as (pa, _):
        c = Node(config("c", [a.address_str, b.address_str]))
        async with c, Presence(c) as pc:
            for i in range(20):
                pc.track("room", f"c{i}", i, owner=None)
            pc.track("other", "x", None, owner=None)
            await pa.wait(lambda: len(pa.list("room")) == 20, timeout=T)
            diffs = pa.subscribe("room")
        await pa.wait(lambda: not pa.list("room") and not pa.list("other"), timeout=T)
        joins, leaves = flat(await diffs.get(T))
        assert joins == [] and len(leaves) == 20
        assert diffs._pop() is None  # nothing more: it was one diff


@pytest.mark.parametrize("grace", [0.0, 30.0])
async def test_a_quick_reconnect_loses_nothing(grace: float) -> None:
    async with mesh(2) as (a, b), presences([a, b], grace=grace) as (pa, pb):
        pb.track("room", "bo", None, owner=None)
        await agree([pa], "room", {"bo": [("b", None)]})
        diffs = pa.subscribe("room")
        left = a.events(current=False)
        link_of(a, "b").abort(LeaveReason.CONNECTION_LOST)
        ev = await left.get(T)
        assert getattr(ev, "reason", None) is LeaveReason.CONNECTION_LOST
        await a.wait_for_peers(1, timeout=T)  # b is dialled again: same incarnation
        await agree([pa], "room", {"bo": [("b", None)]})
        # kept through the outage, or removed and back with b's state before anyone
        # looked: either way the coalesced diffs net to nothing
        assert diffs._pop() is None
        assert pa.status()["in_grace"] == []


@pytest.mark.parametrize("body", [
    "garbage", [], [9, 1, 2], [2, "x", [], 1], [2, [1, "t", "k", b"\xc1"], [], 1],
    [2, [], ["x"], 1], [2, [], [], "x"], [2, [], []], [0, "id", []], [0, 3, []], [1, 7, 0],
    [2, [0, "t", "k", b"\xc0"], [], 1], [3],
])
async def test_malformed_presence_input_is_dropped_and_counted(body: Any) -> None:
    async with mesh(2) as (a, b), presences([a, b]) as (pa, pb):
        await a.send("b", TOPIC, body)
        pa.track("room", "ana", None, owner=None)
        await agree([pb], "room", {"ana": [("a", None)]})
        # an end without its parts, a lone part, a request for our state: not errors
        assert pb.status()["rejected"] == (0 if body in ([1, 7, 0], [0, 3, []], [3]) else 1)
        assert b.peers["a"].incarnation == a.incarnation


async def test_limits_bound_what_a_peer_can_make_us_hold() -> None:
    from peerlink.presence_state import Limits
    async with mesh(2) as (a, b), presences([a]) as (pa,), \
            presences([b], limits=Limits(max_entries=100)) as (pb,):
        for i in range(150):
            pa.track("room", f"k{i}", None, owner=None)
        await wait_until(lambda: pb.status()["rejected"] >= 1, timeout=T)
        pa.track("marker", "m", None, owner=None)  # a later, small delta is accepted
        await agree([pb], "marker", {"m": [("a", None)]})
        assert pb.list("room") == {}
        with pytest.raises(ValueError):
            pa.track("room", "big", "x" * 5000)
        with pytest.raises(TypeError):
            pa.track("room", "obj", object())


async def test_an_end_without_its_parts_wipes_nothing_and_an_empty_state_does() -> None:
    async with mesh(2) as (a, b), presences([a, b]) as (pa, pb):
        pa.track("room", "ana", None, owner=None)
        await agree([pb], "room", {"ana": [("a", None)]})
        await a.send("b", TOPIC, [1, 12345, 2**40])  # the end of a state never begun
        pa.track("room", "bo", None, owner=None)
        await agree([pb], "room", {"ana": [("a", None)], "bo": [("a", None)]})
        # a's real whole state, empty: everything a had is gone at b
        await a.send("b", TOPIC, [0, 777, []])
        await a.send("b", TOPIC, [1, 777, pa.state.clock])
        await pb.wait(lambda: pb.list("room") == {}, timeout=T)


async def test_a_lost_delta_is_noticed_and_repaired_with_the_whole_state() -> None:
    async with mesh(2) as (a, b), presences([a, b]) as (pa, pb):
        pa.track("room", "ana", None, owner=None)
        await agree([pb], "room", {"ana": [("a", None)]})
        # a delta that never arrives (as if lost with a link swapped during a
        # simultaneous dial): a's state moves on without b hearing of it
        pa.state.add("room", "lost", pack_meta(1))
        assert pa.state.take_delta() is not None
        pa.track("room", "bo", None, owner=None)  # the next delta shows b the gap
        await agree([pb], "room", {"ana": [("a", None)], "bo": [("a", None)], "lost": [("a", 1)]})
        assert pb.status()["resyncs"] == 1


async def test_a_burst_larger_than_one_message_is_sent_once() -> None:
    # a delta split into several messages: its first parts must not look like a gap
    # (which made every receiver of a large burst ask for the whole state on top of it)
    async with mesh(2) as (a, b), presences([a, b]) as (pa, pb):
        pa.track("big", "first", None, owner=None)  # the whole states of the link's
        await agree([pb], "big", {"first": [("a", None)]})  # forming are behind us
        n = PART_ENTRIES * 2 + 10
        for i in range(n):
            pa.track("big", f"k{i}", i, owner=None)
        pa.untrack("big", "k0")  # a removed dot too: the parts' dots have holes
        await pb.wait(lambda: len(pb.list("big")) == n, timeout=T)  # "first" and k1.. on
        assert view(pb, "big") == view(pa, "big")
        assert pb.status()["resyncs"] == 0


async def test_the_end_of_a_whole_state_answers_whether_it_was_applied() -> None:
    async with mesh(2) as (a, b), presences([a, b]) as (pa, _pb):
        # without its parts (lost): "not applied", so the sender sends it all again
        assert await a.call("b", TOPIC, [1, 999, 5], timeout=T) is False
        await a.send("b", TOPIC, [0, 1000, []])
        assert await a.call("b", TOPIC, [1, 1000, pa.state.clock], timeout=T) is True
