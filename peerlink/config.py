"""Config: every option of a Node, its unit, default and reason; presets; from_env().
Imports errors and discovery (for URL parsing in from_env)."""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .discovery.base import Strategy, parse_hostport
from .errors import ConfigError
from .protocol import DEFAULT_MAX_MESSAGE_ITEMS, MAX_IDENTITY_BYTES, MAX_NAME_CHARS

__all__ = ["Config", "default_name", "env_var", "read_cookie_file"]

DEFAULT_PORT = 4370
# what is left of an identity for metadata once cluster, name, incarnation and host take
# their largest size (255 characters of up to 4 bytes each)
MAX_METADATA_BYTES = MAX_IDENTITY_BYTES - 4 * 4 * MAX_NAME_CHARS - 64


def default_name() -> str:
    """``POD_NAME`` (Kubernetes downward API), else the host name."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def read_cookie_file(path: str, *, variable: str = "cookie file") -> str:
    """Read a cookie the way a Kubernetes Secret volume presents it: the file's bytes,
    less one trailing newline (``echo secret > file`` must work too)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{variable}: {path!r} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ConfigError(f"{variable}: {path!r} is empty; expected the cluster's shared secret")
    return text


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything a Node needs. Durations are seconds (float), sizes are bytes.
    Validated on construction: a bad value raises ``ConfigError`` naming the field.

    Tests and the demo start from ``Config.local()`` (fast timings for loopback).
    """

    cluster: str
    """Links form only between nodes with the same cluster name."""
    cookie: str | bytes | Sequence[str | bytes] = field(repr=False)
    """The shared secret. A sequence accepts all of them and proves with the first:
    rotate by adding the new secret second everywhere, then first, then dropping the old."""
    name: str = field(default_factory=default_name)
    """Unique in the cluster; default POD_NAME, else the host name."""
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    """host:port to accept links on; port 0 picks a free port."""
    advertise: str | None = None
    """host:port peers should dial; default POD_IP (or the listen host) and the listen port."""
    discovery: Sequence[Strategy] = ()
    """Where peers may be; several strategies are merged (union)."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Small msgpack-able dict shown to peers (version, zone...)."""
    tls_server: ssl.SSLContext | None = None
    """TLS for accepted links (set both for mutual TLS)."""
    tls_client: ssl.SSLContext | None = None
    """TLS for dialled links."""
    tick: float = 1.0
    """Heartbeat period: idle links ping, and silence is checked, at wall-clock multiples
    of it (so all nodes of a cluster do it at the same instants)."""
    timeout: float | None = None
    """A peer that went silent is reported (leave "timeout") between this and this +
    tick later; None means 4 x tick."""
    handshake_timeout: float = 5.0
    """An unfinished handshake is dropped after this long."""
    connect_timeout: float = 5.0
    """A TCP connect that takes longer fails (the candidate is retried with backoff)."""
    reconnect_initial: float = 0.1
    """First re-dial delay; exponential growth with full jitter."""
    reconnect_max: float = 30.0
    """Cap on the re-dial delay."""
    max_frame: int = 8 * 2**20
    """Largest frame accepted or sent; a larger one closes the link (protocol_error)."""
    write_buffer_high: int = 4 * 2**20
    """Senders wait while a link's write buffer is above this (backpressure)."""
    event_queue: int = 1024
    """Per-subscriber queue; a subscriber that falls this far behind gets EventsLost."""
    goodbye_timeout: float = 2.0
    """How long close() waits for links to flush their goodbye."""
    max_unauthenticated: int = 64
    """Inbound connections that have not yet proven the cookie, at most, plus one per
    discovered candidate (all of those may dial at once); at the cap the oldest is
    dropped (a real peer's handshake takes milliseconds, a flood's never ends)."""
    max_unauthenticated_per_host: int = 8
    """The same, per source IP address (plus one per candidate at that address)."""
    listen_backlog: int = 128
    """listen(2) backlog: connections the kernel queues before we accept them."""
    inbox_bytes: int = 256 * 1024
    """Wire bytes of received messages waiting for (or held by) a link's handlers; above
    it the node stops reading that link, so TCP backpressure reaches the sender."""
    max_message_items: int = DEFAULT_MAX_MESSAGE_ITEMS
    """A message decodes to at most this many msgpack values (elements of its lists and
    maps); bigger is MessageTooLarge at the sender and a protocol error at a receiver.
    Bulk data travels as bytes. Set the same value on every node."""
    admin_listen: str | None = None
    """host:port of the admin HTTP listener (/healthz, /readyz, /metrics, /status and a
    live page); None (the default) starts nothing and imports nothing. Anyone who can
    reach it can read the membership: bind it to the pod network only."""
    ready_min_peers: int = 0
    """/readyz: at least this many peers must be linked."""
    ready_fraction: float = 0.0
    """/readyz: at least this fraction (0..1) of the discovered candidates other than
    this node must be linked (1.0: every one that discovery reports)."""

    def __post_init__(self) -> None:
        if not isinstance(self.cluster, str) or not self.cluster:
            raise ConfigError("cluster: expected a non-empty string")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name: expected a non-empty string")
        self.cookies()  # validates
        parse_hostport(self.listen, what="listen")
        if self.advertise is not None:
            host, _ = parse_hostport(self.advertise, default_port=0, what="advertise")
            if host in ("0.0.0.0", "::"):
                raise ConfigError(f"advertise {self.advertise!r}: a wildcard address cannot be dialled")
        for fname in ("tick", "handshake_timeout", "connect_timeout", "reconnect_initial",
                      "reconnect_max", "goodbye_timeout"):
            v = getattr(self, fname)
            if not isinstance(v, int | float) or not v > 0:
                raise ConfigError(f"{fname}: expected a number of seconds > 0, got {v!r}")
        if self.timeout is not None and (not isinstance(self.timeout, int | float) or self.timeout <= self.tick):
            raise ConfigError(f"timeout: expected seconds > tick ({self.tick:g}), got {self.timeout!r}")
        if self.reconnect_max < self.reconnect_initial:
            raise ConfigError("reconnect_max: must be >= reconnect_initial")
        for fname, low in (("max_frame", 1024), ("write_buffer_high", 1024), ("event_queue", 1),
                           ("max_unauthenticated", 1), ("max_unauthenticated_per_host", 1),
                           ("listen_backlog", 1), ("inbox_bytes", 1024), ("max_message_items", 1024)):
            v = getattr(self, fname)
            if type(v) is not int or v < low:
                raise ConfigError(f"{fname}: expected an integer >= {low}, got {v!r}")
        for fname in ("cluster", "name"):
            if len(getattr(self, fname)) > MAX_NAME_CHARS:
                raise ConfigError(f"{fname}: at most {MAX_NAME_CHARS} characters")
        if not isinstance(self.metadata, Mapping):
            raise ConfigError("metadata: expected a mapping")
        try:
            size = len(msgpack.packb(dict(self.metadata), use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"metadata: msgpack cannot carry it: {exc}") from None
        if size > MAX_METADATA_BYTES:
            raise ConfigError(f"metadata: {size} bytes packed; at most {MAX_METADATA_BYTES} "
                              "(it travels in every handshake)")
        for s in self.discovery:
            if not isinstance(s, Strategy):
                raise ConfigError(f"discovery: {s!r} is not a peerlink strategy")
        object.__setattr__(self, "discovery", tuple(self.discovery))
        if self.admin_listen is not None:
            parse_hostport(self.admin_listen, what="admin_listen")
        if not isinstance(self.ready_min_peers, int) or self.ready_min_peers < 0:
            raise ConfigError(f"ready_min_peers: expected an integer >= 0, got {self.ready_min_peers!r}")
        if not isinstance(self.ready_fraction, int | float) or not 0.0 <= self.ready_fraction <= 1.0:
            raise ConfigError(f"ready_fraction: expected a number from 0 to 1, got {self.ready_fraction!r}")

    def cookies(self) -> tuple[bytes, ...]:
        """The accepted secrets as bytes; the first one proves."""
        raw = self.cookie
        items = [raw] if isinstance(raw, str | bytes) else list(raw)
        out = []
        for c in items:
            b = c.encode() if isinstance(c, str) else c
            if not isinstance(b, bytes) or not b:
                raise ConfigError("cookie: expected a non-empty string (or a list of them)")
            out.append(b)
        if not out:
            raise ConfigError("cookie: expected a non-empty string (or a list of them)")
        return tuple(out)

    @property
    def effective_timeout(self) -> float:
        return self.timeout if self.timeout is not None else 4 * self.tick

    @property
    def failure_detection(self) -> tuple[float, float]:
        """(earliest, latest) seconds after a peer falls silent that it is reported as
        left ("timeout"): heartbeats are checked every ``tick``, silence longer than
        ``timeout`` is fatal."""
        return self.effective_timeout, self.effective_timeout + self.tick

    def describe_failure_detection(self) -> str:
        """The failure-detection window in words, as the node logs it at start."""
        low, high = self.failure_detection
        return (f"a silent peer is reported within {low:g}-{high:g} s "
                f"(tick {self.tick:g} s, timeout {self.effective_timeout:g} s)")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @classmethod
    def local(cls, **options: Any) -> Config:
        """A preset for one machine (demo, tests): tick 0.1 s, timeout 0.5 s, handshake 1 s,
        re-dials 0.05..1 s. Loopback has microsecond RTTs; production values only slow
        tests down."""
        defaults: dict[str, Any] = dict(
            listen="127.0.0.1:0", tick=0.1, timeout=0.5, handshake_timeout=1.0,
            connect_timeout=1.0, reconnect_initial=0.05, reconnect_max=1.0, goodbye_timeout=1.0,
        )
        defaults.update(options)
        return cls(**defaults)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a Config from ``PEERLINK_*`` variables and the Kubernetes downward API.

        =============================  ==================================================
        PEERLINK_CLUSTER               cluster name (required)
        PEERLINK_COOKIE                the secret, or
        PEERLINK_COOKIE_FILE           file(s) holding it (comma-separated for rotation;
                                       one trailing newline is stripped)
        PEERLINK_NAME                  node name (default POD_NAME, else host name)
        PEERLINK_LISTEN                host:port (default 0.0.0.0:4370)
        PEERLINK_ADVERTISE             host:port (default POD_IP and the listen port)
        PEERLINK_DISCOVERY             discovery URLs separated by spaces
        PEERLINK_METADATA              a JSON object
        PEERLINK_TICK, PEERLINK_TIMEOUT, PEERLINK_HANDSHAKE_TIMEOUT,
        PEERLINK_CONNECT_TIMEOUT, PEERLINK_RECONNECT_MAX       seconds
        PEERLINK_MAX_FRAME, PEERLINK_WRITE_BUFFER_HIGH,
        PEERLINK_INBOX_BYTES                                   bytes
        PEERLINK_MAX_UNAUTHENTICATED[_PER_HOST],
        PEERLINK_LISTEN_BACKLOG, PEERLINK_MAX_MESSAGE_ITEMS    counts
        PEERLINK_ADMIN_LISTEN          host:port of the admin HTTP listener (default off)
        PEERLINK_READY_MIN_PEERS       /readyz: linked peers needed (default 0)
        PEERLINK_READY_FRACTION        /readyz: fraction of discovered candidates linked
        =============================  ==================================================

        Keyword ``overrides`` win over the environment. A bad value raises ConfigError
        naming the variable and what was expected.
        """
        env = os.environ if environ is None else environ
        opts: dict[str, Any] = {}

        def get(var: str) -> str | None:
            v = env.get(var)
            return v if v not in (None, "") else None

        def number(var: str, field_name: str, kind: type = float) -> None:
            raw = get(var)
            if raw is None:
                return
            try:
                opts[field_name] = kind(raw)
            except ValueError:
                what = "an integer number of bytes" if kind is int else "a number of seconds"
                raise ConfigError(f"{var}={raw!r}: expected {what}") from None

        if (v := get("PEERLINK_CLUSTER")) is not None:
            opts["cluster"] = v
        if (v := get("PEERLINK_COOKIE")) is not None:
            opts["cookie"] = v
        elif (v := get("PEERLINK_COOKIE_FILE")) is not None:
            cookies = [read_cookie_file(p.strip(), variable="PEERLINK_COOKIE_FILE")
                       for p in v.split(",") if p.strip()]
            opts["cookie"] = cookies[0] if len(cookies) == 1 else cookies
        if (v := get("PEERLINK_NAME") or get("POD_NAME")) is not None:
            opts["name"] = v
        if (v := get("PEERLINK_LISTEN")) is not None:
            _wrap("PEERLINK_LISTEN", lambda: parse_hostport(v, default_port=DEFAULT_PORT))
            opts["listen"] = v if ":" in v else f"{v}:{DEFAULT_PORT}"
        if (v := get("PEERLINK_ADVERTISE")) is not None:
            _wrap("PEERLINK_ADVERTISE", lambda: parse_hostport(v, default_port=0))
            opts["advertise"] = v
        elif (v := get("POD_IP")) is not None:
            opts["advertise"] = f"[{v}]" if ":" in v else v
        if (v := get("PEERLINK_DISCOVERY")) is not None:
            from .discovery import from_urls

            opts["discovery"] = _wrap("PEERLINK_DISCOVERY", lambda: from_urls(v))
        if (v := get("PEERLINK_METADATA")) is not None:
            import json  # only here: `import peerlink` does not need it

            try:
                md = json.loads(v)
            except ValueError as exc:
                raise ConfigError(f"PEERLINK_METADATA: expected a JSON object: {exc}") from None
            if not isinstance(md, dict):
                raise ConfigError("PEERLINK_METADATA: expected a JSON object")
            opts["metadata"] = md
        number("PEERLINK_TICK", "tick")
        number("PEERLINK_TIMEOUT", "timeout")
        number("PEERLINK_HANDSHAKE_TIMEOUT", "handshake_timeout")
        number("PEERLINK_CONNECT_TIMEOUT", "connect_timeout")
        number("PEERLINK_RECONNECT_MAX", "reconnect_max")
        number("PEERLINK_MAX_FRAME", "max_frame", int)
        number("PEERLINK_WRITE_BUFFER_HIGH", "write_buffer_high", int)
        for budget in ("max_unauthenticated", "max_unauthenticated_per_host", "listen_backlog",
                       "inbox_bytes", "max_message_items"):
            number(env_var(budget), budget, int)
        if (v := get("PEERLINK_ADMIN_LISTEN")) is not None:
            _wrap("PEERLINK_ADMIN_LISTEN", lambda: parse_hostport(v))
            opts["admin_listen"] = v
        for var, field_name, kind, what in (
            ("PEERLINK_READY_MIN_PEERS", "ready_min_peers", int, "an integer >= 0"),
            ("PEERLINK_READY_FRACTION", "ready_fraction", float, "a number from 0 to 1"),
        ):
            if (v := get(var)) is not None:
                try:
                    opts[field_name] = kind(v)
                except ValueError:
                    raise ConfigError(f"{var}={v!r}: expected {what}") from None
        opts.update(overrides)
        if "cluster" not in opts:
            raise ConfigError("PEERLINK_CLUSTER: not set; expected the cluster name")
        if "cookie" not in opts:
            raise ConfigError("PEERLINK_COOKIE or PEERLINK_COOKIE_FILE: neither is set; expected the shared secret")
        try:
            return cls(**opts)
        except ConfigError as exc:
            # the message starts with the field name: prefix the variable it came from
            field_name = str(exc).split(":", 1)[0].split(" ", 1)[0]
            if field_name in {f.name for f in dataclasses.fields(cls)}:
                raise ConfigError(f"{env_var(field_name)}: {exc}") from None
            raise


def env_var(field_name: str) -> str:
    """The environment variable of a Config field (or CLI option): PEERLINK_<NAME>."""
    return "PEERLINK_" + field_name.upper()


def _wrap(var: str, fn: Any) -> Any:
    try:
        return fn()
    except ConfigError as exc:
        raise ConfigError(f"{var}: {exc}") from None
