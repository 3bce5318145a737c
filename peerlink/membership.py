"""Membership: the candidate set (union of strategy snapshots), dialling with backoff,
accepted links, duplicate-link resolution, the peer table - and the only publisher of
membership events. Imports discovery.base, link, protocol, events, config, errors, _log.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import secrets
import ssl
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import protocol as p
from ._backoff import Backoff
from ._log import RateLimiter, log_limited
from ._tcpinfo import tcp_rtt
from .config import Config
from .discovery.base import Endpoint, Snapshot, StrategyRunner, format_hostport
from .errors import (
    HandshakeError,
    HandshakeEvicted,
    ProtocolError,
    SelfConnection,
    SimultaneousDial,
)
from .events import EventBus, LeaveReason, Peer, PeerJoined, PeerLeft
from .link import Link, LinkState
from .stats import Direction, Stats
from .tls_accept import TlsAccept

__all__ = ["Candidate", "CandidateState", "Membership"]

log = logging.getLogger("peerlink.membership")

# CHALLENGE nonces our acceptors issued lately: a dialler told "that is yourself" believes
# it only if the challenge it answered came from us (an unauthenticated REFUSE proves
# nothing). A self-dial resolves in milliseconds; 1024 covers any burst short of a flood.
_OWN_NONCES = 1024
# When two nodes learn of each other at once (a cluster starting, a link both ends saw
# die), both would dial and one of the two links would be retired: twice the handshakes.
# The node with the higher address waits this long before such a dial, and usually finds
# the other's link already there. Longer than a handshake on a quiet network (a few ms),
# short enough not to matter where only one side knows the other.
DIAL_HOLD = 0.05
# A lower address that refused our dial (nothing listens there yet) dials us itself, at
# once, when it starts: we retry it no sooner than this, so that our retry does not race
# its dial (a duplicate link) while a cluster starts. Higher addresses wait DIAL_HOLD for
# us, so those we retry on the usual backoff.
REFUSED_LOWER_RETRY = 1.0


def _plain_ip(host: str) -> str:
    """An IPv4 peer seen by a dual-stack listener as ``::ffff:a.b.c.d``, as discovery lists it."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


class CandidateState(enum.StrEnum):
    """What became of a discovered endpoint (``node.status()["candidates"][i]["state"]``)."""

    NEW = "new"  # not dialled yet
    DIALLING = "dialling"  # a dial (TCP, TLS or handshake) is in progress
    LINKED = "linked"  # an open link reaches the node at this endpoint
    REFUSED = "refused"  # nothing listens there
    TIMED_OUT = "timed_out"  # the TCP connect took over connect_timeout
    UNREACHABLE = "unreachable"  # another socket or TLS error
    HANDSHAKE_REJECTED = "handshake_rejected"  # connected, but the handshake failed (see detail)
    IS_SELF = "is_self"  # this node itself: not dialled (again only now and then, if a handshake said so)
    NAME_CONFLICT = "name_conflict"  # the node there uses our name: one of the two must change


@dataclass(eq=False)
class Candidate:
    """An endpoint some strategy reported, and what became of it."""

    endpoint: Endpoint
    backoff: Backoff
    state: CandidateState = CandidateState.NEW
    detail: str | None = None
    peer: str | None = None  # the node this endpoint turned out to be
    next_attempt: float = 0.0  # loop time
    attempts: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    link: Link | None = field(default=None, repr=False)  # the dial's, once TCP is connected
    retry: asyncio.TimerHandle | None = field(default=None, repr=False)  # at next_attempt
    since: float = 0.0  # loop time the current dial step (connect, handshake) began


