"""The lab's fault injection itself (one-way cuts, loss, NFQUEUE delay), so that a
chaos finding points at peerlink and not at the harness."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from support.lab import Lab, delay_unavailable_reason, requires_netns

pytestmark = requires_netns

# an echo server on port 7000 and a client that reports "ok <seconds>" or its error
ECHO = """
import socket
s = socket.create_server(("::", 7000), family=socket.AF_INET6, dualstack_ipv6=True)
print("listening", flush=True)
while True:
    c = s.accept()[0]; c.sendall(c.recv(1)); c.close()
"""
ROUND_TRIP = """
import socket, sys, time
t = time.monotonic()
try:
    with socket.create_connection((sys.argv[1], 7000), timeout=0.6) as c:
        c.sendall(b"x"); c.recv(1)
    print(f"ok {time.monotonic() - t:.4f}")
except OSError as e:
    print(e)
"""


@pytest.fixture
def net(lab: Callable[[int], Lab]) -> Iterator[Lab]:
    created = lab(3)
    servers = [subprocess.Popen([*created.exec_prefix(i), sys.executable, "-c", ECHO],
                                stdout=subprocess.PIPE, text=True) for i in (1, 2, 3)]
    try:
        for s in servers:
            assert s.stdout is not None and s.stdout.readline().strip() == "listening"
        yield created
    finally:
        for s in servers:
            s.kill()
            s.wait()


def round_trip(lab: Lab, src: int, dst: int) -> str:
    return lab.run(src, sys.executable, "-c", ROUND_TRIP, lab.ip4(dst)).stdout.strip()


def test_a_cut_drops_one_direction_only_and_heals(net: Lab) -> None:
    net.cut(1, 2)
    # a TCP exchange needs both directions, so both fail; what the cut lets through
    # shows at the switch counters instead: n3 is untouched either way
    assert "timed out" in round_trip(net, 1, 2)
    assert "timed out" in round_trip(net, 2, 1)
    assert round_trip(net, 1, 3).startswith("ok") and round_trip(net, 3, 2).startswith("ok")
    rules = subprocess.run(["ip", "netns", "exec", net.switch, "nft", "list", "table", "bridge",
                            "peerlink_part"], capture_output=True, text=True, check=True).stdout
    assert 'iifname "p1" oifname "p2" drop' in rules and 'iifname "p2" oifname "p1"' not in rules
    net.heal(2, 1)
    assert round_trip(net, 1, 2).startswith("ok")


def test_full_loss_drops_everything_of_that_host_and_unloss_restores(net: Lab) -> None:
    net.loss(3, 100)
    assert "timed out" in round_trip(net, 1, 3)
    assert round_trip(net, 1, 2).startswith("ok")
    net.loss(3, 0)  # replaces the earlier loss
    assert round_trip(net, 1, 3).startswith("ok")
    net.loss(3, 50)
    net.unloss(3)
    assert round_trip(net, 1, 3).startswith("ok")


def test_delay_holds_each_packet_of_that_host(net: Lab) -> None:
    if reason := delay_unavailable_reason():
        pytest.skip(reason)
    net.delay(2, 0.1)
    # connect + echo to n2: the SYN-ACK and the echo each leave n2 0.1 s late; a
    # packet cannot arrive early, so this lower bound is exact, not a timing guess
    out = round_trip(net, 1, 2)
    assert out.startswith("ok") and float(out.split()[1]) >= 0.2, out
    assert round_trip(net, 1, 3).startswith("ok")
    net.undelay(2)
    assert "NFQUEUE" not in net.run(2, "iptables", "-S", "OUTPUT").stdout
    assert round_trip(net, 1, 2).startswith("ok")
    net.undelay(2)  # a second undelay is a no-op
