"""mDNS / DNS-SD strategy (issue 7): parsing, options, and real multicast.

Real multicast runs only in a private network namespace: the suite runs under
``unshare --net`` (loopback only; IPv4 mDNS works there with
``interfaces=["127.0.0.1"]``), and the avahi test builds its own namespaces with
``support.lab``. A guard skips every multicast test in the machine's root namespace.

Each registration costs ~1.7 s of probing, so the tests share registrations where
they can. Helpers: ``Watcher`` drives a strategy in this process; ``Agent`` runs one
in a subprocess (so it can be SIGSTOPped, killed without a goodbye, or put into a
namespace) and prints its snapshots and status as JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from support.avahi import Avahi, avahi_unavailable_reason
from support.lab import Lab, netns_unavailable_reason, requires_netns
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from peerlink.discovery import from_url, strategy_class
from peerlink.discovery.base import Endpoint, LocalNode, Snapshot
from peerlink.discovery.mdns import (
    MDNS,
    ServiceRecord,
    _choose_address,
    host_label,
    instance_label,
    parse_txt,
    select_interfaces,
)
from peerlink.errors import ConfigError, DiscoveryError

LO = ["127.0.0.1"]
TYPE = "_peerlink._tcp.local."
PEERLINK_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the safety guard


@functools.cache
def _multicast_unsafe_reason() -> str | None:
    """Why real multicast must not run here (None: a private namespace)."""
    try:
        if os.readlink("/proc/self/ns/net") == os.readlink("/proc/1/ns/net"):
            return ("this is the machine's root network namespace (real network); run "
                    "under: unshare --net -- sh -c 'ip link set lo up && exec python -m pytest'")
    except OSError:
        pass
    with open("/proc/net/route") as f:
        if any(line.split()[1] == "00000000" for line in list(f)[1:] if line.split()):
            return "this network namespace has a default route (a real network)"
    return None


@pytest.fixture
def private_netns() -> None:
    if reason := _multicast_unsafe_reason():
        pytest.skip(f"refusing to multicast: {reason}")


multicast = pytest.mark.usefixtures("private_netns")


# ---------------------------------------------------------------------- helpers


def local(name: str, port: int, *, cluster: str = "c", inc: str | None = None,
          host: str = "127.0.0.1") -> LocalNode:
    return LocalNode(cluster, name, inc or f"{name}-inc", host, port, 1)


def ports(snapshot: Snapshot) -> set[int]:
    return {e.port for e in snapshot}


class Watcher:
    """Runs ``strategy.watch(local)`` in a task and records every snapshot."""

    def __init__(self, strategy: MDNS, node: LocalNode) -> None:
        self.strategy = strategy
        self.local = node
        self.snapshots: list[Snapshot] = []
        self.error: BaseException | None = None
        self._cond = asyncio.Condition()
        self._task = asyncio.create_task(self._run(), name=f"watch-{node.name}")

    async def _run(self) -> None:
        try:
            async with contextlib.aclosing(self.strategy.watch(self.local)) as snapshots:
                async for snap in snapshots:
                    async with self._cond:
                        self.snapshots.append(snap)
                        self._cond.notify_all()
        except Exception as exc:
            async with self._cond:
                self.error = exc
                self._cond.notify_all()

    @property
    def latest(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    async def wait_for(self, pred: Callable[[Snapshot], bool], what: str,
                       timeout: float = 15.0) -> Snapshot:
        """The latest snapshot once it satisfies ``pred`` (fails at the deadline)."""

        def ok() -> bool:
            return self.error is not None or (self.latest is not None and pred(self.latest))

        async with self._cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cond.wait_for(ok), timeout)
        if self.error is not None:
            raise AssertionError(f"{self.local.name}: watch() failed: {self.error!r}")
        latest = self.latest
        assert latest is not None and pred(latest), (
            f"{self.local.name}: no snapshot with {what} within {timeout:g}s; "
            f"snapshots: {self.snapshots}; status: {self.strategy.status()}")
        return latest

    async def wait_status(self, pred: Callable[[dict[str, str]], bool], what: str,
                          timeout: float = 15.0) -> dict[str, str]:
        def get() -> dict[str, str] | None:
            st = self.strategy.status()
            return st if st and pred(st) else None

        result: dict[str, str] = await poll(get, f"{self.local.name}: {what}", timeout,
                                            lambda: f"status: {self.strategy.status()}")
        return result

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def poll(get: Callable[[], Any], what: str, timeout: float = 15.0,
               detail: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:g}s; {detail()}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def watching(*pairs: tuple[MDNS, LocalNode]) -> AsyncIterator[list[Watcher]]:
    watchers = [Watcher(s, n) for s, n in pairs]
    try:
        yield watchers
    finally:
        await asyncio.gather(*(w.close() for w in watchers))


AGENT = r"""
import asyncio, contextlib, json, signal, sys
from peerlink.discovery.base import LocalNode
from peerlink.discovery.mdns import MDNS

