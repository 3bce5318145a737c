"""Real ``peerlink node`` processes that find each other only through DNS (dnsmasq).

* On loopback (127.0.0.2-4, one port): records added while nodes run make them join, a
  pod that goes away leaves, and a DNS outage keeps every link.
* ``peerlink doctor`` shows the answer, an authoritative "nobody", or the failure.
* In network namespaces: three nodes with a pod-like resolv.conf (search domains,
  ndots:5) resolve the short name ``peers``; and an IPv6-only cluster.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from support.dnsmasq import Dnsmasq, FaultDNS
from support.lab import Lab, requires_netns
from support.nodeproc import NodeFactory, NodeProcess, scaled, wait_mesh

ZONE = "peers.default.svc.cluster.local"


def _common_free_port(factory: NodeFactory, hosts: list[str]) -> int:
    """A TCP port free on every one of ``hosts`` (nodes behind one DNS name share it)."""
    for _ in range(200):
        port = factory.free_port(hosts[0])
        ok = True
        for host in hosts[1:]:
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no common free port")


def _stderr_count(node: NodeProcess, text: str, offset: int = 0) -> int:
    try:
        data = node.log_path.read_bytes()[offset:]
    except OSError:
        return 0
    return data.decode(errors="replace").count(text)


def _stderr_size(node: NodeProcess) -> int:
    try:
        return node.log_path.stat().st_size
    except OSError:
        return 0


async def _wait_until(pred: Callable[[], bool], timeout: float, what: str,
                      nodes: list[NodeProcess]) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not pred():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {n.name} stderr ---\n{n.stderr_tail(15)}" for n in nodes)
            raise AssertionError(f"{what}: not within {scaled(timeout):.1f} s\n{tails}")
        await asyncio.sleep(0.02)


async def test_nodes_follow_dns_records_and_survive_an_outage(
    node_factory: NodeFactory, make_dnsmasq: Callable[..., Dnsmasq]
) -> None:
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    port = _common_free_port(node_factory, hosts)
    d = make_dnsmasq()  # the Service has no pods yet: NXDOMAIN
    url = f"dns://{ZONE}:{port}?nameserver={d.address}&interval=0.2&timeout=0.3"

    async def start(name: str, host: str) -> NodeProcess:
        return await node_factory.start(name, listen=f"{host}:{port}", advertise=f"{host}:{port}",
                                        discovery=[url], extra=["--log-level", "debug"])

    a, b = await asyncio.gather(start("a", hosts[0]), start("b", hosts[1]))
    # pods a and b become ready: DNS lists them, the running nodes find each other
    d.set_hosts({ZONE: hosts[:2]})
    await wait_mesh([a, b], timeout=10)

    # pod c is added while a and b run
    d.set_hosts({ZONE: hosts})
    c = await start("c", hosts[2])
    await wait_mesh([a, b, c], timeout=10)
    nodes = [a, b, c]

    # DNS outage: every node's lookups fail (>= 3 times, longer than the 1 s link
    # timeout), yet no link is dropped; then DNS comes back and lookups recover
    marks = {n.name: n.mark() for n in nodes}
    offsets = {n.name: _stderr_size(n) for n in nodes}
    d.pause()
    try:
        await _wait_until(
            lambda: all(_stderr_count(n, "lookup failed", offsets[n.name]) >= 3 for n in nodes),
            15, "every node saw its DNS lookups fail three times", nodes)
    finally:
        d.resume()
    await _wait_until(lambda: all(_stderr_count(n, "recovered", offsets[n.name]) >= 1 for n in nodes),
                      10, "every node's DNS lookups recovered", nodes)
    for n in nodes:
        assert n.find("leave", after=marks[n.name]) == [], f"{n.name} lost a link during the outage"
        assert "timeout after 0.3 s" in n.log_path.read_text(errors="replace")[offsets[n.name]:]

    # pod c goes away: its record is removed and the process ends; the others see it leave
    d.set_hosts({ZONE: hosts[:2]})
    await c.terminate()
    for n in (a, b):
        await n.wait_event("leave", peer="c", reason="shutdown", after=marks[n.name])


def _lab_dnsmasq(lab: Lab, make_dnsmasq: Callable[..., Dnsmasq], hosts: dict[str, list[str]],
                 listen: str) -> Dnsmasq:
    # in node 1's namespace, port 53, answering every name (unknown: NXDOMAIN) like CoreDNS
    return make_dnsmasq(hosts, listen=listen, port=53, prefix=lab.exec_prefix(1),
                        local_domains=["#"])


@requires_netns
async def test_three_namespaces_find_each_other_through_pod_dns(
    lab: Callable[[int], Lab], node_factory: NodeFactory, make_dnsmasq: Callable[..., Dnsmasq],
    tmp_path: Path,
) -> None:
    """Each node uses the system resolver with a pod's resolv.conf (bind-mounted in its
    private mount namespace) and the short name ``peers``: nothing else tells it where
    the others are."""
    lb = lab(3)
    _lab_dnsmasq(lb, make_dnsmasq, {ZONE: [lb.ip4(i) for i in (1, 2, 3)]}, lb.ip4(1))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {lb.ip4(1)}\n"
                      "search default.svc.cluster.local svc.cluster.local cluster.local\n"
                      "options ndots:5\n")
    mount = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    nodes = await asyncio.gather(*(
        node_factory.start(
            f"pod-{i}", listen=f"{lb.ip4(i)}:4370", advertise=f"{lb.ip4(i)}:4370",
            discovery=["dns://peers:4370?interval=0.2"],
            prefix=[*lb.exec_prefix(i), "sh", "-c", mount, str(resolv)],
        )
        for i in (1, 2, 3)
    ))
    await wait_mesh(list(nodes), timeout=15)
    for n in nodes:
        assert {ev["address"] for ev in n.find("join")} <= {f"{lb.ip4(i)}:4370" for i in (1, 2, 3)}


@requires_netns
async def test_ipv6_only_cluster_through_dns(
    lab: Callable[[int], Lab], node_factory: NodeFactory, make_dnsmasq: Callable[..., Dnsmasq]
) -> None:
    """AAAA records only, an IPv6 nameserver in the URL, nodes listening on IPv6."""
    lb = lab(3)
    d = _lab_dnsmasq(lb, make_dnsmasq, {ZONE: [lb.ip6(i) for i in (1, 2, 3)]}, lb.ip6(1))
    url = f"dns://{ZONE}.:4370?family=ipv6&nameserver={d.address}&interval=0.2"
    nodes = await asyncio.gather(*(
        node_factory.start(f"v6-{i}", listen=f"[{lb.ip6(i)}]:4370", advertise=f"[{lb.ip6(i)}]:4370",
                           discovery=[url], prefix=lb.exec_prefix(i))
        for i in (1, 2, 3)
    ))
    await wait_mesh(list(nodes), timeout=15)


async def _doctor(url: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "peerlink", "doctor", "--discovery", url, "--wait", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("PEERLINK_")},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), scaled(30))
    return out.decode(errors="replace")


async def test_doctor_shows_answer_nobody_and_failure(make_dnsmasq: Callable[..., Dnsmasq]) -> None:
    """``peerlink doctor --discovery dns://...`` shows what the name resolves to, an
    authoritative "nobody", and the kind of failure with the server that failed."""
    bad = await FaultDNS("servfail").start()
    try:
        d = make_dnsmasq({ZONE: ["10.244.0.10", "fd00:244::10"]},
                         forward={"broken.svc.cluster.local": f"127.0.0.1#{bad.port}"})
        found = await _doctor(f"dns://{ZONE}:4370?nameserver={d.address}")
        assert "10.244.0.10:4370" in found and "[fd00:244::10]:4370" in found, found
        nobody = await _doctor(f"dns://nobody.default.svc.cluster.local:4370?nameserver={d.address}")
        assert "nobody" in nobody.lower() and "FAILED" not in nobody, nobody
        failed = await _doctor(f"dnssrv://_p._tcp.peers.broken.svc.cluster.local?nameserver={d.address}")
        assert f"SERVFAIL from {d.address}" in failed, failed
    finally:
        bad.close()
