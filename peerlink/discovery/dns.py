"""DNS discovery: A/AAAA (``DNS``) and SRV (``DNSSRV``) of a headless Service.
Imports only discovery.base, errors and dnspython.

Both strategies poll (``PollingStrategy``): DNS has no change notification a stub
resolver can use, so the only way to learn that a pod came or went is to ask again.
The poll interval honours a TTL shorter than ``interval`` but never goes below
``MIN_TTL_INTERVAL``.

Failure semantics, shared by both strategies (this is where "DNS had a bad moment"
must not become "everybody left"):

* NXDOMAIN and an empty NOERROR answer are *authoritative*: the snapshot is
  ``frozenset()`` ("nobody").
* SERVFAIL, REFUSED, a timeout, a network error or a malformed answer is a *failure*:
  ``resolve()`` raises ``DiscoveryError`` with a reason a human can act on, and the
  runner keeps the last good snapshot, backs off and retries.
* A partial answer is a failure too: when one of several lookups fails (A answered but
  AAAA got SERVFAIL; one SRV target could not be resolved) nothing is published.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, cast

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.resolver

from ..errors import ConfigError, DiscoveryError
from .base import Endpoint, PollingStrategy, Snapshot, UrlOptions, format_hostport, parse_hostport

__all__ = ["DNS", "DNSSRV", "EXPLICIT_NAMESERVER_TIMEOUT", "MIN_TTL_INTERVAL", "Family"]

log = logging.getLogger(__name__)

Family = Literal["any", "ipv4", "ipv6"]
FAMILIES: tuple[Family, ...] = ("any", "ipv4", "ipv6")

#: A short TTL may make the strategy poll faster than ``interval``, but never faster
#: than this many seconds (a TTL of 0 must not turn into a query storm).
MIN_TTL_INTERVAL = 1.0

#: Lifetime of one lookup (all retries included) when explicit nameservers are given
#: and no ``timeout`` is set. With the system configuration, resolv.conf decides.
EXPLICIT_NAMESERVER_TIMEOUT = 2.0

_RDTYPES: dict[Family, tuple[dns.rdatatype.RdataType, ...]] = {
    "any": (dns.rdatatype.A, dns.rdatatype.AAAA),
    "ipv4": (dns.rdatatype.A,),
    "ipv6": (dns.rdatatype.AAAA,),
}

_SERVER_RE = re.compile(r"^[A-Za-z0-9]+:(?P<addr>.+)@(?P<port>\d+)$")


# -- one lookup ---------------------------------------------------------------------


@dataclass(slots=True)
class _Lookup:
    """The outcome of one query: records (possibly none, authoritatively) or an error."""

    query: str  # "A peers.default.svc.cluster.local"
    rdatas: list[dns.rdata.Rdata] = field(default_factory=list)
    ttl: int | None = None  # only for a non-empty answer
    response: dns.message.Message | None = None
    empty: str | None = None  # "NXDOMAIN" or "no records (NOERROR)" when authoritative empty
    error: str | None = None  # failure reason

    def summary(self) -> str:
        if self.error is not None:
            return f"{self.query}: {self.error}"
        if self.empty is not None:
            return f"{self.query}: {self.empty} (authoritative: nobody)"
        return f"{self.query}: {len(self.rdatas)} record(s), TTL {self.ttl} s"


def _address(rd: dns.rdata.Rdata) -> str | None:
    if isinstance(rd, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
        return str(rd.address)
    return None


def _addresses(rdatas: Iterable[dns.rdata.Rdata]) -> list[str]:
    return [a for a in map(_address, rdatas) if a is not None]


def _server_text(server: str) -> str:
    """dnspython's ``Do53:10.96.0.10@53`` -> ``10.96.0.10:53``."""
    m = _SERVER_RE.match(server)
    return format_hostport(m["addr"], int(m["port"])) if m else server


def _server_errors(errors: Iterable[Sequence[object]]) -> list[str]:
    """Turn dnspython's per-server error trace into short phrases, without repeats."""
    out: list[str] = []
    for err in errors:
        server = _server_text(str(err[0]))
        what = err[3]
        if isinstance(what, str):  # an rcode such as SERVFAIL or REFUSED
            text = f"{what} from {server}"
        elif isinstance(what, dns.exception.Timeout):
            text = f"no answer from {server}"
        elif isinstance(what, OSError):
            text = f"network error talking to {server}: {what.strerror or what}"
        else:
            text = f"{type(what).__name__} from {server}: {what}"
        if text not in out:
            out.append(text)
    return out


