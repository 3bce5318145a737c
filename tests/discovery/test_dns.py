"""DNS / DNSSRV strategies against a real DNS server (dnsmasq) and a fault server.

Every server runs on 127.0.0.1 (run the suite under ``unshare --net``); the pod-like
resolver test runs in its own network namespace with dnsmasq on port 53 there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import dns.asyncresolver
import pytest
from support.dnsmasq import Dnsmasq, FaultDNS, dnsmasq_unavailable_reason
from support.lab import new_prefix

import peerlink.discovery
import peerlink.discovery.dns as dnsmod
from peerlink.discovery.base import Endpoint, LocalNode, Snapshot, StrategyRunner
from peerlink.discovery.dns import DNS, DNSSRV
from peerlink.errors import ConfigError, DiscoveryError

ZONE = "peers.default.svc.cluster.local"
SRV = "_peerlink._tcp." + ZONE
LOCAL = LocalNode(cluster="t", name="self", incarnation="i", host="127.0.0.1", port=1,
                  protocol_version=1)
T = TypeVar("T")


def eps(*hostports: str) -> Snapshot:
    out = set()
    for hp in hostports:
        host, _, port = hp.rpartition(":")
        out.add(Endpoint(host.strip("[]"), int(port)))
    return frozenset(out)


async def until(fn: Callable[[], Awaitable[T]], pred: Callable[[T], bool], *,
                timeout: float = 5.0, what: str = "condition") -> T:
    """Call ``fn`` until ``pred(result)``; fail with the last result at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await fn()
        except DiscoveryError as exc:
            last = exc
        else:
            if pred(last):
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s; last: {last!r}")
        await asyncio.sleep(0.02)


async def wait_for(pred: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.01)


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
async def make_fault() -> AsyncIterator[Callable[..., Awaitable[FaultDNS]]]:
    servers: list[FaultDNS] = []

    async def make(mode: str = "servfail", **kwargs: Any) -> FaultDNS:
        f = FaultDNS(mode, **kwargs)
        servers.append(f)
        return await f.start()

    try:
        yield make
    finally:
        for f in servers:
            f.close()


TWO = {ZONE: ["10.244.0.10", "10.244.0.11"]}


# -- construction and URLs ----------------------------------------------------------


@pytest.mark.parametrize("url", [
    "dns://peers.default.svc.cluster.local:4370",
    "dns://peers:4370?family=ipv6&interval=2&nameserver=127.0.0.1:15353,[::1]:53&timeout=0.5",
    "dns://peers.example.:80?family=ipv4",
    "dnssrv://_peerlink._tcp.peers.default.svc.cluster.local",
    "dnssrv://_peerlink._tcp.peers?interval=1.5&nameserver=10.96.0.10:53",
])
def test_url_round_trip(url: str) -> None:
    s = peerlink.discovery.from_url(url)
    assert isinstance(s, DNSSRV if url.startswith("dnssrv:") else DNS)
    assert s.describe() == url
    assert peerlink.discovery.from_url(s.describe()).describe() == url


def test_exported_from_peerlink() -> None:
    import peerlink

    assert peerlink.DNS is DNS and peerlink.DNSSRV is DNSSRV
    assert peerlink.discovery.strategy_class("dns") is DNS
    assert peerlink.discovery.strategy_class("dnssrv") is DNSSRV


def test_url_options_reach_the_strategy() -> None:
    s = DNS.from_url("dns://peers:4370?family=ipv6&interval=2&nameserver=127.0.0.1:15353"
                     "&nameserver=10.96.0.10&timeout=0.5")
    assert (s.name, s.port, s.family, s.interval, s.timeout) == ("peers", 4370, "ipv6", 2.0, 0.5)
    assert s.nameservers == ("127.0.0.1:15353", "10.96.0.10:53")
    srv = DNSSRV.from_url("dnssrv://_p._tcp.peers?family=ipv4")
    assert (srv.name, srv.family, srv.interval, srv.nameservers) == ("_p._tcp.peers", "ipv4", 5.0, None)


