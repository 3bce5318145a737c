"""Nodes in separate network namespaces (TEST-ENV.md section 1): partitions, silent
restarts, IPv6. The first test checks the lab itself, so that a failure below points
at peerlink and not at the fault injection."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable

from support.lab import Lab, list_namespaces, requires_netns
from support.nodeproc import NodeFactory, NodeProcess, static_url, wait_mesh

pytestmark = requires_netns

PORT = 4370

SERVER = """
import socket
s = socket.create_server(("::", 7000), family=socket.AF_INET6, dualstack_ipv6=True)
print("listening", flush=True)
while True:
    s.accept()[0].close()
"""
CLIENT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 7000), timeout=0.5).close()
    print("ok")
except OSError as e:
    print(e)
"""


def probe(lab: Lab, src: int, dst: int, *, v6: bool = False) -> str:
    """"ok", or the error of a TCP connect from node src to node dst (0.5 s timeout)."""
    host = lab.ip6(dst) if v6 else lab.ip4(dst)
    return lab.run(src, sys.executable, "-c", CLIENT, host).stdout.strip()


def test_lab_partition_isolation_and_close(lab: Callable[[int], Lab]) -> None:
    net = lab(3)
    servers = [
        subprocess.Popen([*net.exec_prefix(i), sys.executable, "-c", SERVER],
                         stdout=subprocess.PIPE, text=True)
        for i in (1, 2, 3)
    ]
    try:
        for s in servers:
            assert s.stdout is not None and s.stdout.readline().strip() == "listening"
        assert [probe(net, 1, 2), probe(net, 2, 3), probe(net, 3, 1, v6=True)] == ["ok"] * 3

        net.partition(1, 2)
        assert "timed out" in probe(net, 1, 2)
        assert "timed out" in probe(net, 2, 1, v6=True)
        assert [probe(net, 1, 3), probe(net, 3, 2), probe(net, 2, 3)] == ["ok"] * 3
        net.heal()
        assert [probe(net, 1, 2), probe(net, 2, 1, v6=True)] == ["ok"] * 2

        net.isolate(3)
        assert "timed out" in probe(net, 1, 3)
        assert "timed out" in probe(net, 3, 2, v6=True)
        assert probe(net, 1, 2) == "ok"
        net.unisolate(3)
        assert probe(net, 1, 3) == "ok"

        names = list(net.created)
        assert all(net.pids()[net.ns(i)] for i in (1, 2, 3))
        net.close()
        assert not set(names) & set(list_namespaces())
        for s in servers:  # close() killed them by pid
            assert s.wait(timeout=5) == -9
    finally:
        for s in servers:
            s.kill()
            s.wait()


async def start_lab_nodes(lab: Lab, factory: NodeFactory, *, v6: bool = False,
                          **kwargs: object) -> list[NodeProcess]:
    """One node h<i> per lab host, each listing all of them (itself included)."""
    addresses = lab.addresses(PORT, v6=v6)
    url = static_url(addresses)
    return list(await asyncio.gather(*(
        factory.start(f"h{i}", listen=addresses[i - 1], discovery=[url],
                      prefix=lab.exec_prefix(i), **kwargs)  # type: ignore[arg-type]
        for i in range(1, lab.n + 1)
    )))


async def test_partition_gives_timeout_and_heal_rejoins(
    lab: Callable[[int], Lab], node_factory: NodeFactory,
) -> None:
    net = lab(3)
    h1, h2, h3 = await start_lab_nodes(net, node_factory)
    await wait_mesh([h1, h2, h3])
    m1, m2 = h1.mark(), h2.mark()

    net.partition(1, 2)
    left = await asyncio.gather(h1.wait_event("leave", peer="h2", after=m1),
                                h2.wait_event("leave", peer="h1", after=m2))
    assert [ev["reason"] for ev in left] == ["timeout", "timeout"]

    net.heal()
    await asyncio.gather(
        h1.wait_event("join", peer="h2", after=m1, incarnation=h2.incarnation, timeout=20),
        h2.wait_event("join", peer="h1", after=m2, incarnation=h1.incarnation, timeout=20),
    )
    # h3 kept both links all along, and neither side lost h3.
    assert h3.find("leave") == [], h3.events
    assert h1.find("leave", "h3") == h2.find("leave", "h3") == []
    assert [ev["peer"] for ev in h1.find("leave")] == ["h2"]
    assert [ev["peer"] for ev in h2.find("leave")] == ["h1"]


async def test_restart_before_death_is_noticed_gives_leave_restarted(
    lab: Callable[[int], Lab], node_factory: NodeFactory,
) -> None:
    net = lab(3)
    # Peers declare a silent link dead only after 4 s: enough for a restart to win.
    h1, h2, h3 = await start_lab_nodes(net, node_factory, tick=0.5, timeout=4.0)
    await wait_mesh([h1, h2, h3])
    # h1's host sends no FIN or RST: its old links die silently when h1 is killed.
    net.nft(1, "\n".join([
        "table inet peerlink_silent",
        "delete table inet peerlink_silent",
        "table inet peerlink_silent {",
        "  chain output_filter {",
        "    type filter hook output priority 0; policy accept;",
        '    oifname "eth0" tcp flags & (fin | rst) != 0 drop',
        "  }",
        "}",
    ]))
    m2, m3 = h2.mark(), h3.mark()
    h1.kill()
    await h1.wait_exit()
    new = await node_factory.restart(h1)

    for node, mark in ((h2, m2), (h3, m3)):
        leave = await node.wait_event("leave", peer="h1", after=mark)
        assert leave["reason"] == "restarted", node.events
        assert leave["incarnation"] == h1.incarnation
        join = await node.wait_event("join", peer="h1", after=mark)
        assert join["incarnation"] == new.incarnation
        assert node.events.index(leave) < node.events.index(join)
    assert h2.find("leave", "h3") == h3.find("leave", "h2") == []


async def test_ipv6_nodes_link(lab: Callable[[int], Lab], node_factory: NodeFactory) -> None:
    net = lab(2)
    h1, h2 = await start_lab_nodes(net, node_factory, v6=True)
    await wait_mesh([h1, h2])
    assert h1.address == f"[{net.ip6(1)}]:{PORT}"
    assert h2.find("join", "h1")[0]["address"] == h1.address
    marks = h2.mark()
    assert await h1.terminate() == 0
    await h2.wait_event("leave", peer="h1", reason="shutdown", after=marks)
