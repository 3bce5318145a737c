"""Real ``peerlink node`` processes on loopback form a full mesh (issue 3)."""

from __future__ import annotations

import asyncio
from collections import Counter

from support.nodeproc import NodeFactory, NodeProcess, static_url, wait_mesh


def kinds_by_peer(node: NodeProcess, kind: str) -> Counter[str]:
    return Counter(ev["peer"] for ev in node.find(kind))


def assert_joined_once(node: NodeProcess, peers: list[str]) -> None:
    joins = kinds_by_peer(node, "join")
    assert joins == Counter(peers), (
        f"{node.name} should have seen exactly one join of each of {sorted(peers)}, "
        f"saw {dict(joins)}: {node.events}"
    )


async def test_three_nodes_form_a_full_mesh_and_a_late_node_joins(
    node_factory: NodeFactory,
) -> None:
    # Four addresses in one static list (every node lists itself too); d starts later.
    addresses = [node_factory.address() for _ in range(4)]
    url = static_url(addresses)
    names = ["a", "b", "c", "d"]
    first = await asyncio.gather(*(
        node_factory.start(name, listen=addr, discovery=[url])
        for name, addr in zip(names[:3], addresses[:3], strict=True)
    ))
    for node, addr in zip(first, addresses[:3], strict=True):
        assert node.ready["name"] == node.name
        assert node.address == addr
    await wait_mesh(first)

    late = await node_factory.start("d", listen=addresses[3], discovery=[url])
    nodes = [*first, late]
    await wait_mesh(nodes)

    # The late join is a barrier: by now any duplicate or churn of the first three
    # links would have shown up.
    for node in nodes:
        assert_joined_once(node, [n for n in names if n != node.name])
        assert node.find("leave") == [], f"{node.name} saw leaves: {node.events}"
        for ev in node.find("join"):
            peer = next(n for n in nodes if n.name == ev["peer"])
            assert ev["address"] == peer.address
            assert ev["incarnation"] == peer.incarnation
            assert isinstance(ev["metadata"], dict)
    # All incarnations are distinct.
    assert len({n.incarnation for n in nodes}) == len(nodes)


async def test_ten_nodes_form_a_full_mesh(node_factory: NodeFactory) -> None:
    names = [f"n{i:02d}" for i in range(10)]
    nodes = await node_factory.start_mesh(names)  # waits for every join at every node

    # Barrier: one node stops gracefully and everyone else sees exactly that.
    leaver, rest = nodes[0], nodes[1:]
    marks = {n.name: n.mark() for n in rest}
    assert await leaver.terminate() == 0
    await asyncio.gather(*(
        n.wait_event("leave", peer=leaver.name, reason="shutdown", after=marks[n.name])
        for n in rest
    ))
    for node in rest:
        assert_joined_once(node, [n for n in names if n != node.name])
        assert kinds_by_peer(node, "leave") == Counter([leaver.name]), node.events


async def test_node_in_its_own_static_list_never_reports_itself(
    node_factory: NodeFactory,
) -> None:
    # a listens on every loopback address but advertises 127.0.0.1; its static list
    # names it as 127.0.0.2, so only the handshake can tell that the peer is itself.
    port_a = node_factory.free_port("0.0.0.0")
    addr_b = node_factory.address()
    a = await node_factory.start(
        "a", listen=f"0.0.0.0:{port_a}", advertise=f"127.0.0.1:{port_a}",
        discovery=[static_url([f"127.0.0.2:{port_a}", f"127.0.0.1:{port_a}", addr_b])],
    )
    b = await node_factory.start(
        "b", listen=addr_b, discovery=[static_url([addr_b, f"127.0.0.1:{port_a}"])],
    )
    await wait_mesh([a, b])
    # Barrier: b leaves gracefully; a's self-dials started before b even existed.
    mark = a.mark()
    assert await b.terminate() == 0
    await a.wait_event("leave", peer="b", reason="shutdown", after=mark)

    for node in (a, b):
        me = node.ready
        selfish = [ev for ev in node.events[1:]
                   if ev.get("peer") == me["name"] or ev.get("incarnation") == me["incarnation"]]
        assert selfish == [], f"{node.name} reported itself: {selfish}"
    assert [ev["peer"] for ev in a.find("join")] == ["b"]