def _failure_reason(exc: Exception, lifetime: float | None = None) -> str:
    """A reason a human can act on, for a dnspython (or OS) exception that is a failure.
    ``lifetime`` is the configured time limit of the lookup, if known."""
    if isinstance(exc, dns.resolver.NoNameservers):
        errs = _server_errors(exc.kwargs.get("errors") or [])
        return "; ".join(errs) if errs else "no nameserver could be asked"
    if isinstance(exc, dns.resolver.LifetimeTimeout):
        limit = lifetime if lifetime is not None else float(exc.kwargs.get("timeout") or 0.0)
        errs = _server_errors(exc.kwargs.get("errors") or [])
        detail = f" ({'; '.join(errs)})" if errs else ""
        return f"timeout after {limit:g} s{detail}"
    if isinstance(exc, dns.exception.Timeout):
        return "timeout"
    if isinstance(exc, dns.resolver.NoResolverConfiguration):
        return "no nameservers configured (/etc/resolv.conf); pass nameservers=[...]"
    if isinstance(exc, dns.resolver.YXDOMAIN):
        return "YXDOMAIN: the name is too long after search-domain expansion"
    if isinstance(exc, OSError):
        return f"network error: {exc.strerror or exc}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _parse_nameservers(items: Iterable[str]) -> list[dns.nameserver.Nameserver]:
    out: list[dns.nameserver.Nameserver] = []
    for item in items:
        host, port = parse_hostport(item, default_port=53, what="nameserver")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"nameserver {item!r}: expected an IP address (optionally :port), not a name"
            ) from None
        out.append(dns.nameserver.Do53Nameserver(host, port))
    if not out:
        raise ConfigError("nameservers: expected at least one address, got an empty list")
    return out


def _check_name(name: str, what: str) -> str:
    name = name.strip()
    if not name:
        raise ConfigError(f"{what}: expected a DNS name, got an empty string")
    try:
        dns.name.from_text(name, None)
    except dns.exception.DNSException as exc:
        raise ConfigError(f"{what} {name!r}: not a valid DNS name: {exc}") from None
    return name


def _url_nameservers(opts: UrlOptions) -> list[str] | None:
    given = opts.str("nameserver") is not None
    servers = opts.list("nameserver")
    if given and not servers:
        raise opts.error("nameserver= is empty; expected at least one IP address[:port]")
    return servers or None


# -- shared machinery ---------------------------------------------------------------