@pytest.mark.parametrize(("url", "message"), [
    ("dns://peers", "port is missing"),
    ("dns://peers:http", "not a number"),
    ("dns://peers:0", "1..65535"),
    ("dns://:4370", "host is empty"),
    ("dns://peers:4370?family=ipx", "expected one of any, ipv4, ipv6"),
    ("dns://peers:4370?interval=0", "expected a number > 0"),
    ("dns://peers:4370?interval=soon", "number of seconds"),
    ("dns://peers:4370?nameserver=dns.google", "expected an IP address"),
    ("dns://peers:4370?nameserver=", "at least one"),
    ("dns://peers:4370?colour=blue", "unknown option(s): colour"),
    ("dns://peers:4370/x", "unexpected path"),
    ("dnssrv://", "expected dnssrv://NAME"),
    ("dnssrv://_p._tcp.peers:4370", "remove ':PORT'"),
    ("dnssrv://_p._tcp.peers?timeout=-1", "expected a number > 0"),
])
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        peerlink.discovery.from_url(url)
    assert message in str(info.value)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="family"):
        DNS("peers", 4370, family="v4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="port"):
        DNS("peers", 70000)
    with pytest.raises(ConfigError, match="interval"):
        DNS("peers", 4370, interval=0)
    with pytest.raises(ConfigError, match="not both"):
        DNS("peers", 4370, resolver=dns.asyncresolver.Resolver(configure=False),
            nameservers=["127.0.0.1"])
    with pytest.raises(ConfigError, match=r"dns\.asyncresolver\.Resolver"):
        DNSSRV("_p._tcp.peers", resolver=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a valid DNS name"):
        DNS("a" * 64 + ".example", 4370)
    with pytest.raises(ConfigError, match="empty"):
        DNSSRV(" ")
    assert repr(DNS("peers", 1, nameservers="127.0.0.1:5353")) == \
        "<DNS dns://peers:1?nameserver=127.0.0.1:5353>"


# -- A / AAAA -------------------------------------------------------------------------


async def test_a_records(make_dnsmasq: Callable[..., Dnsmasq]) -> None:
    d = make_dnsmasq(TWO)
    s = DNS(ZONE, 4370, nameservers=[d.address])
    assert await s.resolve() == eps("10.244.0.10:4370", "10.244.0.11:4370")
    assert s.last_lookup is not None and f"A {ZONE}: 2 record(s), TTL 1 s" in s.last_lookup
    assert f"AAAA {ZONE}: no records (NOERROR) (authoritative: nobody)" in s.last_lookup


async def test_ipv6_only_answer(make_dnsmasq: Callable[..., Dnsmasq]) -> None:
    d = make_dnsmasq({ZONE: ["fd00:244::10", "fd00:244::11"]})
    v6 = eps("[fd00:244::10]:4370", "[fd00:244::11]:4370")
    assert await DNS(ZONE, 4370, nameservers=[d.address]).resolve() == v6
    assert await DNS(ZONE, 4370, family="ipv6", nameservers=[d.address]).resolve() == v6
    # the name exists but has no A records: an authoritative "nobody" for ipv4
    assert await DNS(ZONE, 4370, family="ipv4", nameservers=[d.address]).resolve() == frozenset()
    assert {str(e) for e in v6} == {"[fd00:244::10]:4370", "[fd00:244::11]:4370"}


async def test_dual_stack_answer_and_families(make_dnsmasq: Callable[..., Dnsmasq]) -> None:
    d = make_dnsmasq({ZONE: ["10.244.0.10", "fd00:244::10", "10.244.0.11"]})
    ns = [d.address]
    v4 = eps("10.244.0.10:7000", "10.244.0.11:7000")
    v6 = eps("[fd00:244::10]:7000")
    assert await DNS(ZONE, 7000, nameservers=ns).resolve() == v4 | v6
    assert await DNS(ZONE, 7000, family="ipv4", nameservers=ns).resolve() == v4
    assert await DNS(ZONE, 7000, family="ipv6", nameservers=ns).resolve() == v6


async def test_nxdomain_is_an_authoritative_empty(make_dnsmasq: Callable[..., Dnsmasq]) -> None:
    d = make_dnsmasq(TWO)
    s = DNS("nobody.default.svc.cluster.local", 4370, nameservers=[d.address])
    assert await s.resolve() == frozenset()
    assert s.last_lookup is not None
    assert "A nobody.default.svc.cluster.local: NXDOMAIN (authoritative: nobody)" in s.last_lookup
    srv = DNSSRV("_peerlink._tcp.nobody.default.svc.cluster.local", nameservers=[d.address])
    assert await srv.resolve() == frozenset()


async def test_empty_noerror_is_an_authoritative_empty(
    make_dnsmasq: Callable[..., Dnsmasq], make_fault: Callable[..., Awaitable[FaultDNS]]
) -> None:
    f = await make_fault("noerror")
    assert await DNS(ZONE, 4370, nameservers=[f.address]).resolve() == frozenset()
    assert await DNSSRV(SRV, nameservers=[f.address]).resolve() == frozenset()
    assert {q[1] for q in f.queries} == {"A", "AAAA", "SRV"}
    # a real server: the name has A records but no SRV records
    d = make_dnsmasq(TWO)
    assert await DNSSRV(ZONE, nameservers=[d.address]).resolve() == frozenset()


async def test_records_added_and_removed_at_run_time(make_dnsmasq: Callable[..., Dnsmasq]) -> None:
    d = make_dnsmasq(TWO)
    s = DNS(ZONE, 4370, nameservers=[d.address])
    two = eps("10.244.0.10:4370", "10.244.0.11:4370")
    assert await s.resolve() == two
    d.set_hosts({ZONE: ["10.244.0.10", "10.244.0.11", "10.244.0.12", "fd00:244::12"]})
    four = two | eps("10.244.0.12:4370", "[fd00:244::12]:4370")
    await until(s.resolve, lambda snap: snap == four, what="pod added")
    d.set_hosts({ZONE: ["10.244.0.12", "fd00:244::12"]})
    await until(s.resolve, lambda snap: snap == eps("10.244.0.12:4370", "[fd00:244::12]:4370"),
                what="pods removed")
    d.remove_hosts()  # the Service has no pods left: the name is gone (NXDOMAIN)
    await until(s.resolve, lambda snap: snap == frozenset(), what="all pods gone")


# -- TTL and the poll interval ----------------------------------------------------------


@pytest.mark.parametrize(("ttl", "interval", "floor", "expected"), [
    (3, 10.0, None, 3.0),   # a shorter TTL wins
    (3, 2.0, None, 2.0),    # a shorter interval wins
    (30, 10.0, None, 10.0),
    (0, 10.0, None, 1.0),   # TTL 0 -> the floor, not a query storm
    (0, 10.0, 0.25, 0.25),  # the floor is a module constant
    (0, 0.5, None, 0.5),    # an explicit interval below the floor is the user's choice
])
async def test_ttl_drives_the_interval(
    make_dnsmasq: Callable[..., Dnsmasq], monkeypatch: pytest.MonkeyPatch,
    ttl: int, interval: float, floor: float | None, expected: float,
) -> None:
    if floor is not None:
        monkeypatch.setattr(dnsmod, "MIN_TTL_INTERVAL", floor)
    d = make_dnsmasq(TWO, local_ttl=ttl)
    s = DNS(ZONE, 4370, interval=interval, nameservers=[d.address])
    snap = await s.resolve()
    assert s.next_interval(snap) == expected


async def test_empty_answer_polls_at_the_interval(make_dnsmasq: Callable[..., Dnsmasq]) -> None:
    d = make_dnsmasq(TWO, local_ttl=1)
    s = DNS(ZONE, 4370, interval=7.0, nameservers=[d.address])
    assert s.next_interval(await s.resolve()) == 1.0
    d.remove_hosts()
    snap = await until(s.resolve, lambda snap: snap == frozenset(), what="name gone")
    assert s.next_interval(snap) == 7.0


async def test_watch_polls_at_the_ttl_not_the_interval(
    make_dnsmasq: Callable[..., Dnsmasq], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With interval=60 s the change below would take a minute; the 1 s TTL (floor
    lowered to 0.05 s) makes watch() see it at once. Fails by timeout otherwise."""
    monkeypatch.setattr(dnsmod, "MIN_TTL_INTERVAL", 0.05)
    d = make_dnsmasq(TWO, local_ttl=0)
    s = DNS(ZONE, 4370, interval=60.0, nameservers=[d.address])
    async with contextlib.aclosing(s.watch(LOCAL)) as snapshots:
        first = await anext(snapshots)
        assert first == eps("10.244.0.10:4370", "10.244.0.11:4370")
        d.set_hosts({ZONE: ["10.244.0.11"]})
        async with asyncio.timeout(5):
            async for snap in snapshots:
                if snap == eps("10.244.0.11:4370"):
                    break


async def test_doctor_contract_first_snapshot_or_error(
    make_dnsmasq: Callable[..., Dnsmasq], make_fault: Callable[..., Awaitable[FaultDNS]]
) -> None:
    """``peerlink doctor`` calls ``await anext(aiter(strategy.watch(local)))``."""
    d = make_dnsmasq(TWO)
    gen = DNS(ZONE, 4370, nameservers=[d.address]).watch(LOCAL)
    try:
        assert await anext(aiter(gen)) == eps("10.244.0.10:4370", "10.244.0.11:4370")
    finally:
        await gen.aclose()
    f = await make_fault("servfail")
    s = DNS(ZONE, 4370, nameservers=[f.address])
    gen = s.watch(LOCAL)
    with pytest.raises(DiscoveryError) as info:
        await anext(aiter(gen))
    assert info.value.strategy == s.describe()
    assert info.value.reason.startswith(f"A {ZONE}: SERVFAIL from {f.address}")
    assert str(info.value).startswith(f"dns://{ZONE}:4370?nameserver={f.address}: ")


# -- SRV ----------------------------------------------------------------------------------


PODS = {
    "pod-0." + ZONE: ["10.244.0.10", "fd00:244::10"],
    "pod-1." + ZONE: ["10.244.0.11"],
    "pod-2." + ZONE: ["10.244.0.12"],
}


async def test_srv_uses_the_additional_section(make_dnsmasq: Callable[..., Dnsmasq]) -> None:
    d = make_dnsmasq(PODS, srv={SRV: [
        ("pod-0." + ZONE, 7000, 0, 10),
        ("pod-1." + ZONE, 7000, 10, 0),   # lower priority, weight 0: still a peer
        ("pod-2." + ZONE, 7001, 0, 10),   # its own port
    ]})
    mark = d.mark_log()
    s = DNSSRV(SRV, nameservers=[d.address])
    snap = await s.resolve()
    assert snap == eps("10.244.0.10:7000", "[fd00:244::10]:7000", "10.244.0.11:7000",
                       "10.244.0.12:7001")
    assert {e.host: e.name for e in snap}["10.244.0.12"] == "pod-2." + ZONE
    log = d.log_since(mark)
    assert f"query[SRV] {SRV}" in log
    assert "query[A] pod-" not in log and "query[AAAA] pod-" not in log, log
    v4 = await DNSSRV(SRV, family="ipv4", nameservers=[d.address]).resolve()
    assert v4 == eps("10.244.0.10:7000", "10.244.0.11:7000", "10.244.0.12:7001")


async def test_srv_resolves_targets_missing_from_the_additional_section(
    make_dnsmasq: Callable[..., Dnsmasq], make_fault: Callable[..., Awaitable[FaultDNS]]
) -> None:
    ext = await make_fault("answer", records={("ext-1.ext.test", "A"): ["10.9.0.1"],
                                              ("ext-1.ext.test", "AAAA"): ["fd09::1"]}, ttl=2)
    d = make_dnsmasq(PODS, local_ttl=5, forward={"ext.test": f"127.0.0.1#{ext.port}"},
                     srv={SRV: [("pod-0." + ZONE, 7000), ("ext-1.ext.test", 7001)]})
    mark = d.mark_log()
    s = DNSSRV(SRV, interval=10, nameservers=[d.address])
    snap = await s.resolve()
    assert snap == eps("10.244.0.10:7000", "[fd00:244::10]:7000",
                       "10.9.0.1:7001", "[fd09::1]:7001")
    assert set(ext.queries) == {("ext-1.ext.test", "A"), ("ext-1.ext.test", "AAAA")}
    log = d.log_since(mark)
    assert "query[A] pod-0" not in log, log  # pod-0 still came from the additional section
    assert s.next_interval(snap) == 2.0  # the separately resolved target's TTL counts


async def test_srv_target_that_does_not_exist_contributes_nobody(
    make_dnsmasq: Callable[..., Dnsmasq]
) -> None:
    d = make_dnsmasq(PODS, srv={SRV: [("pod-1." + ZONE, 7000), ("gone." + ZONE, 7000)]})
    s = DNSSRV(SRV, nameservers=[d.address])
    assert await s.resolve() == eps("10.244.0.11:7000")
    assert s.last_lookup is not None and f"A gone.{ZONE}: NXDOMAIN" in s.last_lookup


async def test_srv_target_failure_fails_the_whole_lookup(
    make_dnsmasq: Callable[..., Dnsmasq], make_fault: Callable[..., Awaitable[FaultDNS]]
) -> None:
    bad = await make_fault("servfail")
    d = make_dnsmasq(PODS, forward={"broken.test": f"127.0.0.1#{bad.port}"},
                     srv={SRV: [("pod-1." + ZONE, 7000), ("x.broken.test", 7000)]})
    with pytest.raises(DiscoveryError) as info:
        await DNSSRV(SRV, nameservers=[d.address]).resolve()
    assert f"A x.broken.test: SERVFAIL from {d.address}" in info.value.reason


async def test_srv_changes_after_restart(make_dnsmasq: Callable[..., Dnsmasq]) -> None:
    d = make_dnsmasq(PODS, srv={SRV: [("pod-0." + ZONE, 7000)]})
    s = DNSSRV(SRV, family="ipv4", nameservers=[d.address])
    assert await s.resolve() == eps("10.244.0.10:7000")
    await asyncio.to_thread(d.set_srv, SRV, [("pod-1." + ZONE, 7000), ("pod-2." + ZONE, 7002)])
    assert await s.resolve() == eps("10.244.0.11:7000", "10.244.0.12:7002")


# -- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["servfail", "refused"])
@pytest.mark.parametrize("kind", ["dns", "dnssrv"])
async def test_servfail_and_refused_raise(
    make_fault: Callable[..., Awaitable[FaultDNS]], mode: str, kind: str
) -> None:
    f = await make_fault(mode)
    s: DNS | DNSSRV = (DNS(ZONE, 4370, nameservers=[f.address]) if kind == "dns"
                       else DNSSRV(SRV, nameservers=[f.address]))
    with pytest.raises(DiscoveryError) as info:
        await s.resolve()
    assert f"{mode.upper()} from {f.address}" in info.value.reason
    assert info.value.strategy == s.describe()


async def test_failures_relayed_by_a_real_server(
    make_dnsmasq: Callable[..., Dnsmasq], make_fault: Callable[..., Awaitable[FaultDNS]]
) -> None:
    bad = await make_fault("servfail")
    d = make_dnsmasq(TWO, forward={"broken.svc.cluster.local": f"127.0.0.1#{bad.port}"})
    with pytest.raises(DiscoveryError, match=f"SERVFAIL from {d.address}"):
        await DNS("peers.broken.svc.cluster.local", 4370, nameservers=[d.address]).resolve()
    # outside its zones, with no upstream, dnsmasq refuses
    with pytest.raises(DiscoveryError, match=f"REFUSED from {d.address}"):
        await DNS("peers.example.org", 4370, nameservers=[d.address]).resolve()


async def test_timeout_raises(make_fault: Callable[..., Awaitable[FaultDNS]]) -> None:
    f = await make_fault("drop")
    s = DNS(ZONE, 4370, nameservers=[f.address], timeout=0.3)
    with pytest.raises(DiscoveryError) as info:
        await s.resolve()
    assert "timeout after 0.3 s" in info.value.reason
    assert f"no answer from {f.address}" in info.value.reason


async def test_slow_answer_within_the_timeout_is_fine(
    make_fault: Callable[..., Awaitable[FaultDNS]]
) -> None:
    f = await make_fault("delay:0.1", records={(ZONE, "A"): ["10.244.0.10"]})
    assert await DNS(ZONE, 4370, family="ipv4", nameservers=[f.address],
                     timeout=2.0).resolve() == eps("10.244.0.10:4370")
    f.mode = "delay:1.0"
    with pytest.raises(DiscoveryError, match=r"timeout after 0\.2 s"):
        await DNS(ZONE, 4370, family="ipv4", nameservers=[f.address], timeout=0.2).resolve()


async def test_stopped_server_times_out_and_recovers(make_dnsmasq: Callable[..., Dnsmasq]) -> None:
    d = make_dnsmasq(TWO)
    s = DNSSRV(SRV, nameservers=[d.address], timeout=0.3)
    assert await s.resolve() == frozenset()
    d.pause()
    try:
        with pytest.raises(DiscoveryError, match=r"timeout after 0\.3 s"):
            await s.resolve()
    finally:
        d.resume()
    assert await s.resolve() == frozenset()


async def test_partial_answer_is_a_failure(make_fault: Callable[..., Awaitable[FaultDNS]]) -> None:
    f = await make_fault("answer", records={(ZONE, "A"): ["10.244.0.10"]}, modes={"AAAA": "servfail"})
    with pytest.raises(DiscoveryError) as info:
        await DNS(ZONE, 4370, nameservers=[f.address]).resolve()
    reason = info.value.reason
    assert f"AAAA {ZONE}: SERVFAIL from {f.address}" in reason
    assert "not using the partial answer" in reason and "set family=ipv4" in reason
    assert await DNS(ZONE, 4370, family="ipv4",
                     nameservers=[f.address]).resolve() == eps("10.244.0.10:4370")


def _has_default_route() -> bool:
    """True if packets to a non-local address could leave this network namespace."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 1 and parts[1] == "00000000":
                return True
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/ipv6_route").read_text().splitlines():
            parts = line.split()
            if len(parts) == 10 and parts[0] == "0" * 32 and parts[1] == "00" and parts[9] != "lo":
                return True
    return False


async def test_network_error_raises() -> None:
    if _has_default_route():
        pytest.skip("this network namespace has a default route; a query to 192.0.2.53 could "
                    "leave the machine (run the suite under unshare --net)")
    s = DNS(ZONE, 4370, nameservers=["192.0.2.53"], timeout=0.5)
    with pytest.raises(DiscoveryError) as info:
        await s.resolve()
    assert "network error talking to 192.0.2.53:53" in info.value.reason


# -- through the StrategyRunner ------------------------------------------------------------


async def test_runner_keeps_last_good_snapshot_and_recovers(
    make_dnsmasq: Callable[..., Dnsmasq], make_fault: Callable[..., Awaitable[FaultDNS]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="peerlink")
    d = make_dnsmasq(TWO)
    published: list[Snapshot] = []
    runner = StrategyRunner(DNS(ZONE, 4370, nameservers=[d.address], interval=0.05, timeout=0.3),
                            LOCAL, lambda _r, snap: published.append(snap),
                            retry_initial=0.05, retry_max=0.2)
    task = asyncio.create_task(runner.run())
    two = eps("10.244.0.10:4370", "10.244.0.11:4370")
    three = two | eps("10.244.0.12:4370")
    try:
        await wait_for(lambda: bool(published) and published[-1] == two, what="first snapshot")
        # the server hangs (SIGSTOP): failures, but the last good snapshot stands
        d.pause()
        await wait_for(lambda: runner.status.failures >= 3, what="three failed lookups")
        assert runner.status.last_error is not None and "timeout after" in runner.status.last_error
        assert runner.status.snapshot == two
        assert set(published) == {two}, "a failure must never publish anything"
        d.set_hosts({ZONE: ["10.244.0.10", "10.244.0.11", "10.244.0.12"]})  # while it hangs
        d.resume()
        await wait_for(lambda: published[-1] == three, what="recovery with the new pod")
        # an authoritative empty is published
        d.remove_hosts()
        await wait_for(lambda: published[-1] == frozenset(), what="authoritative empty")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        d.resume()
    failures = [r for r in caplog.records if "lookup failed" in r.getMessage()]
    assert [r.levelno for r in failures].count(logging.WARNING) == 1, "a repeated failure logs once"
    assert any("recovered" in r.getMessage() for r in caplog.records)


async def test_runner_survives_servfail_then_recovers(
    make_fault: Callable[..., Awaitable[FaultDNS]]
) -> None:
    f = await make_fault("answer", records={(ZONE, "A"): ["10.244.0.10"]})
    published: list[Snapshot] = []
    runner = StrategyRunner(DNS(ZONE, 4370, family="ipv4", nameservers=[f.address], interval=0.05),
                            LOCAL, lambda _r, snap: published.append(snap),
                            retry_initial=0.05, retry_max=0.1)
    task = asyncio.create_task(runner.run())
    one = eps("10.244.0.10:4370")
    try:
        await wait_for(lambda: bool(published), what="first snapshot")
        f.mode = "servfail"
        await wait_for(lambda: runner.status.failures >= 2, what="failures")
        assert "SERVFAIL" in (runner.status.last_error or "")
        count = len(published)
        f.records[(ZONE, "A")].append("10.244.0.11")
        f.mode = "answer"
        await wait_for(lambda: published[-1] == one | eps("10.244.0.11:4370"), what="recovery")
        assert set(published[:count]) == {one}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- a resolver configured like a pod's, in a network namespace ------------------------------

_POD_CHILD = textwrap.dedent("""
    import asyncio, json, sys
    sys.path.insert(0, sys.argv[1])
    from support.dnsmasq import Dnsmasq
    from peerlink.discovery.dns import DNS, DNSSRV

    ZONE = "peers.default.svc.cluster.local"
    # like CoreDNS with an upstream: names outside the cluster are NXDOMAIN, not REFUSED
    # (the search list ends with the name as given: "nobody.")
    d = Dnsmasq(sys.argv[2], port=53, local_domains=["#"])
    d.set_hosts({ZONE: ["10.244.0.10", "fd00:244::10"],
                 "pod-0." + ZONE: ["10.244.0.10"],
                 "peers.other.svc.cluster.local": ["10.245.0.1"]})
    d.set_srv("_peerlink._tcp." + ZONE, [("pod-0." + ZONE, 7000)])

    async def main():
        cases = {
            "short": DNS("peers", 4370),
            "fqdn_via_search": DNS(ZONE, 4370),
            "absolute": DNS(ZONE + ".", 4370),
            "other_namespace": DNS("peers.other", 4370),
            "missing": DNS("nobody", 4370),
            "srv_short": DNSSRV("_peerlink._tcp.peers"),
        }
        out = {}
        for key, s in cases.items():
            try:
                out[key] = sorted(str(e) for e in await s.resolve())
            except Exception as e:
                out[key] = f"{type(e).__name__}: {e}"
        return out

    with d:
        print(json.dumps(asyncio.run(main())), flush=True)
""")


def _netns_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (ip netns, mount --bind)"
    if reason := dnsmasq_unavailable_reason():
        return reason
    return None


def test_pod_like_resolver_in_a_network_namespace(tmp_path: Path) -> None:
    """The default (system) resolver with a pod's resolv.conf: search domains and
    ndots:5 complete short names; dnsmasq listens on port 53 inside the namespace."""
    if reason := _netns_reason():
        pytest.skip(reason)
    host_resolv = Path("/etc/resolv.conf").read_bytes()
    ns = f"{new_prefix()}-n1"  # support.lab's naming: stale ones are cleaned at session start
    added = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if added.returncode != 0:
        pytest.skip(f"'ip netns add' does not work here: {added.stderr.strip()}")
    try:
        resolv = tmp_path / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\n"
                          "search default.svc.cluster.local svc.cluster.local cluster.local\n"
                          "options ndots:5\n")
        tests_dir = str(Path(__file__).resolve().parents[1])
        script = ("ip link set lo up && mount --bind \"$1\" /etc/resolv.conf && shift && "
                  "exec \"$@\"")
        result = subprocess.run(
            ["ip", "netns", "exec", ns, "sh", "-c", script, "sh", str(resolv),
             sys.executable, "-c", _POD_CHILD, tests_dir, str(tmp_path / "dns")],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, f"child failed:\n{result.stdout}\n{result.stderr}"
        out = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        for pid in pids.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    both = ["10.244.0.10:4370", "[fd00:244::10]:4370"]
    assert out == {
        "short": both,
        "fqdn_via_search": both,
        "absolute": both,
        "other_namespace": ["10.245.0.1:4370"],
        "missing": [],
        "srv_short": ["10.244.0.10:7000"],
    }, out
    assert Path("/etc/resolv.conf").read_bytes() == host_resolv, "the host's resolv.conf changed"
