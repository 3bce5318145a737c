"""Crash, hang, restart, graceful stop and wrong credentials with real processes (issue 3).

Every test also gets the ``node_factory`` teardown check: join/leave alternate per
(name, incarnation) over the whole run, at most one incarnation of a name is up at a
time, and no node ever reports itself.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from typing import Any

import pytest
from support.nodeproc import NodeFactory, NodeProcess, static_url, wait_mesh


async def wait_all(nodes: list[NodeProcess], kind: str, peer: str, marks: dict[str, int],
                   **kwargs: Any) -> list[dict[str, Any]]:
    """``kind`` of ``peer`` at each of ``nodes``, after each node's mark."""
    return await asyncio.gather(*(
        n.wait_event(kind, peer=peer, after=marks[n.name], **kwargs) for n in nodes
    ))


def marks_of(*nodes: NodeProcess) -> dict[str, int]:
    return {n.name: n.mark() for n in nodes}


def assert_no_leave_among(nodes: list[NodeProcess]) -> None:
    names = {n.name for n in nodes}
    for n in nodes:
        lost = [ev for ev in n.find("leave") if ev["peer"] in names]
        assert lost == [], f"{n.name} lost a healthy peer: {lost}"


async def test_kill9_peers_see_connection_lost(node_factory: NodeFactory) -> None:
    a, b, c = await node_factory.start_mesh(["a", "b", "c"])
    marks = marks_of(a, b)
    c.kill()
    events = await wait_all([a, b], "leave", "c", marks)
    assert [ev["reason"] for ev in events] == ["connection_lost"] * 2
    assert all(ev["incarnation"] == c.incarnation for ev in events)
    assert_no_leave_among([a, b])


async def test_sigstop_gives_timeout_and_sigcont_rejoins(node_factory: NodeFactory) -> None:
    a, b, c = await node_factory.start_mesh(["a", "b", "c"])
    marks = marks_of(a, b, c)
    c.stop()
    events = await wait_all([a, b], "leave", "c", marks)
    assert [ev["reason"] for ev in events] == ["timeout"] * 2

    c.cont()
    # Same process, same incarnation: a new join of that incarnation after its leave.
    await wait_all([a, b], "join", "c", marks, incarnation=c.incarnation)
    # c lost both links while it was stopped, and links them again.
    for peer in ("a", "b"):
        leave = await c.wait_event("leave", peer=peer, after=marks["c"])
        assert leave["reason"] in ("timeout", "connection_lost"), leave
        await c.wait_event("join", peer=peer, after=c.events.index(leave) + 1)
    assert_no_leave_among([a, b])


async def test_restart_after_kill_joins_with_a_new_incarnation(
    node_factory: NodeFactory,
) -> None:
    a, b, c = await node_factory.start_mesh(["a", "b", "c"])
    marks = marks_of(a, b)
    c.kill()
    await wait_all([a, b], "leave", "c", marks, reason="connection_lost")
    await c.wait_exit()

    c2 = await node_factory.restart(c)  # same name, same address
    assert c2.incarnation != c.incarnation
    joins = await wait_all([a, b], "join", "c", marks, incarnation=c2.incarnation)
    assert all(ev["address"] == c.address for ev in joins)
    await wait_mesh([a, b, c2])
    assert_no_leave_among([a, b])


async def test_quick_restart_leaves_old_incarnation_before_joining_new(
    node_factory: NodeFactory,
) -> None:
    # The restart may race the death notice: peers must report leave of the old
    # incarnation (connection_lost, or restarted if the new one came first), then join.
    a, b, c = await node_factory.start_mesh(["a", "b", "c"])
    marks = marks_of(a, b)
    c.kill()
    await c.wait_exit()
    c2 = await node_factory.restart(c)
    joins = await wait_all([a, b], "join", "c", marks, incarnation=c2.incarnation)
    for node, join in zip([a, b], joins, strict=True):
        leaves = node.find("leave", "c", after=marks[node.name])
        assert len(leaves) == 1, node.events
        assert leaves[0]["incarnation"] == c.incarnation
        assert leaves[0]["reason"] in ("connection_lost", "restarted"), leaves
        assert node.events.index(leaves[0]) < node.events.index(join)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_graceful_stop_says_goodbye_and_exits_0(
    node_factory: NodeFactory, sig: signal.Signals,
) -> None:
    a, b, c = await node_factory.start_mesh(["a", "b", "c"])
    marks = marks_of(a, b)
    c.signal(sig)
    assert await c.wait_exit() == 0, c.stderr_tail()
    events = await wait_all([a, b], "leave", "c", marks)
    assert [ev["reason"] for ev in events] == ["shutdown"] * 2
    assert_no_leave_among([a, b])


async def test_wrong_cookie_or_cluster_never_joins(node_factory: NodeFactory) -> None:
    addresses = [node_factory.address() for _ in range(5)]
    url = static_url(addresses)  # everyone lists everyone, outsiders included
    a, b = await asyncio.gather(*(
        node_factory.start(name, listen=addr, discovery=[url])
        for name, addr in zip(["a", "b"], addresses[:2], strict=True)
    ))
    await wait_mesh([a, b])

    wrong_cookie = node_factory.workdir / "wrong-cookie"
    wrong_cookie.write_text(secrets.token_hex(16) + "\n")
    x = await node_factory.start("x", listen=addresses[2], discovery=[url],
                                 cookie_file=wrong_cookie)
    y = await node_factory.start("y", listen=addresses[3], discovery=[url], cluster="other")
    # Barrier: a healthy node started after the outsiders links with a and b, so the
    # outsiders have had their chance to dial and be dialled.
    d = await node_factory.start("d", listen=addresses[4], discovery=[url])
    await wait_mesh([a, b, d])

    for node in (a, b, d):
        strangers = [ev for ev in node.events if ev.get("peer") in ("x", "y")]
        assert strangers == [], f"{node.name} linked an outsider: {strangers}"
    for outsider in (x, y):
        assert outsider.returncode is None, f"{outsider.name} died: {outsider.stderr_tail()}"
        assert outsider.events[1:] == [], f"{outsider.name} linked: {outsider.events}"
    assert_no_leave_among([a, b, d])