class _DNSBase(PollingStrategy):
    """Resolver handling, lookups, error mapping and the TTL-driven interval."""

    scheme: ClassVar[str] = "?"

    def __init__(
        self,
        *,
        family: Family,
        interval: float,
        resolver: dns.asyncresolver.Resolver | None,
        nameservers: Iterable[str] | None,
        timeout: float | None,
    ) -> None:
        if family not in FAMILIES:
            raise ConfigError(f"family={family!r}: expected one of {', '.join(FAMILIES)}")
        if not interval > 0:
            raise ConfigError(f"interval must be > 0 seconds, got {interval!r}")
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}")
        if resolver is not None and nameservers is not None:
            raise ConfigError("give either resolver= or nameservers=, not both")
        if resolver is not None and not isinstance(resolver, dns.asyncresolver.Resolver):
            raise ConfigError(
                f"resolver must be a dns.asyncresolver.Resolver, got {type(resolver).__name__}"
            )
        self.family: Family = family
        self.interval = float(interval)
        self.timeout = timeout
        self.nameservers: tuple[str, ...] | None = None
        self._resolver = resolver
        if nameservers is not None:
            if isinstance(nameservers, str):
                nameservers = [nameservers]
            parsed = _parse_nameservers(nameservers)
            self.nameservers = tuple(
                format_hostport(ns.address, ns.port)
                for ns in parsed
                if isinstance(ns, dns.nameserver.Do53Nameserver)
            )
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = parsed
            lifetime = timeout if timeout is not None else EXPLICIT_NAMESERVER_TIMEOUT
            r.lifetime = lifetime
            r.timeout = min(1.0, lifetime / 2)  # per attempt: a lost datagram is retried
            r.cache = None
            self._resolver = r
        self._ttl: int | None = None
        #: One line per query of the last successful ``resolve()`` (for ``peerlink doctor``).
        self.last_lookup: str | None = None

    # The system resolver is built on first use so that a missing /etc/resolv.conf is
    # a DiscoveryError at lookup time (reported, retried), not a crash at start-up.
    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            try:
                r = dns.asyncresolver.Resolver()
            except (dns.exception.DNSException, OSError) as exc:
                raise DiscoveryError(self.describe(), _failure_reason(exc)) from exc
            r.cache = None  # we poll; a cache would hide changes
            self._resolver = r
        return self._resolver

    def _query_options(self) -> str:
        opts: list[str] = []
        if self.family != "any":
            opts.append(f"family={self.family}")
        if self.interval != 5.0:
            opts.append(f"interval={self.interval:g}")
        if self.nameservers:
            opts.append("nameserver=" + ",".join(self.nameservers))
        if self.timeout is not None:
            opts.append(f"timeout={self.timeout:g}")
        return ("?" + "&".join(opts)) if opts else ""

    def next_interval(self, snapshot: Snapshot) -> float:
        """``interval``, or the last answer's TTL when shorter, but never below
        ``MIN_TTL_INTERVAL`` because of a TTL (an explicit shorter ``interval`` wins)."""
        if self._ttl is None:
            return self.interval
        return min(self.interval, max(float(self._ttl), MIN_TTL_INTERVAL))

    async def _query(
        self,
        resolver: dns.asyncresolver.Resolver,
        name: str | dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
    ) -> _Lookup:
        """One query; never raises (except CancelledError): failures are in ``.error``."""
        text = name.to_text(omit_final_dot=True) if isinstance(name, dns.name.Name) else name
        result = _Lookup(query=f"{dns.rdatatype.to_text(rdtype)} {text}")
        try:
            answer = await resolver.resolve(
                name, rdtype, raise_on_no_answer=False, search=True, lifetime=self.timeout
            )
        except dns.resolver.NXDOMAIN:
            result.empty = "NXDOMAIN"
        except dns.resolver.NoAnswer:  # not raised with raise_on_no_answer=False; be safe
            result.empty = "no records (NOERROR)"
        except (dns.exception.DNSException, OSError) as exc:
            lifetime = self.timeout if self.timeout is not None else resolver.lifetime
            result.error = _failure_reason(exc, lifetime)
        else:
            result.response = answer.response
            if answer.rrset is None or len(answer.rrset) == 0:
                result.empty = "no records (NOERROR)"
            else:
                result.rdatas = list(answer.rrset)
                result.ttl = int(answer.chaining_result.minimum_ttl)
        log.debug("%s: %s", self.scheme, result.summary())
        return result

    async def _lookup_addresses(
        self, resolver: dns.asyncresolver.Resolver, names: Sequence[str | dns.name.Name]
    ) -> list[list[_Lookup]]:
        """A and/or AAAA (per ``family``) of each name, all queries at once; one list of
        lookups per name. Raises ``DiscoveryError`` if *any* lookup failed (a partial
        answer is a guess)."""
        types = _RDTYPES[self.family]
        flat = await asyncio.gather(*(self._query(resolver, n, t) for n in names for t in types))
        self._raise_failures(flat)
        k = len(types)
        return [list(flat[i * k:(i + 1) * k]) for i in range(len(names))]

    def _raise_failures(self, lookups: Sequence[_Lookup]) -> None:
        failed = [lk for lk in lookups if lk.error is not None]
        if not failed:
            return
        reason = "; ".join(f"{lk.query}: {lk.error}" for lk in failed)
        ok = [lk for lk in lookups if lk.error is None]
        if ok:
            reason += " (not using the partial answer: " + "; ".join(lk.summary() for lk in ok) + ")"
            if self.family == "any" and all(lk.query.startswith("AAAA ") for lk in failed):
                reason += "; if this DNS server cannot answer AAAA queries, set family=ipv4"
        raise DiscoveryError(self.describe(), reason)

    def _finish(self, lookups: Sequence[_Lookup]) -> None:
        ttls = [lk.ttl for lk in lookups if lk.ttl is not None]
        self._ttl = min(ttls) if ttls else None
        self.last_lookup = "\n".join(lk.summary() for lk in lookups)


