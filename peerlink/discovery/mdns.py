"""mDNS / DNS-SD discovery with python-zeroconf. Imports only discovery.base, errors,
zeroconf and ifaddr (a zeroconf dependency); zeroconf is imported nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ifaddr
from zeroconf import (
    DNSQuestionType,
    IPVersion,
    RecordUpdate,
    RecordUpdateListener,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf._dns import DNSQuestion  # re-exported by zeroconf for compatibility
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ..errors import ConfigError, DiscoveryError
from .base import Endpoint, LocalNode, Snapshot, Strategy, UrlOptions

if TYPE_CHECKING:
    from zeroconf._utils.net import InterfacesType

__all__ = ["MDNS", "ServiceRecord", "parse_txt"]

log = logging.getLogger(__name__)

DEFAULT_SERVICE = "_peerlink._tcp.local."

# TXT keys peerlink publishes (RFC 6763 §6.4: keys of 9 characters or fewer).
TXT_CLUSTER = "cluster"
TXT_NODE = "node"
TXT_INCARNATION = "inc"
TXT_PROTOCOL = "proto"
TXT_VERSION = "txtvers"
_REQUIRED_KEYS = (TXT_CLUSTER, TXT_NODE, TXT_INCARNATION, TXT_PROTOCOL)

# DNS wire constants (RFC 1035); written here rather than taken from zeroconf.const.
_FLAGS_QUERY = 0x0000
_TYPE_SRV = 33
_TYPE_TXT = 16
_CLASS_IN = 1

# An instance label is at most 63 bytes (RFC 6763 §4.1.1); leave room for the
# "-NN" suffix zeroconf appends when it renames on a conflict.
_MAX_INSTANCE_BYTES = 56
# Bounds what a noisy LAN can make one strategy track (services of our type).
_MAX_TRACKED = 4096
# Linux interface flags (include/uapi/linux/if.h), read from /sys/class/net/*/flags.
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_MULTICAST = 0x1000
# Left out of the default interfaces: container and VM bridges exist with the same
# addresses on many hosts (docker0 is 172.17.0.1 everywhere); name them to use them.
_VIRTUAL_PREFIXES = ("docker", "veth", "br-", "virbr", "cni", "flannel", "cali", "podman",
                     "lxcbr")

_IP_VERSIONS = ("any", "v4", "v6")
# After a name conflict, the node that keeps the name re-announces once the other has
# withdrawn (its goodbye for the shared PTR record takes ~0.25 s).
_REASSERT_DELAY = 1.0


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """What a resolved peerlink service says about itself (from its TXT record)."""

    cluster: str
    node: str
    incarnation: str
    protocol_version: int


def parse_txt(properties: dict[bytes, bytes | None]) -> ServiceRecord:
    """Parse a service's TXT properties; ``ValueError`` (with the reason) if they are
    not a peerlink record: a missing or empty key, bytes that are not UTF-8, a
    protocol version that is not an integer."""
    values: dict[str, str] = {}
    for raw_key, raw_value in properties.items():
        try:
            key = raw_key.decode("ascii").lower()
        except UnicodeDecodeError:
            raise ValueError(f"TXT key {raw_key!r} is not ASCII") from None
        if key not in _REQUIRED_KEYS:
            continue
        if raw_value is None:
            raise ValueError(f"TXT key {key!r} has no value")
        try:
            values[key] = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"TXT {key}= is not UTF-8") from None
    missing = [k for k in _REQUIRED_KEYS if not values.get(k)]
    if missing:
        raise ValueError(f"TXT lacks {', '.join(missing)}")
    try:
        protocol = int(values[TXT_PROTOCOL])
    except ValueError:
        raise ValueError(f"TXT proto={values[TXT_PROTOCOL]!r} is not an integer") from None
    return ServiceRecord(values[TXT_CLUSTER], values[TXT_NODE], values[TXT_INCARNATION], protocol)


def instance_label(name: str) -> str:
    """A DNS-SD-safe instance label for a node name: no control characters, no dots or
    backslashes (python-zeroconf does not escape them), at most 56 UTF-8 bytes."""
    text = "".join("-" if (ord(c) < 0x20 or ord(c) == 0x7F or c in ".\\") else c for c in name)
    text = text.strip(" -") or "peerlink"
    raw = text.encode("utf-8")[:_MAX_INSTANCE_BYTES]
    return raw.decode("utf-8", errors="ignore").rstrip(" -") or "peerlink"


def host_label(name: str, incarnation: str) -> str:
    """A host name label unique to this incarnation (``name-1a2b3c4d``), so that two
    nodes with one name, or a node and its crashed predecessor, never share A/AAAA
    records."""
    base = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:40] or "peerlink"
    tag = re.sub(r"[^A-Za-z0-9]+", "", incarnation)[:8].lower() or secrets.token_hex(4)
    return f"{base}-{tag}"


def _interface_flags(name: str) -> int | None:
    try:
        with open(f"/sys/class/net/{name}/flags", encoding="ascii") as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass(slots=True)
class _Interfaces:
    """What zeroconf listens on and what we advertise."""

    zc_interfaces: list[str | int]
    zc_ip_version: IPVersion
    addresses: list[str]  # dialable addresses on those interfaces (no fe80::)
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]  # their on-link prefixes


def _dialable(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return not (addr.version == 6 and addr.is_link_local) and not addr.is_unspecified


def select_interfaces(interfaces: Sequence[str] | None, ip_version: str) -> _Interfaces:
    """Map interface names and IP literals to zeroconf's interface list (IPv4 addresses,
    IPv6 interface indexes) and to the addresses to advertise. ``None`` means every
    interface that is up, multicast-capable and not loopback. Raises ``DiscoveryError``
    when nothing usable is left."""
    want4 = ip_version in ("any", "v4")
    want6 = ip_version in ("any", "v6")
    adapters = ifaddr.get_adapters()
    zc: list[str | int] = []
    addresses: list[str] = []
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    has4 = has6 = False

    def network_of(ip: Any) -> None:
        text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
        with contextlib.suppress(ValueError):
            networks.append(ipaddress.ip_network(f"{text}/{ip.network_prefix}", strict=False))

    def add_adapter(adapter: Any) -> None:
        nonlocal has4, has6
        flags = _interface_flags(adapter.name)
        multicast = flags is None or bool(flags & _IFF_MULTICAST)
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                if want4:
                    zc.append(ip.ip)
                    addresses.append(ip.ip)
                    network_of(ip)
                    has4 = True
            elif want6 and multicast:
                # IPv6 multicast is joined per interface index; loopback without the
                # MULTICAST flag cannot carry it (TEST-ENV §2)
                if adapter.index not in zc:
                    zc.append(adapter.index)
                addresses.append(ip.ip[0])
                network_of(ip)
                has6 = True

    if interfaces is None:
        for adapter in adapters:
            if adapter.name.startswith(_VIRTUAL_PREFIXES):
                continue
            flags = _interface_flags(adapter.name)
            if flags is not None:
                if flags & _IFF_LOOPBACK or not flags & _IFF_UP or not flags & _IFF_MULTICAST:
                    continue
            elif all(ipaddress.ip_address(ip.ip if isinstance(ip.ip, str) else ip.ip[0]).is_loopback
                     for ip in adapter.ips):
                continue
            add_adapter(adapter)
    else:
        for item in interfaces:
            if _is_ip(item):
                addr = ipaddress.ip_address(item.split("%", 1)[0])
                if addr.version == 4 and want4:
                    zc.append(str(addr))
                    has4 = True
                elif addr.version == 6 and want6:
                    zc.append(_index_of(adapters, str(addr)))
                    has6 = True
                else:
                    continue
                addresses.append(str(addr))
                for ip in (ip for a in adapters for ip in a.ips):
                    if (ip.ip if isinstance(ip.ip, str) else ip.ip[0]) == str(addr):
                        network_of(ip)
                continue
            matches = [a for a in adapters if item in (a.name, a.nice_name)]
            if not matches:
                raise DiscoveryError("mdns", f"no network interface named {item!r}")
            for adapter in matches:
                add_adapter(adapter)
    if not zc:
        which = "any multicast-capable non-loopback interface" if interfaces is None else \
            f"interfaces {', '.join(interfaces)}"
        raise DiscoveryError(
            "mdns", f"no {ip_version if ip_version != 'any' else 'IP'} address on {which} "
            "(for one host, use interfaces=['127.0.0.1'])")
    version = IPVersion.All if has4 and has6 else IPVersion.V6Only if has6 else IPVersion.V4Only
    return _Interfaces(zc, version, [a for a in dict.fromkeys(addresses) if _dialable(a)],
                       networks)


def _index_of(adapters: Iterable[Any], ip6: str) -> int:
    for adapter in adapters:
        for ip in adapter.ips:
            if not isinstance(ip.ip, str) and ip.ip[0] == ip6:
                return int(adapter.index)
    raise DiscoveryError("mdns", f"no interface has the address {ip6}")


def _choose_address(
    addresses: Iterable[str],
    ip_version: str,
    networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
) -> str | None:
    """One address to dial per service: one on a network of our chosen interfaces
    before others, non-loopback before loopback, IPv4 before IPv6 (with ``any``), then
    the lowest; never a link-local IPv6 address (it would need a scope)."""
    best: tuple[bool, bool, int, int, str] | None = None
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if addr.is_unspecified or (addr.version == 6 and addr.is_link_local):
            continue
        if (addr.version == 4 and ip_version == "v6") or (addr.version == 6 and ip_version == "v4"):
            continue
        on_link = any(addr in net for net in networks)
        key = (not on_link, addr.is_loopback, addr.version, int(addr), str(addr))
        if best is None or key < best:
            best = key
    return best[-1] if best else None


@dataclass(slots=True)
class _Candidate:
    name: str                       # full service name, as announced
    endpoint: Endpoint | None = None
    record: ServiceRecord | None = None
    next_check: float = 0.0         # monotonic: when to re-confirm it
    heard: float = 0.0              # monotonic: when we last received its SRV/TXT
    stale: bool = False             # failed re-confirmation: not a candidate
    ignored: str | None = None      # why it is not ours (other cluster, bad TXT, us)
    resolving: asyncio.Task[None] | None = None
    dirty: bool = False             # changed while a resolve was running


class _Listener(RecordUpdateListener):
    """Tells the session whenever an SRV or TXT record of a tracked service arrives."""

    def __init__(self, session: _Session) -> None:
        super().__init__()
        self._session = session

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        for update in records:
            record = update.new
            if record.type in (_TYPE_SRV, _TYPE_TXT) and record.ttl > 1:
                self._session.heard(record.name)

    def async_update_records_complete(self) -> None:
        pass


class MDNS(Strategy):
    """Multicast DNS / DNS-SD (RFC 6762/6763): nodes on one link find each other with
    no server, and interoperate with avahi and Bonjour.

    Assumes: the nodes share a link-local network (one LAN, VLAN or bridge) that carries
    multicast to 224.0.0.251 / ff02::fb on UDP port 5353. Routers do not forward mDNS,
    and most cloud networks and Kubernetes pod networks drop multicast: use DNS or
    Kubernetes discovery there.

    What it does, per node:

    * **Advertises** the node as a service of type ``service``: instance name = the node
      name made DNS-SD-safe (control characters, dots and backslashes become ``-``, at
      most 56 bytes); if another node already holds that name, zeroconf's probing picks
      ``name-2``, ``name-3``... (``instance_name`` says which). The host name is
      ``<name>-<incarnation prefix>.local.``, so no two nodes (nor a restarted node and
      its crashed predecessor) ever own the same A/AAAA records. Port = the node's
      advertised port. Addresses = the advertised host when it is a specific IP,
      otherwise (a wildcard or a DNS name, or loopback while the chosen interfaces are
      not) every address of the chosen interfaces, link-local IPv6 excluded. TXT:
      ``txtvers=1 cluster=<cluster> node=<name> inc=<incarnation> proto=<version>``;
      never the cookie.
    * **Browses and resolves** the same type. A service is a candidate when its TXT has
      all four keys and ``cluster`` equals ours; our own record (same node and
      incarnation) is left out. One endpoint per service: an address on one of our
      interfaces' networks first, then non-loopback, then IPv4 before IPv6 (with
      ``ip_version="any"``); never a link-local IPv6 one. Other clusters, missing
      or malformed TXT keys (an avahi or Bonjour service without them), unresolvable
      services and odd names are ignored with a debug log.
    * **Follows changes**: a re-announcement with a new incarnation, port or address
      replaces the candidate; a goodbye (graceful unregister) removes it at once.
    * **Expires crashed peers (re-confirmation).** A node killed with no goodbye stays
      in every zeroconf cache for a long time (PTR records live >= 1125 s). So each
      candidate remembers when one of its SRV/TXT records last arrived. A candidate not
      heard from for ``recheck`` seconds (jittered by ±10 %) is asked again: one
      multicast SRV query per due candidate, batched into one packet, with no known
      answers, so a live responder must answer. The query is repeated once after
      ``confirm_timeout``; if neither is answered, the candidate is marked stale and
      leaves the snapshot (so it is no longer dialled). Answers are multicast, so one
      node's re-confirmation also refreshes every other node's view, and on a busy
      network most nodes never need to ask. Stale candidates keep being asked every
      ``recheck`` seconds; any answer or announcement (a healed partition, a restart
      under the same instance name) makes them candidates again at once. When zeroconf
      finally drops the record (a goodbye or TTL expiry) they are forgotten.
      ``reconfirm()`` asks about every candidate now (e.g. when a link to one fails).
      Worst-case time to drop a crashed peer: ``recheck + 2 * confirm_timeout``
      (12 s by default); the link heartbeat reports the leave itself much earlier.

    Options:
        service: DNS-SD service type, default ``"_peerlink._tcp.local."``.
        interfaces: interface names (``"eth0"``) and/or IP literals (``"127.0.0.1"``);
            default: every interface that is up, multicast-capable and not loopback,
            except container/VM bridges (``docker*``, ``veth*``, ``br-*``, ``virbr*``,
            ``cni*``, ``flannel*``, ``cali*``, ``podman*``, ``lxcbr*``).
            For several nodes on one host, use ``["127.0.0.1"]`` (IPv4 multicast works
            on loopback; IPv6 does not).
        ip_version: ``"any"`` (default), ``"v4"`` or ``"v6"``: which families to
            speak mDNS over, advertise and dial.
        advertise: publish this node (default ``True``); ``False`` only browses.
        recheck: seconds without hearing from a candidate before re-confirming it
            (default 10.0).
        confirm_timeout: seconds to wait for each re-confirmation answer (default 1.0).
        resolve_timeout: seconds to wait when resolving a newly seen service (3.0).

    URL form: ``mdns://?interfaces=eth0,lo&ip=v4&service=_peerlink._tcp.local.``, plus
    ``advertise=false``, ``recheck=5``, ``confirm_timeout=0.5``, ``resolve_timeout=2``.

    Empty and failure: the first snapshot comes once this node's registration has
    finished (about 1.7 s of probing); an empty snapshot means nobody answered.
    Failures (no usable interface, a socket error, a registration that fails) raise
    ``DiscoveryError``; the runner retries with backoff, re-reading the interfaces.
    The interfaces and their addresses are read when ``watch()`` starts. Registration
    is withdrawn (goodbye packets sent and awaited) when ``watch()`` is closed.
    """

    scheme = "mdns"

    def __init__(
        self,
        service: str = DEFAULT_SERVICE,
        *,
        interfaces: Sequence[str] | None = None,
        ip_version: str = "any",
        advertise: bool = True,
        recheck: float = 10.0,
        confirm_timeout: float = 1.0,
        resolve_timeout: float = 3.0,
    ) -> None:
        if not service.endswith("."):
            service += "."
        if not service.endswith(".local."):
            raise ConfigError(f"mdns service {service!r}: expected a type such as {DEFAULT_SERVICE}")
        if ip_version not in _IP_VERSIONS:
            raise ConfigError(f"mdns ip_version={ip_version!r}: expected one of {', '.join(_IP_VERSIONS)}")
        if isinstance(interfaces, str):
            raise ConfigError("mdns interfaces: expected a list of names or addresses, not a string")
        for name, value in (("recheck", recheck), ("confirm_timeout", confirm_timeout),
                            ("resolve_timeout", resolve_timeout)):
            if not value > 0:
                raise ConfigError(f"mdns {name} must be > 0, got {value!r}")
        self.service = service
        self.interfaces = list(interfaces) if interfaces is not None else None
        self.ip_version = ip_version
        self.advertise = advertise
        self.recheck = float(recheck)
        self.confirm_timeout = float(confirm_timeout)
        self.resolve_timeout = float(resolve_timeout)
        #: The instance name registered by the running ``watch()`` (``None`` otherwise).
        self.instance_name: str | None = None
        self._session: _Session | None = None

    @classmethod
    def from_url(cls, url: str) -> MDNS:
        opts = UrlOptions(url, cls.scheme)
        if opts.netloc or opts.path.strip("/"):
            raise opts.error("expected mdns://?options, e.g. mdns://?interfaces=eth0&ip=v4")
        service = opts.str("service", DEFAULT_SERVICE) or DEFAULT_SERVICE
        interfaces = opts.list("interfaces") or None
        ip_version = opts.choice("ip", "any", _IP_VERSIONS)
        advertise = opts.bool("advertise", True)
        recheck = opts.float("recheck", 10.0)
        confirm_timeout = opts.float("confirm_timeout", 1.0)
        resolve_timeout = opts.float("resolve_timeout", 3.0)
        opts.finish()
        return cls(service, interfaces=interfaces, ip_version=ip_version, advertise=advertise,
                   recheck=recheck, confirm_timeout=confirm_timeout,
                   resolve_timeout=resolve_timeout)

    def describe(self) -> str:
        parts = []
        if self.interfaces is not None:
            parts.append("interfaces=" + ",".join(self.interfaces))
        if self.ip_version != "any":
            parts.append(f"ip={self.ip_version}")
        if self.service != DEFAULT_SERVICE:
            parts.append(f"service={self.service}")
        return "mdns://" + ("?" + "&".join(parts) if parts else "")

    def reconfirm(self, endpoint: Endpoint | None = None) -> None:
        """Re-confirm the candidate at ``endpoint`` (every candidate if ``None``) now
        instead of at the next ``recheck``; one that does not answer leaves the snapshot
        within ``2 * confirm_timeout``. Meant for the caller that saw a link to it fail.
        Safe to call at any time; does nothing while ``watch()`` is not running."""
        if self._session is not None:
            self._session.reconfirm(endpoint)

    def suspect(self, endpoint: Endpoint) -> None:
        """A link to ``endpoint`` died: re-confirm it now rather than at the next recheck."""
        self.reconfirm(endpoint)

    def status(self) -> dict[str, str]:
        """What the running ``watch()`` tracks, for ``doctor`` and tests: service name ->
        ``"candidate HOST:PORT"``, ``"stale"`` (failed re-confirmation),
        ``"ignored: <why>"`` (another cluster, bad TXT, this node) or ``"resolving"``."""
        return self._session.status() if self._session is not None else {}

    async def watch(self, local: LocalNode) -> AsyncIterator[Snapshot]:
        session = _Session(self, local)
        self._session = session
        try:
            await session.start()
            last: Snapshot | None = None
            while True:
                session.raise_if_failed()
                snapshot = session.snapshot()
                if snapshot != last:
                    last = snapshot
                    yield snapshot
                await session.changed.wait()
                session.changed.clear()
        finally:
            if self._session is session:
                self._session = None
            self.instance_name = None
            await session.close()


class _Session:
    """One ``watch()`` run: a zeroconf instance, our registration, the browser, the
    candidate table and the re-confirmation task."""

    def __init__(self, strategy: MDNS, local: LocalNode) -> None:
        self.s = strategy
        self.local = local
        self.type = strategy.service
        self.changed = asyncio.Event()
        self.candidates: dict[str, _Candidate] = {}
        self.azc: AsyncZeroconf | None = None
        self.browser: AsyncServiceBrowser | None = None
        self.listener: _Listener | None = None
        self.info: AsyncServiceInfo | None = None
        self.addresses: list[str] = []
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.conflict_task: asyncio.Task[None] | None = None
        self.recheck_task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.failure: BaseException | None = None
        self.closing = False

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        ifs = select_interfaces(self.s.interfaces, self.s.ip_version)
        self.networks = ifs.networks
        interfaces: InterfacesType = list(ifs.zc_interfaces)
        try:
            self.azc = AsyncZeroconf(interfaces=interfaces, ip_version=ifs.zc_ip_version)
        except OSError as exc:
            raise DiscoveryError("mdns", f"cannot open mDNS sockets: {exc}") from exc
        zc = self.azc.zeroconf
        self.listener = _Listener(self)
        zc.async_add_listener(self.listener, None)
        # QM (multicast answers) even for the first query: a unicast answer reaches only
        # one of several mDNS sockets on one host (SO_REUSEPORT), and multicast answers
        # also fill the cache that registration checks for a name conflict
        self.browser = AsyncServiceBrowser(zc, [self.type], handlers=[self._on_change],
                                           question_type=DNSQuestionType.QM)
        self.recheck_task = asyncio.create_task(self._recheck_loop(), name="peerlink-mdns-recheck")
        if self.s.advertise:
            await self._register(ifs)

    async def _register(self, ifs: _Interfaces) -> None:
        host = self.local.host.split("%", 1)[0]
        routable = [a for a in ifs.addresses if not ipaddress.ip_address(a).is_loopback]
        if _is_ip(host) and not ipaddress.ip_address(host).is_unspecified:
            if ipaddress.ip_address(host).is_loopback and routable:
                # a wildcard listener with no advertised address falls back to loopback,
                # which no other host could dial
                log.info("mdns: advertised host %s is loopback; advertising %s instead",
                         host, ", ".join(routable))
                self.addresses = routable
            else:
                self.addresses = [host]
        else:
            self.addresses = routable or ifs.addresses
            if host == "0.0.0.0":  # an IPv4-only wildcard listener: IPv6 would not answer
                self.addresses = [a for a in self.addresses if ipaddress.ip_address(a).version == 4]
        if not self.addresses:
            raise DiscoveryError("mdns", "no address to advertise on the chosen interfaces")
        await self._announce(instance_label(self.local.name))

    async def _announce(self, label: str) -> None:
        assert self.azc is not None
        local = self.local
        info = AsyncServiceInfo(
            self.type,
            f"{label}.{self.type}",
            port=local.port,
            properties={
                TXT_VERSION: "1",
                TXT_CLUSTER: local.cluster,
                TXT_NODE: local.name,
                TXT_INCARNATION: local.incarnation,
                TXT_PROTOCOL: str(local.protocol_version),
            },
            server=f"{host_label(local.name, local.incarnation)}.local.",
            parsed_addresses=self.addresses,
        )
        try:
            # the first await probes (about 1.7 s); the second waits for the announcements
            await (await self.azc.async_register_service(info, allow_name_change=True))
        except Exception as exc:
            raise DiscoveryError("mdns", f"cannot register {info.name}: {type(exc).__name__}: {exc}") from exc
        self.info = info
        self.s.instance_name = info.name[: -len(self.type) - 1]
        log.info("mdns: advertising %r as %s:%d (%s)", self.s.instance_name,
                 ",".join(self.addresses), local.port, self.type)

    def _conflict(self, record: ServiceRecord) -> None:
        """Another node announced our instance name after probing missed us (two nodes
        of one name started at once; zeroconf has no simultaneous-probe tie-break, and
        a probe's unicast answer is lost when several responders share a host). RFC 6762
        §9: one of the two must rename. Deterministic tie-break on the incarnation: the
        greater one withdraws and registers as ``name-N``; the other re-announces after
        the withdrawal so that every cache holds its records again."""
        if self.conflict_task is not None and not self.conflict_task.done():
            return
        rename = self.local.incarnation > record.incarnation
        log.warning("mdns: node %r (incarnation %s) also announced %r; %s", record.node,
                    record.incarnation, self.s.instance_name,
                    "renaming this node's service" if rename else "the other one renames")
        self.conflict_task = asyncio.create_task(self._rename() if rename else self._reassert(),
                                                 name="peerlink-mdns-conflict")

    async def _rename(self) -> None:
        try:
            assert self.azc is not None and self.info is not None
            old, self.info = self.info, None
            await self._unregister(old)
            base = instance_label(self.local.name)
            taken = set(self.candidates) | {old.key}
            n = 2
            while f"{base}-{n}.{self.type}".lower() in taken:
                n += 1
            await self._announce(f"{base}-{n}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = exc
            self.changed.set()

    async def _reassert(self) -> None:
        await asyncio.sleep(_REASSERT_DELAY)
        try:
            if self.azc is not None and self.info is not None:
                await (await self.azc.async_update_service(self.info))
        except Exception as exc:  # the next conflict or query answer will tell again
            log.warning("mdns: re-announcing %r failed: %s: %s", self.s.instance_name,
                        type(exc).__name__, exc)

    async def close(self) -> None:
        self.closing = True
        tasks = [c.resolving for c in self.candidates.values() if c.resolving is not None]
        tasks += [t for t in (self.recheck_task, self.conflict_task) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.azc is None:
            return
        try:
            if self.browser is not None:
                await self.browser.async_cancel()
            if self.listener is not None:
                self.azc.zeroconf.async_remove_listener(self.listener)
            if self.info is not None:
                # awaiting the inner awaitable = the goodbye packets have been sent
                await asyncio.wait_for(
                    asyncio.ensure_future(self._unregister(self.info)), timeout=5.0)
                log.info("mdns: withdrew %r", self.info.name)
        except Exception as exc:
            log.warning("mdns: goodbye failed: %s: %s", type(exc).__name__, exc)
        finally:
            await self.azc.async_close()

    async def _unregister(self, info: AsyncServiceInfo) -> None:
        assert self.azc is not None
        await (await self.azc.async_unregister_service(info))

    def raise_if_failed(self) -> None:
        if self.failure is not None:
            raise DiscoveryError("mdns", f"{type(self.failure).__name__}: {self.failure}") from self.failure

    # -- the candidate table --------------------------------------------------------

    def snapshot(self) -> Snapshot:
        out: set[Endpoint] = set()
        for c in self.candidates.values():
            if c.endpoint is not None and not c.stale:
                out.add(c.endpoint)
        return frozenset(out)

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        # a sync callback on the event loop: record, schedule, never block
        if self.closing:
            return
        key = name.lower()
        if state_change is ServiceStateChange.Removed:
            c = self.candidates.pop(key, None)
            if c is not None:
                if c.resolving is not None:
                    c.resolving.cancel()
                log.debug("mdns: %r said goodbye (or expired)", name)
                self.changed.set()
            return
        c = self.candidates.get(key)
        if c is None:
            if len(self.candidates) >= _MAX_TRACKED:
                log.debug("mdns: ignoring %r: already tracking %d services", name, _MAX_TRACKED)
                return
            c = self.candidates[key] = _Candidate(name)
        self._touch(c)
        if c.stale:  # it announced itself: alive again
            c.stale = False
            self.changed.set()
        self._resolve(c)

    def heard(self, name: str) -> None:
        """An SRV or TXT record of ``name`` arrived: it is alive."""
        c = self.candidates.get(name.lower())
        if c is None or self.closing:
            return
        self._touch(c)
        if c.stale:
            c.stale = False
            log.info("mdns: %r answers again", c.name)
            self._resolve(c)  # its records may have changed meanwhile
            self.changed.set()

    def _touch(self, c: _Candidate) -> None:
        now = time.monotonic()
        c.heard = now
        c.next_check = now + self._jittered()

    def _jittered(self) -> float:
        return self.s.recheck * random.uniform(0.9, 1.1)  # timing jitter, not security

    def _resolve(self, c: _Candidate) -> None:
        if c.resolving is not None and not c.resolving.done():
            c.dirty = True
            return
        c.dirty = False
        c.resolving = asyncio.create_task(self._resolve_loop(c), name=f"peerlink-mdns-resolve {c.name}")

    async def _resolve_loop(self, c: _Candidate) -> None:
        try:
            while True:
                await self._resolve_once(c)
                if not c.dirty:
                    return
                c.dirty = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a zeroconf surprise: restart the strategy
            self.failure = exc
            self.changed.set()

    async def _resolve_once(self, c: _Candidate) -> None:
        assert self.azc is not None
        info = AsyncServiceInfo(self.type, c.name)
        ok = await info.async_request(self.azc.zeroconf, int(self.s.resolve_timeout * 1000))
        if self.candidates.get(c.name.lower()) is not c:
            return  # removed meanwhile
        if not ok:
            log.debug("mdns: %r did not resolve within %.1f s; will retry", c.name, self.s.resolve_timeout)
            endpoint = None
            c.ignored = None
            c.next_check = min(c.next_check, time.monotonic() + self.s.confirm_timeout)
            self.wake.set()
        else:
            endpoint, c.ignored = self._endpoint_of(c.name, info)
        if endpoint != c.endpoint or (endpoint is not None and c.endpoint is not None
                                      and endpoint.name != c.endpoint.name):
            c.endpoint = endpoint
            self.changed.set()

    def _endpoint_of(self, name: str, info: AsyncServiceInfo) -> tuple[Endpoint | None, str | None]:
        """The endpoint to dial for a resolved service, or (None, why it is ignored)."""
        try:
            record = parse_txt(info.properties)
        except ValueError as exc:
            return self._ignore(name, f"not a peerlink record: {exc}")
        if record.node == self.local.name and record.incarnation == self.local.incarnation:
            return None, "this node"
        if self.info is not None and name.lower() == self.info.key:
            self._conflict(record)
            return None, "name conflict with this node"
        if record.cluster != self.local.cluster:
            return self._ignore(name, f"cluster {record.cluster!r}, not ours")
        port = info.port
        if not isinstance(port, int) or not 0 < port <= 65535:
            return self._ignore(name, f"bad port {port!r}")
        addresses = info.parsed_scoped_addresses()
        host = _choose_address(addresses, self.s.ip_version, self.networks)
        if host is None:
            return self._ignore(name, f"no usable address ({self.s.ip_version}) in {addresses}")
        return Endpoint(host, port, record.node), None

    @staticmethod
    def _ignore(name: str, why: str) -> tuple[None, str]:
        log.debug("mdns: ignoring %r: %s", name, why)
        return None, why

    def status(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for c in self.candidates.values():
            if c.stale:
                out[c.name] = "stale"
            elif c.endpoint is not None:
                out[c.name] = f"candidate {c.endpoint}"
            elif c.ignored is not None:
                out[c.name] = f"ignored: {c.ignored}"
            else:
                out[c.name] = "resolving"
        return out

    # -- re-confirmation ------------------------------------------------------------

    def reconfirm(self, endpoint: Endpoint | None) -> None:
        now = time.monotonic()
        for c in self.candidates.values():
            if endpoint is None or c.endpoint == endpoint:
                c.next_check = min(c.next_check, now)
        self.wake.set()

    async def _recheck_loop(self) -> None:
        try:
            while True:
                now = time.monotonic()
                watched = [c for c in self.candidates.values() if c.ignored is None]
                due = [c for c in watched if c.next_check <= now]
                if due:
                    await self._confirm(due)
                    continue
                wait = min((c.next_check for c in watched), default=now + self.s.recheck) - now
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=max(wait, 0.05))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = exc
            self.changed.set()

    async def _confirm(self, due: list[_Candidate]) -> None:
        """Ask each due candidate once, and once more after ``confirm_timeout``; any
        SRV/TXT record of it arriving after the first query counts as an answer. A
        responder that multicast the record less than 1 s ago delays its answer by up to
        about 1.5 s (RFC 6762 §6), hence two windows rather than one."""
        asked_at = time.monotonic()
        for _attempt in range(2):
            pending = [c for c in due if c.heard < asked_at and self.candidates.get(c.name.lower()) is c]
            if not pending:
                break
            self._query(pending)
            await asyncio.sleep(self.s.confirm_timeout)
        now = time.monotonic()
        for c in due:
            if self.candidates.get(c.name.lower()) is not c:
                continue
            if c.heard >= asked_at:
                if c.endpoint is None and c.ignored is None:
                    self._resolve(c)  # alive but not (yet) resolved: try again
                continue
            c.next_check = now + self._jittered()
            if not c.stale:
                c.stale = True
                log.info("mdns: %r did not answer 2 queries in %.1f s; no longer a candidate",
                         c.name, now - asked_at)
                self.changed.set()

    def _query(self, candidates: list[_Candidate]) -> None:
        assert self.azc is not None
        out = DNSOutgoing(_FLAGS_QUERY, True)
        for c in candidates:
            # QM, no known answers: every live responder must answer, by multicast
            out.add_question(DNSQuestion(c.name, _TYPE_SRV, _CLASS_IN))
        self.azc.zeroconf.async_send(out)
