"""Real ``peerlink node`` processes in network namespaces find each other by mDNS only
(issue 7): IPv4, IPv6-only and dual-stack; graceful stop, kill -9, restart, and a
partition at the bridge followed by a heal.

Each namespace is a host on one bridge (``support.lab``); nodes get no static list,
so every join here was discovered by multicast DNS.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

import pytest
from support.lab import Lab, requires_netns
from support.nodeproc import NodeFactory, NodeProcess, wait_mesh

pytestmark = [requires_netns, pytest.mark.slow]

PORT = 4370
# Fast re-confirmation so that a crashed or partitioned peer leaves the candidate set
# within a few seconds (defaults: 10 s and 1 s).
FAST = "recheck=1.5&confirm_timeout=1"


async def start_nodes(node_factory: NodeFactory, lab: Lab, url: str, *, v6: bool = False,
                      advertise: bool = True, listen: str | None = None) -> list[NodeProcess]:
    def addr(i: int) -> str:
        return f"[{lab.ip6(i)}]:{PORT}" if v6 else f"{lab.ip4(i)}:{PORT}"

    return list(await asyncio.gather(*(
        node_factory.start(f"n{i}", listen=listen or addr(i), advertise=addr(i) if advertise else None,
                           discovery=[url], prefix=lab.exec_prefix(i), extra=["--log-level", "info"])
        for i in range(1, lab.n + 1)
    )))


async def wait_log(node: NodeProcess, pred: Callable[[str], bool], what: str,
                   timeout: float = 15.0) -> str:
    """Poll the node's stderr log (INFO) until ``pred`` holds for it."""
    deadline = time.monotonic() + timeout
    while True:
        text = node.log_path.read_text(errors="replace")
        if pred(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.name}: no {what} in its log within {timeout:g}s:\n"
                                 + node.stderr_tail(60))
        await asyncio.sleep(0.1)


def candidates(text: str) -> str | None:
    """The candidate list the mdns strategy last reported (the runner logs each change
    at INFO as ``<strategy>: N candidate(s): a:p, b:q`` or ``...: none``)."""
    lines = [x for x in text.splitlines() if "mdns://" in x and "candidate(s):" in x]
    return lines[-1].split("candidate(s):", 1)[1].strip() if lines else None


def lists_exactly(expected: list[str], text: str) -> bool:
    return sorted((candidates(text) or "").split(", ")) == expected


def count(text: str, needle: str) -> int:
    return text.count(needle)


async def test_ipv4_mesh_stop_kill_restart_partition_heal(
    node_factory: NodeFactory, lab: Callable[[int], Lab]
) -> None:
    net = lab(3)
    url = f"mdns://?interfaces=eth0&ip=v4&{FAST}"
    n1, n2, n3 = await start_nodes(node_factory, net, url)
    await wait_mesh([n1, n2, n3], timeout=20)
    for node in (n1, n2, n3):
        for ev in node.find("join"):
            i = int(ev["peer"][1:])
            assert ev["address"] == f"{net.ip4(i)}:{PORT}", ev

    # graceful stop: goodbye on the link and on mDNS
    marks = {n.name: n.mark() for n in (n1, n2)}
    assert await n3.terminate() == 0
    for node in (n1, n2):
        await node.wait_event("leave", "n3", reason="shutdown", after=marks[node.name])
    # ... and n3 is no longer a candidate
    for node in (n1, n2):
        await wait_log(node, lambda t: candidates(t) is not None and net.ip4(3) not in (candidates(t) or ""),
                       "a candidate list without n3")
    stale_n2 = "'n2._peerlink._tcp.local.' did not answer"

    # kill -9: the link reports the leave; mDNS says nothing, so re-confirmation must
    # drop the stale candidate (it is then no longer dialled)
    mark = n1.mark()
    n2.kill()
    ev = await n1.wait_event("leave", "n2", after=mark)
    assert ev["reason"] in ("connection_lost", "timeout"), ev
    await wait_log(n1, lambda t: stale_n2 in t, "re-confirmation failure for n2")
    await wait_log(n1, lambda t: candidates(t) == "none", "an empty candidate list")
    await n2.wait_exit()

    # restart with a new incarnation under the same name: found again, joined
    mark = n1.mark()
    n2b = await node_factory.restart(n2)
    assert n2b.incarnation != n2.incarnation
    await n1.wait_event("join", "n2", incarnation=n2b.incarnation, after=mark, timeout=20)
    await n2b.wait_event("join", "n1", incarnation=n1.incarnation, timeout=20)

    # partition n1 | n2 at the bridge: both the link and mDNS go quiet
    marks = {n1.name: n1.mark(), n2b.name: n2b.mark()}
    log_before = n1.log_path.read_text(errors="replace")
    net.partition(1, 2)
    await n1.wait_event("leave", "n2", after=marks["n1"], timeout=20)
    await n2b.wait_event("leave", "n1", after=marks["n2"], timeout=20)
    await wait_log(n1, lambda t: count(t, stale_n2) > count(log_before, stale_n2),
                   "n2 dropped by re-confirmation during the partition")
    # heal: the stale candidate answers again and the link comes back
    net.heal()
    await wait_log(n1, lambda t: "'n2._peerlink._tcp.local.' answers again" in t, "n2 back")
    await n1.wait_event("join", "n2", after=marks["n1"], incarnation=n2b.incarnation, timeout=20)
    await n2b.wait_event("join", "n1", after=marks["n2"], incarnation=n1.incarnation, timeout=20)


async def test_ipv6_only_mesh(node_factory: NodeFactory, lab: Callable[[int], Lab]) -> None:
    net = lab(3)
    nodes = await start_nodes(node_factory, net, "mdns://?interfaces=eth0&ip=v6", v6=True)
    await wait_mesh(nodes, timeout=20)
    for node in nodes:
        for ev in node.find("join"):
            assert ev["address"] == f"[{net.ip6(int(ev['peer'][1:]))}]:{PORT}", ev


async def test_dual_stack_mdns_with_a_wildcard_listener(
    node_factory: NodeFactory, lab: Callable[[int], Lab]
) -> None:
    # default interfaces (eth0: lo is loopback) and no --advertise: a "[::]" listener
    # serves both families, so each node advertises its IPv4 and IPv6 address over mDNS
    # spoken on both families; peers dial the IPv4 one (preferred with ip=any)
    net = lab(3)
    nodes = await start_nodes(node_factory, net, "mdns://", advertise=False,
                              listen=f"[::]:{PORT}")
    await wait_mesh(nodes, timeout=20)
    for i, node in enumerate(nodes, 1):
        text = await wait_log(node, lambda t: "mdns: advertising 'n" in t, "the registration")
        line = next(x for x in text.splitlines() if "mdns: advertising 'n" in x)
        assert f"{net.ip4(i)},{net.ip6(i)}:{PORT}" in line, line
        # every peer was found at its IPv4 address (preferred with ip=any)
        expected = [f"{net.ip4(j)}:{PORT}" for j in (1, 2, 3) if j != i]
        await wait_log(node, functools.partial(lists_exactly, expected), f"candidates {expected}")
