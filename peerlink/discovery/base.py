"""The strategy interface: where peers may be. Imports only errors, _log, _backoff.

A strategy *describes* (yields whole snapshots of candidate endpoints); only the
membership manager *acts* (diffs, dials, emits events). See ``Strategy`` for the
contract every strategy - built in or third party - must keep.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import contextlib
import logging
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, TypeAlias, cast

from .._backoff import Backoff
from ..errors import ConfigError, DiscoveryError

__all__ = [
    "Endpoint",
    "LocalNode",
    "PollingStrategy",
    "Snapshot",
    "Strategy",
    "StrategyRunner",
    "StrategyStatus",
    "UrlOptions",
    "format_hostport",
    "parse_hostport",
]

log = logging.getLogger("peerlink.discovery")


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """One place a peer may listen.

    ``host`` is an IP literal or a DNS name (no brackets), ``port`` the TCP port.
    ``name`` is a hint only (a pod name, an mDNS instance): identity is proven in the
    handshake, never taken from discovery.
    """

    host: str
    port: int
    name: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)


Snapshot: TypeAlias = frozenset[Endpoint]


@dataclass(frozen=True, slots=True)
class LocalNode:
    """What a strategy may know about the node it serves (mDNS advertises it; others
    ignore it). Never contains the cookie."""

    cluster: str
    name: str
    incarnation: str
    host: str
    port: int
    protocol_version: int
    metadata: Mapping[str, object] = field(default_factory=dict)


class Strategy(abc.ABC):
    """Tells peerlink where peers may be.

    Contract:

    * Each value ``watch()`` yields is the *complete* current candidate set from this
      source (level-triggered, never a delta). ``frozenset()`` means "authoritatively
      nobody" (NXDOMAIN, an empty NOERROR answer, an EndpointSlice that lists nobody).
    * A failed lookup *raises* (``DiscoveryError`` or anything else) and never yields a
      guess. The runner logs it (rate-limited), keeps the last good snapshot, backs off
      with jitter and calls ``watch()`` again. A generator that simply returns is
      restarted the same way.
    * ``watch()`` is closed (``aclose()``) at shutdown; release resources in
      ``finally``. Never block the event loop; run blocking libraries in
      ``asyncio.to_thread``.
    * ``watch()`` is driven by one task; a strategy need not be task-safe, and one
      instance is used by one node.
    * The snapshot may include this node's own address; the membership manager
      recognises and skips it.

    A strategy class also provides ``from_url()`` for its URL scheme so that
    ``PEERLINK_DISCOVERY`` and ``--discovery`` can build it.
    """

    #: URL scheme, also the tag in logs and ``node.status()``.
    scheme: ClassVar[str] = "?"

    @abc.abstractmethod
    def watch(self, local: LocalNode) -> AsyncIterator[Snapshot]:
        """Yield whole snapshots until closed. Implement as an ``async def`` generator."""

    @classmethod
    def from_url(cls, url: str) -> Strategy:
        """Build the strategy from its URL form; ``ConfigError`` if malformed."""
        raise ConfigError(f"{cls.__name__} has no URL form")

    def describe(self) -> str:
        """A short human description for logs, status and doctor."""
        return self.scheme

    async def prepare(self) -> None:
        """Slow one-time set-up, awaited before the node reports ready (and retried
        like ``watch()`` if it raises). Import a large client library here - in a
        thread, ``await asyncio.to_thread(importlib.import_module, "x")``, so the loop
        keeps serving meanwhile - instead of inside ``watch()``, where the import would
        stall every link of a node that already said it was ready. Default: nothing."""
        return None

    def suspect(self, endpoint: Endpoint) -> None:
        """Called when a link to ``endpoint`` (a candidate this strategy reported) was
        lost or timed out. A strategy whose source can hold stale entries (mDNS keeps
        records of crashed hosts for a long time) may re-check it now. Default: nothing."""
        return None


class PollingStrategy(Strategy):
    """For sources that can only be asked: implement ``resolve()``; override
    ``next_interval()`` to poll faster (DNS honours a short TTL)."""

    interval: float = 5.0

    @abc.abstractmethod
    async def resolve(self) -> Snapshot:
        """Return the current snapshot, or raise on failure (never guess)."""

    def next_interval(self, snapshot: Snapshot) -> float:
        return self.interval

    async def watch(self, local: LocalNode) -> AsyncIterator[Snapshot]:
        while True:
            snapshot = await self.resolve()
            yield snapshot
            await asyncio.sleep(self.next_interval(snapshot))


@dataclass(slots=True)
class StrategyStatus:
    """What ``node.status()`` reports per strategy."""

    strategy: str
    scheme: str = "?"  # the strategy's URL scheme (a fixed name, unlike ``strategy``)
    snapshot: Snapshot | None = None
    last_success: float | None = None  # wall clock (time.time())
    last_error: str | None = None
    last_error_at: float | None = None
    failures: int = 0
    next_retry_in: float | None = None
    last_lookup: str | None = None  # what the strategy last asked and heard, if it says
    snapshots: int = 0  # answers received (every snapshot the strategy yielded)

    def as_dict(self) -> dict[str, object]:
        return {
            "strategy": self.strategy,
            "scheme": self.scheme,
            "snapshot": sorted(str(e) for e in self.snapshot) if self.snapshot is not None else None,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "failures": self.failures,
            "next_retry_in": self.next_retry_in,
            "last_lookup": self.last_lookup,
            "snapshots": self.snapshots,
        }


class StrategyRunner:
    """Drives one strategy: the only place with the retry loop, so every strategy gets
    the same semantics ("failure keeps the last good snapshot; empty is authoritative")."""

    def __init__(
        self,
        strategy: Strategy,
        local: LocalNode,
        on_snapshot: Callable[[StrategyRunner, Snapshot], None],
        *,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        self.strategy = strategy
        self.local = local
        self.status = StrategyStatus(strategy.describe(), strategy.scheme)
        self._on_snapshot = on_snapshot
        self._backoff = Backoff(retry_initial, retry_max)
        self._logged_error: str | None = None
        self._prepared = False
        #: set once the strategy is prepared (or its preparation failed) and its
        #: ``watch()`` was entered: the node reports ready only after this
        self.started = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                if not self._prepared:
                    await self.strategy.prepare()
                    self._prepared = True
                self.started.set()
                watch = cast(AsyncGenerator[Snapshot, None], self.strategy.watch(self.local))
                async with contextlib.aclosing(watch) as snapshots:
                    async for snapshot in snapshots:
                        self._succeeded(frozenset(snapshot))
                self._failed("watch() ended unexpectedly")
            except asyncio.CancelledError:
                raise
            except DiscoveryError as exc:
                self._failed(exc.reason)  # already says what and where; the tag is ours
            except Exception as exc:
                self._failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            self.started.set()  # a failing strategy is reported, not waited for
            delay = self._backoff.next()
            self.status.next_retry_in = delay
            await asyncio.sleep(delay)
            self.status.next_retry_in = None

    def _succeeded(self, snapshot: Snapshot) -> None:
        st = self.status
        st.last_lookup = getattr(self.strategy, "last_lookup", None)
        if st.snapshot != snapshot:
            log.info("%s: %d candidate(s): %s", st.strategy, len(snapshot),
                     ", ".join(sorted(str(e) for e in snapshot)) or "none")
        if self._logged_error is not None:
            log.warning("%s: recovered", st.strategy)
            self._logged_error = None
        st.snapshot = snapshot
        st.snapshots += 1
        st.last_success = time.time()
        self._backoff.reset()
        self._on_snapshot(self, snapshot)

    def _failed(self, error: str) -> None:
        st = self.status
        st.last_lookup = getattr(self.strategy, "last_lookup", None)
        st.last_error = error
        st.last_error_at = time.time()
        st.failures += 1
        kept = "no snapshot yet" if st.snapshot is None else f"keeping last good snapshot of {len(st.snapshot)}"
        # log a new kind of failure once at WARNING, its repeats at DEBUG
        level = logging.WARNING if error != self._logged_error else logging.DEBUG
        log.log(level, "%s: lookup failed (%s): %s", st.strategy, kept, error)
        self._logged_error = error


# -- helpers for strategy URLs ------------------------------------------------------


def parse_hostport(text: str, *, default_port: int | None = None, what: str = "address") -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"`` or (with a default port) ``"host"`` -> (host, port)."""
    text = text.strip()
    host: str
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"{what} {text!r}: missing ']' after an IPv6 address")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"{what} {text!r}: expected ':port' after ']'")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise ConfigError(f"{what} {text!r}: write an IPv6 address as [addr]:port")
    else:
        host, port_text = text, None
    if not host:
        raise ConfigError(f"{what} {text!r}: expected host:port, the host is empty")
    if port_text is None:
        if default_port is None:
            raise ConfigError(f"{what} {text!r}: expected host:port, the port is missing")
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{what} {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} {text!r}: port {port} is out of range 0..65535")
    return host, port


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class UrlOptions:
    """Typed access to a strategy URL's query string; unknown keys are a ConfigError.

    Usage::

        opts = UrlOptions(url, "dns")
        interval = opts.float("interval", 5.0)
        opts.finish()      # raises if the URL had keys nobody read
    """

    def __init__(self, url: str, scheme: str) -> None:
        self.url = url
        self.parts = urllib.parse.urlsplit(url)
        if self.parts.scheme != scheme:
            raise ConfigError(f"discovery URL {url!r}: expected scheme {scheme}://")
        try:
            pairs = urllib.parse.parse_qsl(self.parts.query, keep_blank_values=True, strict_parsing=False)
        except ValueError as exc:
            raise ConfigError(f"discovery URL {url!r}: bad query string: {exc}") from None
        self._values: dict[str, list[str]] = {}
        for k, v in pairs:
            self._values.setdefault(k, []).append(v)
        self._read: set[str] = set()

    @property
    def netloc(self) -> str:
        return urllib.parse.unquote(self.parts.netloc)

    @property
    def path(self) -> str:
        return urllib.parse.unquote(self.parts.path)

    def error(self, message: builtins.str) -> ConfigError:
        return ConfigError(f"discovery URL {self.url!r}: {message}")

    def list(self, key: builtins.str) -> builtins.list[builtins.str]:
        self._read.add(key)
        out: builtins.list[builtins.str] = []
        for v in self._values.get(key, []):
            out.extend(x for x in v.split(",") if x)
        return out

    def str(self, key: builtins.str, default: builtins.str | None = None) -> builtins.str | None:
        self._read.add(key)
        vals = self._values.get(key)
        return vals[-1] if vals else default

    def choice(self, key: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...]) -> builtins.str:
        value = self.str(key, default) or default
        if value not in choices:
            raise self.error(f"{key}={value!r}: expected one of {', '.join(choices)}")
        return value

    def float(self, key: builtins.str, default: builtins.float, *, minimum: builtins.float = 0.0) -> builtins.float:
        raw = self.str(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self.error(f"{key}={raw!r}: expected a number of seconds") from None
        if not value > minimum:
            raise self.error(f"{key}={raw!r}: expected a number > {minimum:g}")
        return value

    def int(self, key: builtins.str, default: builtins.int) -> builtins.int:
        raw = self.str(key)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise self.error(f"{key}={raw!r}: expected an integer") from None

    def bool(self, key: builtins.str, default: builtins.bool) -> builtins.bool:
        raw = self.str(key)
        if raw is None:
            return default
        low = raw.lower()
        if low in ("1", "true", "yes", "on", ""):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise self.error(f"{key}={raw!r}: expected true or false")

    def finish(self) -> None:
        unknown = sorted(set(self._values) - self._read)
        if unknown:
            raise self.error(f"unknown option(s): {', '.join(unknown)}")
