"""Presence across real node processes (``tests/support/presence_node.py``): after
kill -9, restart, SIGTERM and (in network namespaces) a partition that heals, every
node's ``list()`` equals the truth, and each observer sees every change exactly once
in its diffs; a grace period rides out a short partition without any diff."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.lab import Lab, requires_netns
from support.nodeproc import NodeFactory, NodeProcess, static_url, wait_mesh

PROGRAM = [sys.executable, str(Path(__file__).resolve().parent.parent / "support" / "presence_node.py")]
TRACK = 5


def pairs(entries: list[list[str]]) -> set[tuple[str, str]]:
    return {(key, node) for key, node, _ in entries}


def truth(*nodes: NodeProcess) -> set[tuple[str, str]]:
    return {(f"{n.name}-{i}", n.name) for n in nodes for i in range(TRACK)}


def last_view(events: list[dict[str, Any]]) -> set[tuple[str, str]] | None:
    views = [ev for ev in events if ev.get("event") == "view"]
    return pairs(views[-1]["entries"]) if views else None


async def views_equal(expected: set[tuple[str, str]], *nodes: NodeProcess, timeout: float = 15) -> None:
    await asyncio.gather(*(n.wait_until(lambda evs: last_view(evs) == expected,
                                        f"view of {len(expected)} entries", timeout=timeout)
                           for n in nodes))


def check_diffs(node: NodeProcess, *, gone_for_good: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Per ref: join, leave, join... (each change once); the final view is exactly
    the refs whose last diff was a join; an incarnation gone for good never rejoins."""
    last: dict[str, str] = {}
    problems = []
    for ev in node.events:
        if ev.get("event") != "diff":
            continue
        for kind, side in (("leave", ev["leaves"]), ("join", ev["joins"])):
            for _key, _node, ref in side:
                if last.get(ref, "leave") == kind:
                    problems.append(f"{kind} of {ref} twice in a row")
                if kind == "join" and ref.split(".")[0] in gone_for_good and ref in last:
                    problems.append(f"{ref} of a departed incarnation came back")
                last[ref] = kind
    views = [ev for ev in node.events if ev.get("event") == "view"]
    shown = {ref for _, _, ref in views[-1]["entries"]} if views else set()
    assert shown == {ref for ref, kind in last.items() if kind == "join"}, node.events[-5:]
    assert problems == [], problems


async def test_kill_restart_and_sigterm_converge_to_the_truth(node_factory: NodeFactory) -> None:
    extra = ["--track", str(TRACK)]
    a, b, c = await node_factory.start_mesh(["a", "b", "c"], command=PROGRAM, extra=extra)
    await views_equal(truth(a, b, c), a, b, c)

    old_c = c.incarnation
    c.kill()
    await c.wait_exit()
    await views_equal(truth(a, b), a, b)

    c2 = await node_factory.restart(c)
    await views_equal(truth(a, b, c2), a, b, c2)
    assert {r.split(".")[0] for _, n, r in
            [e for ev in a.events if ev.get("event") == "view" for e in ev["entries"]][-15:]
            if n == "c"} == {c2.incarnation}

    assert await b.terminate() == 0
    await views_equal(truth(a, c2), a, c2)
    for node in (a, b, c2):
        check_diffs(node, gone_for_good={old_c})


async def start_lab(lab: Lab, factory: NodeFactory, extra: list[str]) -> list[NodeProcess]:
    addresses = lab.addresses(4370)
    url = static_url(addresses)
    nodes = await asyncio.gather(*(
        factory.start(f"h{i}", listen=addresses[i - 1], discovery=[url], prefix=lab.exec_prefix(i),
                      command=PROGRAM, extra=extra)
        for i in range(1, lab.n + 1)))
    await wait_mesh(nodes)
    return list(nodes)


@requires_netns
async def test_a_partition_that_heals_converges_without_loss_or_duplicates(
        lab: Callable[[int], Lab], node_factory: NodeFactory) -> None:
    net = lab(3)
    h1, h2, h3 = await start_lab(net, node_factory, ["--track", str(TRACK)])
    everyone = truth(h1, h2, h3)
    await views_equal(everyone, h1, h2, h3)

    net.partition(1, 2)
    await views_equal(truth(h1, h3), h1)
    await views_equal(truth(h2, h3), h2)
    assert last_view(h3.events) == everyone  # h3 still reaches both

    net.heal()
    await views_equal(everyone, h1, h2, h3, timeout=25)
    for node in (h1, h2, h3):
        check_diffs(node)
    assert not h3.find("leave")


@requires_netns
async def test_a_grace_period_rides_out_a_short_partition(
        lab: Callable[[int], Lab], node_factory: NodeFactory) -> None:
    net = lab(2)
    h1, h2 = await start_lab(net, node_factory, ["--track", str(TRACK), "--grace", "60"])
    everyone = truth(h1, h2)
    await views_equal(everyone, h1, h2)
    marks = h1.mark(), h2.mark()

    net.partition(1, 2)
    await asyncio.gather(h1.wait_event("leave", "h2", reason="timeout", after=marks[0]),
                         h2.wait_event("leave", "h1", reason="timeout", after=marks[1]))
    net.heal()
    await asyncio.gather(h1.wait_event("join", "h2", after=marks[0], timeout=20),
                         h2.wait_event("join", "h1", after=marks[1], timeout=20))
    # the full state after the heal reconciles nothing: no diff at all, on either side
    for node, mark in ((h1, marks[0]), (h2, marks[1])):
        assert [ev for ev in node.events[mark:] if ev.get("event") == "diff"] == []
        assert last_view(node.events) == everyone
        check_diffs(node)


pytestmark = pytest.mark.slow