class Membership:
    """Owns every link and the peer table; emits PeerJoined / PeerLeft on ``bus``."""

    def __init__(self, config: Config, identity: p.Identity, bus: EventBus) -> None:
        self.config = config
        self.identity = identity
        self.bus = bus
        self.cookies = config.cookies()
        self.timeout = config.effective_timeout
        self.links: set[Link] = set()
        self.active: dict[str, Link] = {}  # name -> the open link of that peer
        self.peers: dict[str, Peer] = {}
        self.candidates: dict[Endpoint, Candidate] = {}
        self._snapshots: dict[StrategyRunner, Snapshot] = {}
        # peer whose active link was closed as a duplicate while the surviving link is
        # still finishing its handshake here: name -> (peer, that link)
        self._awaiting: dict[str, tuple[Peer, Link]] = {}
        # reconciling is per candidate (O(1) per dial, link or leave, O(candidates) only
        # when a snapshot changes): the advertised address of every linked peer, and the
        # candidates each peer was reached through
        self._addresses: dict[tuple[str, int], str] = {}
        self._proven: dict[tuple[str, int], Link] = {}  # inbound, cookie proven, not open yet
        self._candidate_hosts: Counter[str] = Counter()  # candidates per host (the budget)
        self._peer_candidates: dict[str, set[Candidate]] = {}
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._log_limit = RateLimiter(60.0)
        # refused inbound connections: keys are source addresses, which an attacker can
        # multiply, so there is a cap on all of them too
        self._refusal_log = RateLimiter(60.0, max_per_period=20)
        # inbound connections that have not proven the cookie, oldest first (all, and per
        # source address): the budget of docs/security.md (a TlsAccept: one still in TLS)
        self._unauthenticated: OrderedDict[Link | TlsAccept, str] = OrderedDict()
        self._unauthenticated_by_host: dict[str, OrderedDict[Link | TlsAccept, None]] = {}
        self._tls_accepts: set[asyncio.Task[None]] = set()
        # CHALLENGE nonces our acceptors issued -> whether that acceptor then verified a
        # proof carrying our own identity (a self-dial)
        self._own_nonces: OrderedDict[bytes, bool] = OrderedDict()
        self.on_messages: Callable[[Link, list[Any]], None] = lambda link, msgs: None
        # (link, whether the peer is still linked through another link)
        self.on_link_closed: Callable[[Link, bool], None] = lambda link, peer_remains: None
        self.changed = asyncio.Event()  # set on every membership change (wait_for_peers)
        self.stats = Stats()  # the node hands in its own
        # provenance: endpoint -> the strategies that report it -> since when (wall clock)
        self.vouched: dict[Endpoint, dict[StrategyRunner, float]] = {}
        self.joined_at: dict[str, float] = {}  # peer name -> when it joined (wall clock)

    # -- link factory --------------------------------------------------------------
    def new_link(self, side: p.Side, endpoint: Endpoint | None = None) -> Link:
        link = Link(
            side,
            identity=self.identity,
            cookies=self.cookies,
            hooks=self,
            max_frame=self.config.max_frame,
            write_buffer_high=self.config.write_buffer_high,
            handshake_timeout=self.config.handshake_timeout,
            endpoint=endpoint,
            max_items=self.config.max_message_items,
            token_bytes=self._issue_nonce if side is p.Side.ACCEPTOR else secrets.token_bytes,
            admit=self._admit if side is p.Side.ACCEPTOR else None,
        )
        link.on_messages = self.on_messages  # straight to messaging (skip link_messages)
        if side is p.Side.DIALER:
            self.links.add(link)
        # an inbound link is registered when connected (link_connected): one that never
        # is (its connection failed first) leaves nothing behind
        return link

    def accept(self) -> Link | TlsAccept:
        """Protocol factory for the listening server, which accepts plain TCP: with TLS
        a TlsAccept runs the TLS handshake inside the unauthenticated budget."""
        if self.config.tls_server is not None:
            return TlsAccept(self, self.config.tls_server, self.config.handshake_timeout)
        return self.new_link(p.Side.ACCEPTOR)

    def track(self, task: asyncio.Task[None]) -> None:
        """A TLS handshake in progress: the close cancels it."""
        self._tls_accepts.add(task)
        task.add_done_callback(self._tls_accepts.discard)

    def _admit(self, peer: p.Identity) -> HandshakeError | None:
        """Simultaneous dials, resolved as Distributed Erlang does before either link
        opens: a dialler that proved the cookie while our own dial to it is connected and
        still in its handshake is refused if ours wins the duplicate rule (the smaller
        dialler name), so neither node pays for a second link and its retirement. When
        the two cross later than that, both open and the rule retires one (link_opened).
        A dial of ours still connecting is no reason: it may never get through."""
        cand = self.candidates.get(Endpoint(peer.host, peer.port))
        if (cand is not None and cand.link is not None and cand.link.state is LinkState.HANDSHAKE
                and self.identity.name < peer.name):
            return SimultaneousDial(f"{peer.name} is dialling us while our dial to it is in its handshake")
        return None

    def _issue_nonce(self, size: int) -> bytes:
        nonce = secrets.token_bytes(size)
        self._own_nonces[nonce] = False
        if len(self._own_nonces) > _OWN_NONCES:
            self._own_nonces.popitem(last=False)
        return nonce

    # -- the unauthenticated budget ------------------------------------------------
    def link_connected(self, link: Link | TlsAccept) -> None:
        """An inbound connection starts its handshake. Past a cap, the OLDEST connection
        that has not proven the cookie is dropped - of the same address first, then of
        all - so a flood of stalled connections cannot lock out a real peer, whose
        handshake takes milliseconds.

        The caps grow by one per discovered candidate (at that address, for the
        per-address cap): every peer discovery lists may dial us at once (a cluster
        starting, or all peers re-dialling a restarted node), and on a loaded host their
        handshakes take far longer than milliseconds. Evicting those would only make them
        retry; discovery is trusted configuration, so an attacker cannot raise the caps."""
        if link.side is not p.Side.ACCEPTOR:
            return
        if self._closing:
            link.abort(LeaveReason.SHUTDOWN)
            return
        if isinstance(link, Link):
            self.links.add(link)
        host = link.remote_host
        self._unauthenticated[link] = host
        same_host = self._unauthenticated_by_host.setdefault(host, OrderedDict())
        same_host[link] = None
        cfg = self.config
        cap = cfg.max_unauthenticated_per_host + self._candidate_hosts.get(_plain_ip(host), 0)
        if len(same_host) > cap:
            self._evict(next(iter(same_host)), f"over {cap} from {host}")
        cap = cfg.max_unauthenticated + len(self.candidates)
        if len(self._unauthenticated) > cap:
            self._evict(next(iter(self._unauthenticated)), f"over {cap} in all")

    def link_proven(self, link: Link) -> None:
        # out of the budget at once: evicting it now would tear down a link the dialler
        # already reported as joined (a false leave at the dialler)
        self._authenticated_or_gone(link)
        if link.side is p.Side.ACCEPTOR and link.peer is not None:
            self._proven[(link.peer.host, link.peer.port)] = link

    def _unproven(self, link: Link) -> None:
        ident = link.peer
        if ident is not None and self._proven.get((ident.host, ident.port)) is link:
            del self._proven[(ident.host, ident.port)]

    def link_refused(self, link: Link, error: HandshakeError | ProtocolError) -> None:
        """Our side of ``link`` refused the handshake (called before the close)."""
        if (isinstance(error, SelfConnection) and not error.by_peer and link.side is p.Side.ACCEPTOR
                and link.handshake.nonce_a in self._own_nonces):
            self._own_nonces[link.handshake.nonce_a] = True  # our dialler will hear "is_self"

    def unauthenticated_gone(self, link: Link | TlsAccept) -> None:
        """Out of the unauthenticated budget: proven, closed, or (TLS) handed to a link."""
        self._authenticated_or_gone(link)

    def _authenticated_or_gone(self, link: Link | TlsAccept) -> None:
        host = self._unauthenticated.pop(link, None)
        if host is not None:
            same_host = self._unauthenticated_by_host[host]
            del same_host[link]
            if not same_host:
                del self._unauthenticated_by_host[host]

    def _evict(self, link: Link | TlsAccept, why: str) -> None:
        self._authenticated_or_gone(link)
        link.abort(LeaveReason.CONNECTION_LOST, HandshakeEvicted(
            f"too many connections without a proven cookie ({why}); dropped the oldest"))

    # -- discovery input -----------------------------------------------------------
    def update_snapshot(self, runner: StrategyRunner, snapshot: Snapshot) -> None:
        if self._snapshots.get(runner) == snapshot:
            return
        self._vouch(runner, self._snapshots.get(runner, frozenset()), snapshot)
        self._snapshots[runner] = snapshot
        self.reconcile()

    def _vouch(self, runner: StrategyRunner, old: Snapshot, new: Snapshot) -> None:
        now = time.time()
        for ep in new - old:
            self.vouched.setdefault(ep, {})[runner] = now
        for ep in old - new:
            sources = self.vouched.get(ep)
            if sources is not None:
                sources.pop(runner, None)
                if not sources:
                    del self.vouched[ep]

    def wanted(self) -> set[Endpoint]:
        out: set[Endpoint] = set()
        for snap in self._snapshots.values():
            out |= snap
        return out

    # -- reconcile: dial what is wanted and not linked -----------------------------
    def reconcile(self) -> None:
        """The candidate set changed: drop what is no longer wanted, add what is new, and
        dial every candidate no link reaches (or schedule its retry)."""
        if self._closing:
            return
        wanted = self.wanted()
        for ep in [ep for ep in self.candidates if ep not in wanted]:
            self._drop(self.candidates.pop(ep))
        for ep in wanted:
            cand = self.candidates.get(ep)
            if cand is None:
                cand = self.candidates[ep] = Candidate(
                    ep, Backoff(self.config.reconnect_initial, self.config.reconnect_max)
                )
                self._candidate_hosts[ep.host] += 1
                if (ep.host, ep.port) == (self.identity.host, self.identity.port):
                    cand.state, cand.detail = CandidateState.IS_SELF, "this node's advertised address"
                    cand.next_attempt = math.inf  # our own configuration says so: for good
            self._consider(cand)

    def _consider(self, cand: Candidate) -> None:
        """Dial ``cand`` now or at its next attempt, unless a link reaches it already."""
        if (self._closing or cand.task is not None or not math.isfinite(cand.next_attempt)
                or self.candidates.get(cand.endpoint) is not cand or self._covered(cand)):
            return  # (an infinite next attempt: our own address, never dialled)
        now = self._loop.time()
        if cand.next_attempt == 0.0 and self._lower(cand.endpoint):
            cand.next_attempt = now + DIAL_HOLD  # the lower address dials first
        if cand.next_attempt <= now:
            if cand.retry is not None:
                cand.retry.cancel()
                cand.retry = None
            cand.task = self._loop.create_task(self._dial(cand), name=f"peerlink-dial-{cand.endpoint}")
        elif cand.retry is None or cand.retry.when() != cand.next_attempt:
            if cand.retry is not None:
                cand.retry.cancel()
            cand.retry = self._loop.call_at(cand.next_attempt, self._retry, cand)

    def _lower(self, ep: Endpoint) -> bool:
        """True if ``ep`` sorts before our advertised address: of two nodes that know each
        other, the lower one dials first."""
        return (ep.host, ep.port) < (self.identity.host, self.identity.port)

    def _retry(self, cand: Candidate) -> None:
        cand.retry = None
        self._consider(cand)

    def _drop(self, cand: Candidate) -> None:
        """``cand`` left the candidate set (or the node closes)."""
        self._candidate_hosts[cand.endpoint.host] -= 1
        if self._candidate_hosts[cand.endpoint.host] <= 0:
            del self._candidate_hosts[cand.endpoint.host]
        if cand.task is not None:
            cand.task.cancel()
        if cand.retry is not None:
            cand.retry.cancel()
            cand.retry = None
        self._identify(cand, None)

    def _identify(self, cand: Candidate, name: str | None) -> None:
        """Record that ``cand`` reaches the node ``name`` (None: forget it)."""
        if cand.peer is not None and cand.peer != name:
            others = self._peer_candidates.get(cand.peer)
            if others is not None:
                others.discard(cand)
                if not others:
                    del self._peer_candidates[cand.peer]
        cand.peer = name
        if name is not None:
            self._peer_candidates.setdefault(name, set()).add(cand)

    def _covered(self, cand: Candidate) -> bool:
        if cand.peer is not None and cand.peer in self.active:
            return True
        ep = cand.endpoint
        name = self._addresses.get((ep.host, ep.port))
        if name is not None and name in self.active:
            self._identify(cand, name)
            cand.state, cand.detail = CandidateState.LINKED, None
            return True
        pending = self._proven.get((ep.host, ep.port))
        if pending is not None and pending.peer is not None:
            # the peer is dialling us and has proven the cookie: its link is about to
            # open, so a dial of ours would only be a duplicate (if it fails, the
            # candidate is reconsidered as one of this peer's)
            self._identify(cand, pending.peer.name)
            return True
        return False

    def _reconsider(self, name: str, link: Link) -> None:
        """``name``'s link is gone: re-dial the candidates that reach it."""
        cands = set(self._peer_candidates.get(name, ()))
        if link.endpoint is not None and (found := self.candidates.get(link.endpoint)) is not None:
            cands.add(found)
        for cand in cands:
            self._consider(cand)

    async def _dial(self, cand: Candidate) -> None:
        ep = cand.endpoint
        cand.state, cand.detail = CandidateState.DIALLING, "connecting (TCP)"
        cand.since = self._loop.time()
        cand.attempts += 1
        try:
            link = cand.link = await self._connect(cand)
            if link is None:
                return
            cand.detail, cand.since = "connected, waiting for the handshake", self._loop.time()
            try:
                # shielded: cancelling the dial (shutdown, or the candidate left
                # discovery) must not cancel the link's own future; the link lives on
                await asyncio.shield(link.opened)
            except SelfConnection as exc:
                if exc.by_peer and not self._own_nonces.get(link.handshake.nonce_a):
                    # anyone can say "that is yourself" before proving a cookie, even
                    # with a challenge our acceptor issued to them
                    self._failed(cand, CandidateState.HANDSHAKE_REJECTED,
                                 f"{exc.reason}: the peer says it is this node, but none of "
                                 "our acceptors saw us dial ourselves")
                    return
                # one of our acceptors verified our own proof on this dial: the address
                # reaches us (directly, or through a relay that may go away), so it is
                # checked again now and then rather than given up for good
                cand.state, cand.detail = CandidateState.IS_SELF, "the handshake found this node itself"
                cand.next_attempt = self._loop.time() + self.config.reconnect_max
                return
            except SimultaneousDial as exc:
                # the peer's own dial is the link; retried (a no-op once that is open)
                self._failed(cand, CandidateState.DIALLING, str(exc), quiet=True)
                return
            except HandshakeError as exc:
                self.stats.refused(Direction.OUTBOUND, exc.reason)
                self._failed(cand, CandidateState.HANDSHAKE_REJECTED, f"{exc.reason}: {exc}")
                return
            assert link.peer is not None
            if link.peer.name == self.identity.name:  # link_opened refused it
                self._identify(cand, link.peer.name)
                self._failed(cand, CandidateState.NAME_CONFLICT,
                             f"the node there is also named {self.identity.name!r}")
                return
            cand.state, cand.detail = CandidateState.LINKED, None
            if self.candidates.get(ep) is cand:
                self._identify(cand, link.peer.name)
            cand.backoff.reset()
            cand.next_attempt = 0.0
        finally:
            cand.task = cand.link = None
            self._consider(cand)

    async def _connect(self, cand: Candidate) -> Link | None:
        """Open the TCP (and TLS) connection; None after recording why it failed."""
        ep = cand.endpoint
        cfg = self.config
        ctx: ssl.SSLContext | None = cfg.tls_client
        made: list[Link] = []

        def factory() -> Link:
            made.append(self.new_link(p.Side.DIALER, ep))
            return made[-1]

        try:
            async with asyncio.timeout(cfg.connect_timeout):
                _, link = await self._loop.create_connection(
                    factory, ep.host, ep.port,
                    ssl=ctx, server_hostname=(ep.host if ctx is not None else None),
                )
            return link
        except TimeoutError:
            self._failed(cand, CandidateState.TIMED_OUT, f"TCP connect took over {cfg.connect_timeout:g} s")
        except ConnectionRefusedError:
            self._failed(cand, CandidateState.REFUSED, "connection refused (nothing listening)")
        except (OSError, ssl.SSLError) as exc:
            self._failed(cand, CandidateState.UNREACHABLE, f"{type(exc).__name__}: {exc}")
        finally:
            for orphan in made:  # a failed TLS handshake never reaches connection_made
                if orphan.transport is None and orphan.state is LinkState.HANDSHAKE:
                    self.links.discard(orphan)
        return None

    def _failed(self, cand: Candidate, state: CandidateState, detail: str, *, quiet: bool = False) -> None:
        delay = cand.backoff.next()
        if state is CandidateState.REFUSED and self._lower(cand.endpoint):
            delay = max(delay, REFUSED_LOWER_RETRY)
        cand.state, cand.detail = state, detail
        cand.next_attempt = self._loop.time() + delay
        # a peer that is still starting is normal for a moment; persisting is not
        level = logging.DEBUG if quiet else logging.WARNING if cand.attempts >= 3 else logging.INFO
        log_limited(
            log, self._log_limit, ("dial", cand.endpoint, state, level), level,
            "%s: discovered but not linked: %s (%s); retrying in %.2f s",
            cand.endpoint, state, detail, delay,
        )

    # -- LinkHooks -----------------------------------------------------------------
    def link_opened(self, link: Link) -> None:
        self._authenticated_or_gone(link)
        self._unproven(link)
        ident = link.peer
        assert ident is not None
        if self._closing:
            link.superseded = True
            link.close("shutdown")
            return
        name = ident.name
        if name == self.identity.name:
            self.stats.refused(Direction.INBOUND if link.endpoint is None else Direction.OUTBOUND,
                               "name_conflict")
            log_limited(log, self._log_limit, ("conflict", ident.incarnation), logging.ERROR,
                        "%s: another node uses our name (incarnation %s at %s); refusing it",
                        name, ident.incarnation, format_hostport(ident.host, ident.port))
            link.superseded = True
            link.close("name_conflict")
            return
        if link.endpoint is not None and (cand := self.candidates.get(link.endpoint)) is not None:
            self._identify(cand, name)
        current = self.active.get(name)
        if current is None:
            awaiting = self._awaiting.pop(name, None)
            if awaiting is not None and awaiting[0].incarnation == ident.incarnation:
                link.peer_obj = awaiting[0]
                self.active[name] = link  # the surviving duplicate: no event
                return
            if awaiting is not None:  # pragma: no cover - a new incarnation meanwhile
                self._emit_leave(awaiting[0], LeaveReason.RESTARTED)
            self._join(link)
            return
        cur_ident = current.peer
        assert cur_ident is not None and current.peer_obj is not None
        if cur_ident.incarnation == ident.incarnation:
            # two links to one peer (both dialled at once): keep the one with the
            # smaller (dialler name, dialler nonce); both sides choose the same one
            link.peer_obj = current.peer_obj
            if link.dialer_key < current.dialer_key:
                self.active[name] = link
                winner, loser = link, current
            else:
                winner, loser = current, link
            # calls waiting on the loser get their replies on the winner
            winner.calls.update(loser.calls)
            loser.calls.clear()
            for other in list(self.links):  # at most one retiring link per peer
                if other.retiring and other is not loser and other.peer is not None and other.peer.name == name:
                    other.abort(LeaveReason.SHUTDOWN)
            loser.retire(self.config.handshake_timeout)
            return
        # same name, new incarnation: the old process is gone. Bookkeeping and events
        # first, then retire the old link (whose socket may well be dead by now)
        old = current.peer_obj
        current.superseded = True
        del self.active[name]
        self._emit_leave(old, LeaveReason.RESTARTED)
        self._join(link)
        current.close("restarted")

    def link_closed(self, link: Link, reason: LeaveReason, error: BaseException | None) -> None:
        self.links.discard(link)
        self._authenticated_or_gone(link)
        self._unproven(link)
        # a duplicate retired by either side: the peer stays linked through the winner,
        # so what arrived on this link must still reach the handlers (nothing would
        # tell the application it was lost)
        self.on_link_closed(link, link.retiring or link.goodbye == "duplicate")
        self.stats.closed_rx_bytes += link.rx_bytes
        self.stats.closed_tx_bytes += link.tx_bytes
        if link.state is not LinkState.CLOSED:  # pragma: no cover
            return
        ident = link.peer
        if not link.opened.done() or link.opened.cancelled() or link.opened.exception() is not None:
            self._log_handshake_failure(link, error)
        if link.superseded or ident is None or self._closing:
            return  # the peer is still linked, or it never was: no candidate to re-dial
        name = ident.name
        if self.active.get(name) is link:
            del self.active[name]
            peer = link.peer_obj
            assert peer is not None
            if link.goodbye == "duplicate":
                for other in self.links:
                    if (other.state is LinkState.HANDSHAKE and other.peer is not None
                            and other.peer.name == name and other.peer.incarnation == ident.incarnation):
                        self._awaiting[name] = (peer, other)
                        return
                reason = LeaveReason.CONNECTION_LOST
            self._emit_leave(peer, reason)
            if reason in (LeaveReason.CONNECTION_LOST, LeaveReason.TIMEOUT):
                self._suspect(link)
        elif name in self._awaiting and self._awaiting[name][1] is link:
            peer, _ = self._awaiting.pop(name)
            self._emit_leave(peer, LeaveReason.CONNECTION_LOST)
        self._reconsider(name, link)

    def _suspect(self, link: Link) -> None:
        """Tell the strategies that reported this peer that its link failed."""
        ident = link.peer
        assert ident is not None
        for runner, snapshot in self._snapshots.items():
            for ep in snapshot:
                if ep == link.endpoint or (ep.host, ep.port) == (ident.host, ident.port):
                    try:
                        runner.strategy.suspect(ep)
                    except Exception:  # a strategy bug must not break membership
                        log.exception("%s: suspect() raised", runner.status.strategy)

    def link_messages(self, link: Link, messages: list[Any]) -> None:
        self.on_messages(link, messages)

    def _log_handshake_failure(self, link: Link, error: BaseException | None) -> None:
        """One WARNING per (source address, reason) per minute and 20 per minute in all,
        the rest at DEBUG. The reason is from a fixed set (HANDSHAKE_REASONS) and the
        error's text quotes remote strings only shortened, so a peer can neither choose
        log keys nor flood the log."""
        if link.endpoint is not None:
            return  # the dialler's failure is reported by _dial with the candidate
        if link.rx_bytes == 0 and not isinstance(error, HandshakeEvicted):
            # a TCP probe (e.g. a readiness check) that sent nothing
            log.debug("inbound connection from %s closed before the handshake", link.remote)
            return
        where = link.remote
        if link.peer is not None:
            where += f" ({link.peer.name})"
        if isinstance(error, HandshakeError):
            reason = error.reason
        else:
            reason = "protocol_error" if isinstance(error, ProtocolError) else "connection_lost"
        if isinstance(error, SelfConnection):  # our own dial of one of our addresses
            log.debug("refused an inbound link from %s: it is this node itself", where)
            return
        if isinstance(error, SimultaneousDial):  # normal: our own dial to it is the link
            log.debug("refused an inbound link from %s: %s", where, error)
            return
        # key on the remote host: its port changes per connection
        self.stats.refused(Direction.INBOUND, reason)
        log_limited(log, self._refusal_log, (link.remote_host, reason), logging.WARNING,
                    "refused an inbound link from %s (%s): %s", where, reason, error or "closed")

    # -- events --------------------------------------------------------------------
    def _join(self, link: Link) -> None:
        ident = link.peer
        assert ident is not None
        peer = Peer(ident.name, ident.incarnation, (ident.host, ident.port), ident.metadata)
        link.peer_obj = peer
        self.active[ident.name] = link
        self.peers[ident.name] = peer
        self._addresses[peer.address] = peer.name
        self.stats.joins += 1
        self.joined_at[ident.name] = time.time()
        log.info("%s joined (%s, incarnation %s)", ident.name, peer.address_str, ident.incarnation)
        self.bus.publish(PeerJoined(peer))
        self._changed()

    def _emit_leave(self, peer: Peer, reason: LeaveReason) -> None:
        if self.peers.get(peer.name) is peer:
            del self.peers[peer.name]
            self.joined_at.pop(peer.name, None)
        if self._addresses.get(peer.address) == peer.name:
            del self._addresses[peer.address]
        self.stats.leaves[reason] += 1
        log.info("%s left (%s)", peer.name, reason.value)
        self.bus.publish(PeerLeft(peer, reason))
        self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    # -- heartbeats ----------------------------------------------------------------
    async def run_heartbeats(self) -> None:
        """One timer for all links (O(N) work per tick, no task or timer per link).

        It fires at wall-clock multiples of ``tick``, so every node of the cluster pings
        and checks at the same instants (NTP keeps hosts within milliseconds): a silent
        peer is reported between ``timeout`` and ``timeout + tick`` after it went quiet,
        and nodes on one host handle each other's pings in one wake-up."""
        tick = self.config.tick
        while True:
            await asyncio.sleep(tick - time.time() % tick)
            self._heartbeat(tick)

    def _heartbeat(self, tick: float) -> None:
        # not inline in the loop above: its frame would keep the last link alive
        now = self._loop.time()
        for link in list(self.active.values()):
            link.heartbeat(now, tick, self.timeout)

    # -- shutdown ------------------------------------------------------------------
    async def close(self) -> None:
        self._closing = True
        for task in list(self._tls_accepts):
            task.cancel()
        for cand in self.candidates.values():
            self._drop(cand)
        links = list(self.links)
        for link in links:
            link.close("shutdown", linger=self.config.goodbye_timeout)
        waits = [link.closed for link in links if not link.closed.done()]
        if waits:
            await asyncio.wait(waits, timeout=self.config.goodbye_timeout)
            for link in links:
                if not link.closed.done():
                    link.abort(LeaveReason.SHUTDOWN)
        self.active.clear()
        self.peers.clear()

    # -- status --------------------------------------------------------------------
    def candidate_status(self) -> list[dict[str, Any]]:
        now = self._loop.time()
        out = []
        for cand in sorted(self.candidates.values(), key=lambda c: (c.endpoint.host, c.endpoint.port)):
            linked = cand.peer is not None and cand.peer in self.active
            retry = None
            if not linked and cand.state not in (CandidateState.IS_SELF, CandidateState.DIALLING) and math.isfinite(cand.next_attempt):
                retry = max(0.0, cand.next_attempt - now)
            detail = cand.detail
            if not linked and cand.state is CandidateState.DIALLING:
                detail = f"{detail} for {now - cand.since:.1f} s"
            out.append({
                "endpoint": str(cand.endpoint),
                "state": (CandidateState.LINKED if linked else cand.state).value,
                "detail": None if linked else detail,
                "peer": cand.peer,
                "attempts": cand.attempts,
                "retry_in": retry,
                "sources": self.sources(cand.endpoint),
            })
        return out

    def sources(self, endpoint: Endpoint) -> list[dict[str, Any]]:
        """Which strategies report ``endpoint`` now, and since when (wall clock)."""
        found = self.vouched.get(endpoint, {})
        return [{"strategy": runner.status.strategy, "since": since}
                for runner, since in sorted(found.items(), key=lambda item: item[1])]

    def peer_status(self) -> list[dict[str, Any]]:
        now = self._loop.time()
        wall = time.time()
        out = []
        endpoints: dict[str, list[Endpoint]] = {}  # peer name -> the candidates that reach it
        for cand in self.candidates.values():
            if cand.peer is not None:
                endpoints.setdefault(cand.peer, []).append(cand.endpoint)
        for name, link in sorted(self.active.items()):
            peer = link.peer_obj
            assert peer is not None
            sources = [s for ep in endpoints.get(name, ()) for s in self.sources(ep)]
            out.append({
                "sources": sorted(sources, key=lambda s: s["since"]),
                "joined_at": self.joined_at.get(name),
                "rtt": tcp_rtt(link.transport),
                "name": name, "incarnation": peer.incarnation, "address": peer.address_str,
                "direction": "out" if link.side is p.Side.DIALER else "in",
                "last_heard": wall - (now - link.last_rx), "rx_bytes": link.rx_bytes,
                "tx_bytes": link.tx_bytes, "metadata": dict(peer.metadata),
            })
        return out
