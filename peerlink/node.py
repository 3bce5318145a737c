"""Node: the public face. Lifecycle (``async with``), events, peers, messaging, status.
Wires config, discovery runners, membership, links and messaging together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar

from . import protocol as p
from ._log import limit_asyncio_accept_errors
from .config import Config
from .discovery.base import LocalNode, StrategyRunner, format_hostport, parse_hostport
from .errors import ConfigError, NodeClosed
from .events import Event, EventBus, LeaveReason, Peer, PeerJoined, Subscription
from .link import Link, LinkState
from .membership import Membership
from .messaging import HandlerFunc, Messenger
from .stats import LoopLagMonitor, Stats

__all__ = ["Node"]

log = logging.getLogger("peerlink.node")

JoinCallback = Callable[[Peer], Awaitable[None] | None]
LeaveCallback = Callable[[Peer, LeaveReason], Awaitable[None] | None]
F = TypeVar("F", bound=Callable[..., Any])


def _advertise_host(listen_host: str) -> str:
    """What peers should dial when only a listen address was given: the listen host
    itself, or for a wildcard the first global address of an interface that is up
    (IPv4 first), else loopback. Set ``advertise`` (or POD_IP) to be explicit."""
    if listen_host not in WILDCARDS:
        return listen_host
    try:
        import ifaddr  # a zeroconf dependency; only needed here

        v4: list[str] = []
        v6: list[str] = []
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str):
                    if not ip.ip.startswith("127."):
                        v4.append(ip.ip)
                elif not ip.ip[0].startswith(("fe80", "::1")) and ip.ip[0] != "::1":
                    v6.append(ip.ip[0])
        if listen_host != "0.0.0.0" and v6 and not v4:
            return v6[0]
        if v4:
            return v4[0]
        if v6 and listen_host != "0.0.0.0":
            return v6[0]
    except Exception:  # pragma: no cover - best effort
        pass
    return "127.0.0.1"


# listen hosts that mean "every address"; "::" and "" bind IPv4 and IPv6 both
WILDCARDS = ("0.0.0.0", "::", "", "*")


class Node:
    """A member of a peerlink cluster.

    Usage::

        node = peerlink.Node(cluster="chat", cookie="s3cret", listen="0.0.0.0:4370",
                             discovery=[peerlink.Static(["10.0.0.5:4370"])])

        @node.on_join
        async def joined(peer): ...

        async with node:                      # listen, discover, link; exit: goodbye
            await node.wait_for_peers(2, timeout=10)
            await node.broadcast("presence", {"user": "ana"})

    ``Node(config, **options)`` takes a ``Config`` and/or its fields as keywords.
    """

    def __init__(self, config: Config | None = None, /, **options: Any) -> None:
        if config is None:
            config = Config(**options)
        elif options:
            config = dataclasses.replace(config, **options)
        self.config = config
        self.incarnation = secrets.token_hex(8)
        self._bus = EventBus()
        self._membership: Membership | None = None
        self._active: dict[str, Link] = {}
        self._messenger: Messenger | None = None
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._runners: list[StrategyRunner] = []
        self._join_callbacks: list[JoinCallback] = []
        self._leave_callbacks: list[LeaveCallback] = []
        self._handlers: list[tuple[str, HandlerFunc, bool]] = []
        self._started = False
        self._closed = False
        self.address: tuple[str, int] | None = None  # advertised (host, port) once started
        self.started_at: float | None = None
        self.ready_at: float | None = None  # when start() finished: strategies prepared and running
        #: what the node counts about itself (joins, leaves, refusals, messages, calls,
        #: loop lag); read by the admin layer's /metrics
        self.stats = Stats()
        self._admin: Any = None  # peerlink.admin's listener, when admin_listen is set

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Node:
        """A node configured from ``PEERLINK_*`` variables and the Kubernetes downward API
        (see ``Config.from_env``); raises ``ConfigError`` naming a bad variable."""
        return cls(Config.from_env(environ, **overrides))

    # -- properties ----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def cluster(self) -> str:
        return self.config.cluster

    @property
    def peers(self) -> Mapping[str, Peer]:
        """The peers linked right now, by name (a read-only live view)."""
        if self._membership is None:
            return MappingProxyType({})
        return MappingProxyType(self._membership.peers)

    @property
    def address_str(self) -> str:
        if self.address is None:
            raise NodeClosed("the node is not started")
        return format_hostport(*self.address)

    # -- subscriptions -------------------------------------------------------------
    def on_join(self, fn: JoinCallback) -> JoinCallback:
        """Decorator: ``fn(peer)`` (sync or async) after each PeerJoined. Callbacks run one
        at a time in event order; an exception is logged and does not stop membership."""
        self._join_callbacks.append(fn)
        return fn

    def on_leave(self, fn: LeaveCallback) -> LeaveCallback:
        """Decorator: ``fn(peer, reason)`` (sync or async) after each PeerLeft."""
        self._leave_callbacks.append(fn)
        return fn

    def events(self, *, current: bool = True, maxsize: int | None = None) -> Subscription:
        """A stream of PeerJoined / PeerLeft, registered now (nothing is missed between
        this call and the first ``__anext__``). With ``current`` it starts with a
        PeerJoined for every peer already linked. Falling ``maxsize`` events behind
        closes it with ``EventsLost`` after the events it holds: subscribe again."""
        initial: list[Event] = []
        if current and self._membership is not None:
            initial = [PeerJoined(peer) for peer in self._membership.peers.values()]
        return self._bus.subscribe(maxsize or self.config.event_queue, initial)

    def handler(self, topic: str, *, concurrent: bool = False) -> Callable[[F], F]:
        """Decorator: ``fn(message, sender)`` (sync or async) handles ``topic``; its
        return value answers ``call``. Messages of one link are handled in arrival order;
        ``concurrent=True`` runs each message of this topic in its own task instead
        (for request/reply services whose handlers wait on I/O)."""

        def register(fn: F) -> F:
            if self._messenger is not None:
                self._messenger.add_handler(topic, fn, concurrent=concurrent)
            else:
                if any(t == topic for t, _, _ in self._handlers):
                    raise ValueError(f"a handler for topic {topic!r} is already registered")
                self._handlers.append((topic, fn, concurrent))
            return fn

        return register

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Listen, start discovery and heartbeats. Idempotent errors: NodeClosed after close()."""
        if self._closed:
            raise NodeClosed("a closed node cannot be restarted; create a new Node")
        if self._started:
            return
        cfg = self.config
        loop = asyncio.get_running_loop()
        limit_asyncio_accept_errors()  # a flood that exhausts descriptors must not flood the log
        listen_host, listen_port = parse_hostport(cfg.listen, what="listen")
        # the server is created first so port 0 resolves before we tell anyone who we are
        holder: dict[str, Membership] = {}
        try:
            # asyncio makes an "::" socket IPv6-only; None binds every family instead
            bind_host = None if listen_host in ("::", "", "*") else listen_host
            self._server = await loop.create_server(
                lambda: holder["m"].accept(), bind_host, listen_port,
                # plain TCP even with TLS: membership.accept() runs the TLS handshake
                # inside the unauthenticated budget (peerlink/tls_accept.py)
                reuse_address=True, backlog=cfg.listen_backlog,
            )
        except OSError as exc:
            raise ConfigError(f"listen {cfg.listen!r}: cannot listen: {exc.strerror or exc}") from None
        bound_port = self._server.sockets[0].getsockname()[1]
        if cfg.advertise is not None:
            adv_host, adv_port = parse_hostport(cfg.advertise, default_port=0, what="advertise")
            adv_port = adv_port or bound_port
        else:
            adv_host, adv_port = _advertise_host(listen_host), bound_port
        self.address = (adv_host, adv_port)
        identity = p.Identity(cfg.cluster, cfg.name, self.incarnation, adv_host, adv_port, dict(cfg.metadata))
        membership = Membership(cfg, identity, self._bus)
        holder["m"] = membership
        messenger = Messenger(membership.active, inbox_bytes=cfg.inbox_bytes)
        membership.stats = messenger.stats = self.stats
        membership.on_messages = messenger.dispatch
        membership.on_link_closed = messenger.link_closed
        for topic, fn, concurrent in self._handlers:
            messenger.add_handler(topic, fn, concurrent=concurrent)
        self._membership, self._messenger = membership, messenger
        self._active = membership.active
        self._started = True
        self.started_at = time.time()
        # a strategy that publishes addresses (mDNS) sees the wildcard when nothing more
        # specific was configured, so it can publish every address of its interfaces
        local_host = listen_host if cfg.advertise is None and listen_host in WILDCARDS else adv_host
        local = LocalNode(cfg.cluster, cfg.name, self.incarnation, local_host, adv_port,
                          p.PROTOCOL_VERSION_MAX, dict(cfg.metadata))
        if self._join_callbacks or self._leave_callbacks:
            sub = self._bus.subscribe(cfg.event_queue)
            self._tasks.append(loop.create_task(self._run_callbacks(sub), name="peerlink-callbacks"))
        self._tasks.append(loop.create_task(membership.run_heartbeats(), name="peerlink-heartbeats"))
        self._tasks.append(loop.create_task(LoopLagMonitor(self.stats).run(), name="peerlink-loop-lag"))
        for strategy in cfg.discovery:
            runner = StrategyRunner(strategy, local, membership.update_snapshot)
            self._runners.append(runner)
            self._tasks.append(loop.create_task(runner.run(), name=f"peerlink-discovery-{strategy.scheme}"))
        if cfg.admin_listen is not None:
            await self._start_admin(cfg.admin_listen)
        # Ready only once every strategy is prepared (its client library imported) and
        # running: work left for later would stall the loop of a node peers already dial.
        await asyncio.gather(*(runner.started.wait() for runner in self._runners))
        self.ready_at = time.time()
        log.info("%s/%s ready: listening on %s, advertising %s (incarnation %s); %s", cfg.cluster,
                 cfg.name, format_hostport(listen_host, bound_port), format_hostport(adv_host, adv_port),
                 self.incarnation, cfg.describe_failure_detection())

    async def _start_admin(self, listen: str) -> None:
        # the admin layer sits above the node and is imported only when asked for
        from .admin.http import AdminServer

        try:
            self._admin = await AdminServer.start(self, listen)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Say goodbye to every peer (they see ``leave(shutdown)``), stop discovery and
        close. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if not self._started:
            return
        if self._admin is not None:
            await self._admin.close()
        if self._server is not None:
            self._server.close()
        for t in self._tasks:
            if t.get_name() != "peerlink-callbacks":
                t.cancel()
        if self._membership is not None:
            await self._membership.close()
        if self._messenger is not None:
            await self._messenger.close()
        self._bus.close()  # ends subscriptions (callbacks drain what they hold)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _run_callbacks(self, sub: Subscription) -> None:
        while True:
            try:
                async for event in sub:
                    await self._invoke_callbacks(event)
                return
            except Exception as exc:  # EventsLost: log, resubscribe, go on
                log.error("event callbacks fell behind: %s", exc)
                if self._closed:
                    return
                sub = self._bus.subscribe(self.config.event_queue)

    async def _invoke_callbacks(self, event: Event) -> None:
        if isinstance(event, PeerJoined):
            calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
                (cb, (event.peer,)) for cb in self._join_callbacks]
        else:
            calls = [(cb, (event.peer, event.reason)) for cb in self._leave_callbacks]
        for fn, args in calls:
            r = self._call_safely(fn, *args)
            if inspect.isawaitable(r):
                try:
                    await r
                except Exception:
                    log.exception("an on_join/on_leave callback raised")

    @staticmethod
    def _call_safely(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            log.exception("an on_join/on_leave callback raised")
            return None

    def _require(self) -> tuple[Membership, Messenger]:
        if self._membership is None or self._messenger is None or self._closed:
            raise NodeClosed("the node is not running (use `async with node:` or await node.start())")
        return self._membership, self._messenger

    # -- membership ----------------------------------------------------------------
    async def wait_for_peers(self, n: int, timeout: float | None = None) -> Mapping[str, Peer]:
        """Wait until at least ``n`` peers are linked; ``TimeoutError`` after ``timeout``."""
        membership, _ = self._require()
        async with asyncio.timeout(timeout):
            while len(membership.peers) < n:
                await membership.changed.wait()
        return self.peers

    def status(self) -> dict[str, Any]:
        """A diagnosable picture: per strategy its last snapshot, last success and last
        error; per candidate endpoint its state and, when not linked, why and when it
        retries; the linked peers."""
        membership = self._membership
        cfg = self.config
        links = list(membership.links) if membership else []
        stats = self.stats
        return {
            "node": {"cluster": self.cluster, "name": self.name, "incarnation": self.incarnation,
                     "address": format_hostport(*self.address) if self.address else None,
                     "running": self._started and not self._closed,
                     "ready": self.ready_at is not None and not self._closed,
                     "started_at": self.started_at, "ready_at": self.ready_at,
                     "metadata": dict(cfg.metadata),
                     "failure_detection": {"tick": cfg.tick, "timeout": cfg.effective_timeout,
                                           "within": list(cfg.failure_detection),
                                           "text": cfg.describe_failure_detection()},
                     "readiness": {"min_peers": cfg.ready_min_peers, "fraction": cfg.ready_fraction}},
            "strategies": [r.status.as_dict() for r in self._runners],
            "candidates": membership.candidate_status() if membership else [],
            "peers": membership.peer_status() if membership else [],
            "links": {state.name.lower(): sum(1 for link in links if link.state is state)
                      for state in LinkState if state is not LinkState.CLOSED},
            "messaging": {"unknown_topic": self._messenger.unknown_topic,
                          "handler_errors": self._messenger.handler_errors} if self._messenger else {},
            "traffic": {"rx_bytes": stats.closed_rx_bytes + sum(link.rx_bytes for link in links),
                        "tx_bytes": stats.closed_tx_bytes + sum(link.tx_bytes for link in links),
                        "messages_in": stats.messages_in, "messages_out": stats.messages_out},
            "loop_lag": {"last": stats.loop_lag, "max": stats.loop_lag_max},
        }

    # -- messaging -----------------------------------------------------------------
    async def send(self, peer: Peer | str, topic: str, message: Any) -> None:
        """Send ``message`` to ``peer``'s handler for ``topic`` (one-way, FIFO per link).

        Waits only while the link's write buffer is over its high-water mark.
        Raises PeerUnavailable (no link), TypeError (msgpack cannot carry the value),
        MessageTooLarge. Cancelling is safe: the message is either queued or not."""
        # hot path: by name, link open and writable - no further coroutine
        # (a closed node has no active links; a closing link raises PeerUnavailable)
        if peer.__class__ is str:
            link = self._active.get(peer)  # type: ignore[arg-type,unused-ignore]
            if link is not None and not link.paused:
                link.send_nowait(topic, message)
                self.stats.messages_out += 1
                return
        _, messenger = self._require()
        await messenger.send(peer, topic, message)

    def send_nowait(self, peer: Peer | str, topic: str, message: Any) -> bool:
        """Like ``send`` without waiting: returns False and queues nothing when the link
        is over its high-water mark (then ``await send`` or back off)."""
        # hot path, as in send(): by name, link open and writable
        if peer.__class__ is str:
            link = self._active.get(peer)  # type: ignore[arg-type,unused-ignore]
            if link is not None:
                if link.paused:
                    return False
                link.send_nowait(topic, message)
                self.stats.messages_out += 1
                return True
        _, messenger = self._require()
        return messenger.send_nowait(peer, topic, message)

    async def broadcast(self, topic: str, message: Any) -> set[str]:
        """Send to every linked peer; returns the names reached."""
        _, messenger = self._require()
        return await messenger.broadcast(topic, message)

    def call(self, peer: Peer | str, topic: str, message: Any,
             timeout: float | None = 5.0) -> Coroutine[Any, Any, Any]:
        """Request/reply: ``await`` it for the remote handler's return value. Raises
        RemoteError (the handler raised), CallTimeout (also a TimeoutError),
        PeerUnavailable (no link, or it died before the reply), NodeClosed - all when
        awaited, never at the call. Cancelling is safe; a late reply is discarded."""
        messenger = self._messenger
        if messenger is None or self._closed:
            return self._closed_call()
        # the messenger's coroutine itself, not one wrapped in another: a layer less
        # for every frame of the call to suspend and resume through
        return messenger.call(peer, topic, message, timeout)

    async def _closed_call(self) -> Any:
        self._require()  # raises NodeClosed

    def __repr__(self) -> str:
        where = format_hostport(*self.address) if self.address else self.config.listen
        n = len(self._membership.peers) if self._membership else 0
        return f"<Node {self.cluster}/{self.name} {where} peers={n}>"