# -- A / AAAA -----------------------------------------------------------------------


class DNS(_DNSBase):
    """Peers are the A/AAAA records of one DNS name (a Kubernetes headless Service).

    Assumes: every peer listens on the same ``port`` and a DNS name lists the address of
    every peer, like a headless Service (``clusterIP: None``) whose DNS name resolves to
    one address per ready pod. No Kubernetes API permissions are needed. This node's own
    address is in the answer too; peerlink recognises and skips it.

    Setup (Kubernetes): the headless Service of ``manifests/base/service.yaml`` and the
    ``manifests/overlays/dns`` overlay (no RBAC needed)::

        apiVersion: v1
        kind: Service
        metadata:
          name: peerlink
        spec:
          clusterIP: None                   # headless: DNS answers with the pod IPs
          publishNotReadyAddresses: false   # only Ready pods: the readiness probe gates membership
          selector:
            app.kubernetes.io/name: peerlink
          ports:
            - name: peerlink
              port: 4370

    and in the pod ``PEERLINK_DISCOVERY=dns://peerlink:4370`` (the pod's search domains
    complete the name within its namespace) or the full name with a trailing dot,
    ``dns://peerlink.default.svc.cluster.local.:4370``, which skips the search list
    (without the dot, ``ndots:5`` makes the resolver try the search domains first).

    Options:

    ===============  ==========  ===================================================
    name             (required)  the DNS name to resolve
    port             (required)  the TCP port every peer listens on
    family           ``"any"``   ``"any"`` (A and AAAA), ``"ipv4"`` (A), ``"ipv6"`` (AAAA)
    interval         ``5.0``     seconds between polls (shorter when the TTL is shorter,
                                 never below ``MIN_TTL_INTERVAL`` = 1 s because of a TTL)
    resolver         system      a ``dns.asyncresolver.Resolver`` to use instead
    nameservers      system      ``["10.96.0.10", "127.0.0.1:15353", "[fd00::a]:53"]``:
                                 ask these servers (no search list, no cache,
                                 2 s per lookup unless ``timeout`` is set)
    timeout          resolver's  seconds one lookup may take, retries included
    ===============  ==========  ===================================================

    The system resolver is configured from ``/etc/resolv.conf`` with its ``search``
    domains and ``ndots`` applied (as in a pod), and without a cache.

    URL form: ``dns://NAME:PORT?family=ipv4&interval=5&nameserver=10.96.0.10:53&timeout=2``
    (``nameserver`` may repeat or hold a comma-separated list).

    Why poll: DNS tells nobody when a record changes, so pods that came or went are only
    seen at the next lookup. A shorter ``interval`` finds new pods sooner at the cost of
    more queries; DNS is only a hint of where to dial, and links do not depend on it.

    Empty and failure:

    * NXDOMAIN or an empty NOERROR answer means "nobody" (an empty snapshot). With
      ``family="any"`` the result is empty only when both A and AAAA say so.
    * SERVFAIL, REFUSED, a timeout or a network error raises ``DiscoveryError``; the last
      good snapshot stands and the lookup is retried with backoff. Existing links are
      never dropped because DNS failed.
    * With ``family="any"``, if one of A/AAAA fails and the other answers, the whole
      lookup fails: a partial answer is a guess (half the cluster may seem gone). A DNS
      server that cannot answer AAAA queries needs ``family="ipv4"``.
    * With search domains, dnspython stops at the first candidate name that exists
      (NOERROR), even without records; use a full name ending in ``.`` to be exact.
    """

    scheme = "dns"

    def __init__(
        self,
        name: str,
        port: int,
        *,
        family: Family = "any",
        interval: float = 5.0,
        resolver: dns.asyncresolver.Resolver | None = None,
        nameservers: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.name = _check_name(name, "DNS name")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
            raise ConfigError(f"port must be an integer in 1..65535, got {port!r}")
        self.port = port
        super().__init__(
            family=family, interval=interval, resolver=resolver,
            nameservers=nameservers, timeout=timeout,
        )

    @classmethod
    def from_url(cls, url: str) -> DNS:
        opts = UrlOptions(url, cls.scheme)
        if not opts.netloc:
            raise opts.error("expected dns://NAME:PORT")
        host, port = parse_hostport(opts.netloc, what=f"discovery URL {url!r}:")
        if opts.path not in ("", "/"):
            raise opts.error(f"unexpected path {opts.path!r}; expected dns://NAME:PORT?options")
        family = opts.choice("family", "any", FAMILIES)
        interval = opts.float("interval", 5.0)
        nameservers = _url_nameservers(opts)
        timeout = opts.float("timeout", 0.0) or None
        opts.finish()
        if port == 0:
            raise opts.error("port must be in 1..65535")
        return cls(
            host, port, family=cast(Family, family),  # choice() checked it
            interval=interval, nameservers=nameservers, timeout=timeout,
        )

    def describe(self) -> str:
        return f"dns://{self.name}:{self.port}{self._query_options()}"

    def __repr__(self) -> str:
        return f"<DNS {self.describe()}>"

    async def resolve(self) -> Snapshot:
        """Look the name up once (A and AAAA concurrently for ``family="any"``).

        Cancel-safe (pending queries are cancelled); not meant to run concurrently
        with itself.

        Raises:
            DiscoveryError: a lookup failed (not "nobody"); ``.reason`` says how.
        """
        resolver = self._get_resolver()
        [lookups] = await self._lookup_addresses(resolver, [self.name])
        self._finish(lookups)
        return frozenset(Endpoint(a, self.port) for lk in lookups for a in _addresses(lk.rdatas))


# -- SRV ----------------------------------------------------------------------------


class DNSSRV(_DNSBase):
    """Peers are the SRV records of one DNS name: each gives a target host and a port.

    Assumes: the SRV records of a headless Service list every peer. Kubernetes
    publishes ``_<port-name>._<protocol>.<service>.<namespace>.svc.<cluster-domain>``
    for each named port, with one target per pod
    (``<pod-ip-with-dashes>.<service>...``, or ``<hostname>.<subdomain>...`` for a
    StatefulSet). Ports come from the records, so peers may listen on different ports.
    No Kubernetes API permissions are needed. This node itself is in the answer too;
    peerlink recognises and skips it.

    Setup (Kubernetes): the headless Service shown for ``DNS``
    (``manifests/base/service.yaml``); its port must be *named*::

        ports:
          - name: peerlink        # -> _peerlink._tcp.peerlink.default.svc.cluster.local
            protocol: TCP
            port: 4370

    and ``PEERLINK_DISCOVERY=dnssrv://_peerlink._tcp.peerlink`` in a pod of that
    namespace.

    Each target's addresses come from the answer's additional section when it carries
    address records for that target (CoreDNS and dnsmasq send them), and are resolved
    with separate A/AAAA lookups otherwise. Priority and weight are ignored: in a full
    mesh every target is a peer. A target of ``.`` ("no service") is skipped. The
    target name is kept as the endpoint's ``name`` hint.

    Options:

    ===============  ==========  ===================================================
    name             (required)  the SRV name to resolve
    family           ``"any"``   which target addresses to use: ``"any"``, ``"ipv4"``,
                                 ``"ipv6"``
    interval         ``5.0``     seconds between polls (shorter when a TTL is shorter,
                                 never below ``MIN_TTL_INTERVAL`` = 1 s because of a TTL)
    resolver         system      a ``dns.asyncresolver.Resolver`` to use instead
    nameservers      system      explicit servers (``"10.96.0.10"``, ``"127.0.0.1:15353"``)
    timeout          resolver's  seconds one lookup may take, retries included
    ===============  ==========  ===================================================

    URL form: ``dnssrv://_peerlink._tcp.NAME?family=...&interval=...&nameserver=...``

    Why poll: as for ``DNS``, nothing tells a stub resolver that records changed.

    Empty and failure: NXDOMAIN or no SRV records means "nobody" (an empty snapshot); a
    target whose own lookup says NXDOMAIN or no records contributes nobody. SERVFAIL,
    REFUSED, timeouts and network errors - for the SRV query or for *any* target - raise
    ``DiscoveryError`` and the last good snapshot stands: a partial answer is a guess.
    """

    scheme = "dnssrv"

    def __init__(
        self,
        name: str,
        *,
        family: Family = "any",
        interval: float = 5.0,
        resolver: dns.asyncresolver.Resolver | None = None,
        nameservers: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.name = _check_name(name, "SRV name")
        super().__init__(
            family=family, interval=interval, resolver=resolver,
            nameservers=nameservers, timeout=timeout,
        )

    @classmethod
    def from_url(cls, url: str) -> DNSSRV:
        opts = UrlOptions(url, cls.scheme)
        name = opts.netloc
        if not name:
            raise opts.error("expected dnssrv://NAME, e.g. dnssrv://_peerlink._tcp.chat-headless")
        if ":" in name:
            raise opts.error("SRV records give the ports; remove ':PORT' from the name")
        if opts.path not in ("", "/"):
            raise opts.error(f"unexpected path {opts.path!r}; expected dnssrv://NAME?options")
        family = opts.choice("family", "any", FAMILIES)
        interval = opts.float("interval", 5.0)
        nameservers = _url_nameservers(opts)
        timeout = opts.float("timeout", 0.0) or None
        opts.finish()
        return cls(
            name, family=cast(Family, family),  # choice() checked it
            interval=interval, nameservers=nameservers, timeout=timeout,
        )

    def describe(self) -> str:
        return f"dnssrv://{self.name}{self._query_options()}"

    def __repr__(self) -> str:
        return f"<DNSSRV {self.describe()}>"

    def _from_additional(
        self, response: dns.message.Message | None, target: dns.name.Name
    ) -> tuple[list[str], int] | None:
        """Addresses of ``target`` in the additional section (per family) and their
        minimum TTL, or None if the section has none for it."""
        if response is None:
            return None
        wanted = _RDTYPES[self.family]
        addrs: list[str] = []
        ttl: int | None = None
        for rrset in response.additional:
            if rrset.name == target and rrset.rdclass == dns.rdataclass.IN and rrset.rdtype in wanted:
                addrs.extend(_addresses(rrset))
                ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
        if ttl is None:
            return None
        return addrs, ttl

    async def resolve(self) -> Snapshot:
        """Look up the SRV records, then the targets not in the additional section.

        Cancel-safe (pending queries are cancelled); not meant to run concurrently
        with itself.

        Raises:
            DiscoveryError: a lookup failed (not "nobody"); ``.reason`` says how.
        """
        resolver = self._get_resolver()
        srv = await self._query(resolver, self.name, dns.rdatatype.SRV)
        self._raise_failures([srv])
        lookups = [srv]
        endpoints: set[Endpoint] = set()
        # target -> ports (several records may share a target)
        ports: dict[dns.name.Name, set[int]] = {}
        for rd in srv.rdatas:
            if not isinstance(rd, dns.rdtypes.IN.SRV.SRV) or rd.target == dns.name.root:
                continue
            ports.setdefault(rd.target, set()).add(int(rd.port))
        to_resolve: list[dns.name.Name] = []
        extra_ttl: list[int] = []
        for target, target_ports in ports.items():
            found = self._from_additional(srv.response, target)
            if found is None:
                to_resolve.append(target)
                continue
            addrs, ttl = found
            extra_ttl.append(ttl)
            hint = target.to_text(omit_final_dot=True)
            endpoints.update(Endpoint(a, p, hint) for a in addrs for p in target_ports)
        results = await self._lookup_addresses(resolver, to_resolve) if to_resolve else []
        for target, target_lookups in zip(to_resolve, results, strict=True):
            lookups.extend(target_lookups)
            hint = target.to_text(omit_final_dot=True)
            addrs = [a for lk in target_lookups for a in _addresses(lk.rdatas)]
            endpoints.update(Endpoint(a, p, hint) for a in addrs for p in ports[target])
        self._finish(lookups)
        if extra_ttl:
            ttl = min(extra_ttl)
            self._ttl = ttl if self._ttl is None else min(self._ttl, ttl)
        return frozenset(endpoints)