cfg = json.loads(sys.argv[1])

def out(**kw):
    print(json.dumps(kw), flush=True)

async def main():
    s = MDNS(interfaces=cfg.get("interfaces"), ip_version=cfg.get("ip", "any"),
             recheck=cfg.get("recheck", 10.0), confirm_timeout=cfg.get("confirm_timeout", 1.0))
    node = LocalNode(cfg["cluster"], cfg["name"], cfg["inc"], cfg["host"], cfg["port"], 1)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def pump():
        async with contextlib.aclosing(s.watch(node)) as snapshots:
            async for snap in snapshots:
                out(event="snapshot", instance=s.instance_name,
                    endpoints=sorted([e.host, e.port, e.name] for e in snap))

    async def report_status():
        last = None
        while True:
            st = s.status()
            if st != last:
                out(event="status", status=st)
                last = st
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(pump()), asyncio.create_task(report_status())]
    done, _ = await asyncio.wait([tasks[0], asyncio.create_task(stop.wait())],
                                 return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    out(event="closed")

asyncio.run(main())
"""


class Agent:
    """An MDNS strategy in its own process (optionally in a namespace)."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._cond = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, cfg: dict[str, Any], prefix: Sequence[str] = ()) -> Agent:
        proc = await asyncio.create_subprocess_exec(
            *prefix, sys.executable, "-c", AGENT, json.dumps(cfg), cwd=PEERLINK_ROOT,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        return cls(proc, cfg["name"])

    async def _read(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        err = asyncio.create_task(self.proc.stderr.read())
        try:
            while line := await self.proc.stdout.readline():
                async with self._cond:
                    self.events.append(json.loads(line))
                    self._cond.notify_all()
        finally:
            self.stderr = await err
            async with self._cond:
                self.events.append({"event": "eof"})
                self._cond.notify_all()

    def _last(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e["event"] == kind), None)

    @property
    def instance(self) -> str | None:
        snap = self._last("snapshot")
        return snap["instance"] if snap else None

    async def wait(self, kind: str, pred: Callable[[dict[str, Any]], bool], what: str,
                   timeout: float = 15.0) -> dict[str, Any]:
        def ok() -> bool:
            last = self._last(kind)
            return self._last("eof") is not None or (last is not None and pred(last))

        async with self._cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cond.wait_for(ok), timeout)
        last = self._last(kind)
        if last is None or not pred(last):
            raise AssertionError(f"agent {self.name}: no {kind} with {what} in {timeout:g}s; "
                                 f"events: {self.events[-10:]}; stderr: {self.stderr.decode()[-2000:]}")
        return last

    async def wait_endpoints(self, pred: Callable[[list[list[Any]]], bool], what: str,
                             timeout: float = 15.0) -> list[list[Any]]:
        ev = await self.wait("snapshot", lambda e: pred(e["endpoints"]), what, timeout)
        return list(ev["endpoints"])

    def signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def terminate(self) -> None:
        """SIGTERM: the agent closes the strategy (goodbye) and exits."""
        self.signal(signal.SIGTERM)
        await asyncio.wait_for(self.proc.wait(), 15.0)
        await self._reader
        assert self.events[-2:] == [{"event": "closed"}, {"event": "eof"}], self.events[-5:]

    async def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def agents() -> AsyncIterator[list[Agent]]:
    started: list[Agent] = []
    try:
        yield started
    finally:
        for agent in started:
            await agent.kill()


def agent_cfg(name: str, port: int, **kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"cluster": "c", "name": name, "inc": f"{name}-inc",
                           "host": "127.0.0.1", "port": port, "interfaces": LO}
    cfg.update(kw)
    return cfg


# ------------------------------------------------------------- pure unit tests


def test_parse_txt_reads_a_peerlink_record() -> None:
    props: dict[bytes, bytes | None] = {b"txtvers": b"1", b"cluster": b"chat", b"node": b"n\xc3\xb6de",
                                        b"inc": b"abc", b"proto": b"1", b"extra": None}
    assert parse_txt(props) == ServiceRecord("chat", "nöde", "abc", 1)
    # keys are case-insensitive (RFC 6763 §6.4)
    assert parse_txt({b"CLUSTER": b"c", b"Node": b"n", b"inc": b"i", b"proto": b"2"}).protocol_version == 2


@pytest.mark.parametrize(("props", "reason"), [
    ({}, "lacks cluster, node, inc, proto"),
    ({b"cluster": b"c", b"node": b"n", b"inc": b"i"}, "lacks proto"),
    ({b"cluster": b"", b"node": b"n", b"inc": b"i", b"proto": b"1"}, "lacks cluster"),
    ({b"cluster": None, b"node": b"n", b"inc": b"i", b"proto": b"1"}, "has no value"),
    ({b"cluster": b"\xff\xfe", b"node": b"n", b"inc": b"i", b"proto": b"1"}, "not UTF-8"),
    ({b"cluster": b"c", b"node": b"n", b"inc": b"i", b"proto": b"one"}, "not an integer"),
    ({b"\xffkey": b"x", b"cluster": b"c"}, "not ASCII"),
])
def test_parse_txt_rejects_malformed_records(props: dict[bytes, bytes | None], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_txt(props)


@pytest.mark.parametrize(("name", "label"), [
    ("node-1", "node-1"),
    ("web.example.com", "web-example-com"),      # python-zeroconf does not escape dots
    ("back\\slash", "back-slash"),
    ("tab\there\x00", "tab-here"),
    ("snow ☃ man", "snow ☃ man"),                # UTF-8 is fine in instance names
    ("", "peerlink"),
    ("...", "peerlink"),
    ("é" * 40, "é" * 28),                        # 56 bytes, on a character boundary
])
def test_instance_label_is_dns_sd_safe(name: str, label: str) -> None:
    assert instance_label(name) == label
    assert len(instance_label(name).encode()) <= 56


def test_host_label_is_unique_per_incarnation_and_ascii() -> None:
    assert host_label("node.1", "3f2a9c1e-77") == "node-1-3f2a9c1e"
    assert host_label("☃", "ab") == "peerlink-ab"
    assert host_label("n", "x") != host_label("n", "y")


def test_choose_address_prefers_on_link_then_non_loopback_then_ipv4() -> None:
    addrs = ["fe80::1%2", "fd77::2", "10.0.0.9", "10.0.0.3"]
    assert _choose_address(addrs, "any") == "10.0.0.3"
    assert _choose_address(addrs, "v6") == "fd77::2"
    assert _choose_address(["fe80::1%2", "fd77::2"], "v4") is None
    assert _choose_address(["fe80::1%2", "0.0.0.0", "junk"], "any") is None
    # a host with a container bridge: the address on our own network wins
    lan = [ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("fd77::/64")]
    assert _choose_address(["172.17.0.1", "192.168.1.7"], "any", lan) == "192.168.1.7"
    assert _choose_address(["172.17.0.1", "fd77::7"], "any", lan) == "fd77::7"
    assert _choose_address(["127.0.0.1", "192.168.9.9"], "any") == "192.168.9.9"


def test_url_form_and_describe() -> None:
    assert strategy_class("mdns") is MDNS
    s = from_url("mdns://?interfaces=eth0,lo&ip=v4&service=_chat._tcp.local.&recheck=5"
                 "&confirm_timeout=0.5&resolve_timeout=2&advertise=false")
    assert isinstance(s, MDNS)
    assert (s.interfaces, s.ip_version, s.service, s.recheck, s.confirm_timeout,
            s.resolve_timeout, s.advertise) == (["eth0", "lo"], "v4", "_chat._tcp.local.", 5.0,
                                                0.5, 2.0, False)
    assert s.describe() == "mdns://?interfaces=eth0,lo&ip=v4&service=_chat._tcp.local."
    default = from_url("mdns://")
    assert isinstance(default, MDNS)
    assert (default.interfaces, default.ip_version, default.service) == (None, "any", TYPE)
    assert default.describe() == "mdns://"


@pytest.mark.parametrize(("url", "message"), [
    ("mdns://?ip=v5", "ip=.v5."),
    ("mdns://?colour=blue", "unknown option"),
    ("mdns://somehost", r"expected mdns://\?options"),
    ("mdns://?service=_x._tcp.example.com", "expected a type"),
    ("mdns://?recheck=0", "recheck"),
])
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_url(url)


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="ip_version"):
        MDNS(ip_version="ipv4")
    with pytest.raises(ConfigError, match="not a string"):
        MDNS(interfaces="eth0")
    with pytest.raises(ConfigError, match="confirm_timeout"):
        MDNS(confirm_timeout=-1)
    assert MDNS("_chat._tcp.local").service == "_chat._tcp.local."


@multicast
def test_select_interfaces_on_loopback() -> None:
    sel = select_interfaces(LO, "any")
    assert (sel.zc_interfaces, sel.addresses) == (["127.0.0.1"], ["127.0.0.1"])
    assert sel.networks == [ipaddress.ip_network("127.0.0.0/8")]
    by_name = select_interfaces(["lo"], "v4")
    assert by_name.addresses == ["127.0.0.1"]
    # lo has no MULTICAST flag: no IPv6 mDNS on it (TEST-ENV §2)
    with pytest.raises(DiscoveryError, match="no v6 address"):
        select_interfaces(["lo"], "v6")
    with pytest.raises(DiscoveryError, match="no network interface named 'nosuch0'"):
        select_interfaces(["nosuch0"], "any")
    # under unshare --net only lo exists: the default (non-loopback) finds nothing
    with pytest.raises(DiscoveryError, match=r"interfaces=\['127\.0\.0\.1'\]"):
        select_interfaces(None, "any")


# ------------------------------------------------------- loopback multicast tests


@multicast
async def test_nodes_find_each_other_ignore_other_clusters_and_goodbye_removes() -> None:
    # recheck=60: nothing in this test can come from re-confirmation
    a, b, x = (MDNS(interfaces=LO, recheck=60) for _ in range(3))
    async with watching((a, local("a", 7001)), (b, local("b", 7002)),
                        (x, local("x", 7003, cluster="other"))) as (wa, wb, wx):
        await wa.wait_for(lambda s: 7002 in ports(s), "b")
        await wb.wait_for(lambda s: 7001 in ports(s), "a")
        # a has resolved x (and itself) and ignores both
        st = await wa.wait_status(lambda st: any(k.startswith("x.") for k in st), "x resolved")
        st = await wa.wait_status(lambda st: all(v != "resolving" for v in st.values()), "resolved")
        assert st[f"x.{TYPE}"] == "ignored: cluster 'other', not ours", st
        assert st[f"a.{TYPE}"] == "ignored: this node", st
        snap_a = wa.latest
        assert snap_a == frozenset({Endpoint("127.0.0.1", 7002)})
        assert [e.name for e in snap_a] == ["b"]
        # x sees a and b but neither is a candidate for it
        await wx.wait_status(lambda st: len(st) == 3 and all(v.startswith("ignored") for v in st.values()),
                             "x ignores a and b")
        assert await wx.wait_for(lambda s: True, "x registered") == frozenset()
        assert (a.instance_name, b.instance_name) == ("a", "b")

        await wb.close()  # graceful: the goodbye is sent and awaited
        assert b.instance_name is None
        await wa.wait_for(lambda s: 7002 not in ports(s), "b gone after its goodbye")
        assert f"b.{TYPE}" not in a.status()


@multicast
@pytest.mark.slow
async def test_same_name_twice_gets_distinct_instance_names() -> None:
    name = "web.one\\ ☃"  # dots and backslashes are not kept; UTF-8 is
    first, second = MDNS(interfaces=LO, recheck=60), MDNS(interfaces=LO, recheck=60)
    async with watching((first, local(name, 7011, inc="one"))) as (w1,):
        await w1.wait_for(lambda s: True, "registration")
        async with watching((second, local(name, 7012, inc="two"))) as (w2,):
            # zeroconf's probe usually finds the name taken; if it misses (a probe's
            # unicast answer is lost when responders share a host), the conflict is
            # resolved after the fact: the greater incarnation ("two") renames
            await w1.wait_for(lambda s: 7012 in ports(s), "the second node")
            await w2.wait_for(lambda s: 7011 in ports(s), "the first node")
            await poll(lambda: second.instance_name == "web-one- ☃-2", "the second renamed",
                       detail=lambda: f"instance names {first.instance_name!r}, {second.instance_name!r}")
            assert first.instance_name == "web-one- ☃"
            await w1.wait_for(lambda s: 7012 in ports(s), "the second node")
            await w2.wait_for(lambda s: 7011 in ports(s), "the first node")
            assert {e.name for e in w1.latest or ()} == {name}
            assert {e.name for e in w2.latest or ()} == {name}


@multicast
async def test_malformed_and_foreign_services_are_ignored() -> None:
    good_txt = {"cluster": "c", "node": "good", "inc": "1", "proto": "1"}
    services: list[tuple[str, dict[Any, Any], int]] = [
        ('odd "name"; with (stuff) & ünï', good_txt, 7031),                # a candidate
        ("printer", {"rp": "queue", "note": "an avahi/Bonjour service"}, 7032),  # no peerlink keys
        ("badproto", {**good_txt, "node": "bp", "proto": "one"}, 7033),
        ("badutf8", {b"cluster": b"\xff\xfe", b"node": b"x", b"inc": b"1", b"proto": b"1"}, 7034),
        ("novalue", {b"cluster": None, b"node": b"x", b"inc": b"1", b"proto": b"1"}, 7035),
        ("notxt", {}, 7036),
    ]
    zc = AsyncZeroconf(interfaces=LO)
    infos = [AsyncServiceInfo(TYPE, f"{n}.{TYPE}", port=p, properties=txt,
                              server=f"raw{p}.local.", parsed_addresses=["127.0.0.1"])
             for n, txt, p in services]
    try:
        pending = await asyncio.gather(*(zc.async_register_service(i) for i in infos))
        await asyncio.gather(*pending)
        a = MDNS(interfaces=LO, recheck=60)
        async with watching((a, local("a", 7030))) as (wa,):
            await wa.wait_for(lambda s: 7031 in ports(s), "the odd-but-valid service")
            st = await wa.wait_status(
                lambda st: len(st) == len(services) + 1 and "resolving" not in st.values(),
                "every service resolved")
            assert wa.latest == frozenset({Endpoint("127.0.0.1", 7031)})
            reasons = {k.split(".")[0]: v for k, v in st.items()}
            assert reasons["printer"] == "ignored: not a peerlink record: TXT lacks cluster, node, inc, proto"
            assert "is not an integer" in reasons["badproto"]
            assert "not UTF-8" in reasons["badutf8"]
            assert "has no value" in reasons["novalue"]
            assert "TXT lacks" in reasons["notxt"]
    finally:
        await zc.async_unregister_all_services()
        await zc.async_close()


@multicast
@pytest.mark.slow
async def test_hung_and_crashed_peers_expire_and_a_restart_is_followed() -> None:
    async with agents() as started:
        b1 = await Agent.start(agent_cfg("b", 7022, inc="first"))
        started.append(b1)
        await b1.wait("snapshot", lambda e: True, "registration")
        # a re-confirms every 1.5 s; c would take 60 s, but may be told to do it now
        a = MDNS(interfaces=LO, recheck=1.5, confirm_timeout=1.0)
        c = MDNS(interfaces=LO, recheck=60, confirm_timeout=1.0)
        async with watching((a, local("a", 7021)), (c, local("c", 7023))) as (wa, wc):
            await wa.wait_for(lambda s: 7022 in ports(s), "b")
            await wc.wait_for(lambda s: 7022 in ports(s), "b")

            # hung: SIGSTOP sends no goodbye; the periodic re-confirmation drops it...
            b1.signal(signal.SIGSTOP)
            await wa.wait_for(lambda s: 7022 not in ports(s), "b dropped while stopped")
            assert a.status()[f"b.{TYPE}"] == "stale"
            # ...and it is back as soon as it answers again
            b1.signal(signal.SIGCONT)
            await wa.wait_for(lambda s: 7022 in ports(s), "b back after SIGCONT")

            # crash: kill -9, no goodbye; zeroconf alone would keep it for >= 1125 s
            await b1.kill()
            await wa.wait_for(lambda s: 7022 not in ports(s), "b dropped after kill -9")
            assert 7022 in ports(wc.latest or frozenset())  # c has not re-confirmed yet
            c.reconfirm(Endpoint("127.0.0.1", 7022))
            await wc.wait_for(lambda s: 7022 not in ports(s), "b dropped after reconfirm()")

            # restart under the same name, new incarnation and port: followed by both
            b2 = await Agent.start(agent_cfg("b", 7024, inc="second"))
            started.append(b2)
            await wa.wait_for(lambda s: ports(s) == {7023, 7024}, "the new b (and c)")
            await wc.wait_for(lambda s: ports(s) == {7021, 7024}, "the new b (and a)")
            await b2.wait("snapshot", lambda e: e["instance"] == "b",
                          "the name: the crashed one holds none")
            assert a.status()[f"b.{TYPE}"] == "candidate 127.0.0.1:7024"

            # graceful stop of a process: goodbye, gone at once for both
            await b2.terminate()
            await wa.wait_for(lambda s: 7024 not in ports(s), "b gone after SIGTERM")
            await wc.wait_for(lambda s: 7024 not in ports(s), "b gone after SIGTERM")


@multicast
async def test_browse_only_does_not_advertise() -> None:
    quiet, loud = MDNS(interfaces=LO, advertise=False, recheck=60), MDNS(interfaces=LO, recheck=60)
    async with watching((quiet, local("quiet", 7041)), (loud, local("loud", 7042))) as (wq, wl):
        await wq.wait_for(lambda s: ports(s) == {7042}, "the advertised node")
        assert quiet.instance_name is None
        # loud has seen its own registration resolve; quiet never appears
        await wl.wait_status(lambda st: st.get(f"loud.{TYPE}") == "ignored: this node", "itself")
        assert not any(k.startswith("quiet") for k in loud.status())
        assert await wl.wait_for(lambda s: True, "registration") == frozenset()


# ------------------------------------------------------------ avahi interop


def _avahi_skip() -> str | None:
    return _multicast_unsafe_reason() or netns_unavailable_reason() or avahi_unavailable_reason()


@requires_netns
@pytest.mark.slow
async def test_interop_with_avahi(tmp_path: Path) -> None:
    if reason := _avahi_skip():
        pytest.skip(reason)
    lab = Lab(2)
    avahi: Avahi | None = None
    try:
        avahi = await Avahi.start(lab.ns(1), tmp_path / "avahi")
        async with agents() as started:
            pl = await Agent.start(agent_cfg("pl.node", 7100, host="0.0.0.0", inc="i-1",
                                             interfaces=["eth0"]), prefix=lab.exec_prefix(2))
            started.append(pl)
            await pl.wait("snapshot", lambda e: True, "registration")

            # avahi sees peerlink's service, its addresses and its TXT (no cookie)
            rows = await avahi.browse("_peerlink._tcp", lambda r: r.name == "pl-node")
            mine = [r for r in rows if r.name == "pl-node"]
            assert {(r.address, r.port) for r in mine} <= {("10.77.0.2", 7100), ("fd77::2", 7100)}
            assert mine[0].txt == {"txtvers": "1", "cluster": "c", "node": "pl.node",
                                   "inc": "i-1", "proto": "1"}

            # peerlink finds services avahi publishes, when they carry its TXT keys
            av = await avahi.publish("avnode", "_peerlink._tcp", 7001,
                                     {"cluster": "c", "node": "avnode", "inc": "av1", "proto": "1"})
            await avahi.publish("avbare", "_peerlink._tcp", 7002, {"path": "/"})
            await avahi.publish("avother", "_peerlink._tcp", 7003,
                                {"cluster": "elsewhere", "node": "o", "inc": "1", "proto": "1"})
            eps = await pl.wait_endpoints(lambda e: ["10.77.0.1", 7001, "avnode"] in e, "avnode")
            await pl.wait("status", lambda e: {k.split(".")[0]: v.split(":")[0] for k, v
                                               in e["status"].items()}
                          == {"pl-node": "ignored", "avnode": "candidate 10.77.0.1",
                              "avbare": "ignored", "avother": "ignored"}, "all resolved")
            assert eps == [["10.77.0.1", 7001, "avnode"]]
            # avahi's goodbye removes it
            await avahi.unpublish(av)
            await pl.wait_endpoints(lambda e: e == [], "avnode gone after its goodbye")
            await pl.terminate()
    finally:
        if avahi is not None:
            await avahi.close()
        lab.close()
