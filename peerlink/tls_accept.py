"""An accepted connection until its TLS handshake is done.

asyncio's TLS server runs the handshake before any protocol sees the connection, so a
connection stalled in it could be counted in no budget. The listener therefore accepts
plain TCP: a ``TlsAccept`` stands for the connection from the accept on - counted in the
unauthenticated budget like a link in its cookie handshake, and evicted the same way -
upgrades it with ``loop.start_tls``, and hands the TLS transport to a new Link, which
starts the cookie handshake. A connection that fails TLS, or is evicted, leaves nothing
behind.

``start_tls`` takes the transport over in its first step, run here inside
``connection_made``: a loop that starts reading once ``connection_made`` returns (uvloop
does) must hand the ClientHello to the TLS layer, not to this protocol.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Protocol

from . import protocol as p
from ._eager import Starter, Suspended, resume
from .events import LeaveReason

if TYPE_CHECKING:
    from .link import Link

__all__ = ["TlsAccept", "TlsAcceptHooks"]


class TlsAcceptHooks(Protocol):
    """What a ``TlsAccept`` needs of the membership manager."""

    def link_connected(self, link: TlsAccept) -> None: ...
    def unauthenticated_gone(self, link: TlsAccept) -> None: ...
    def new_link(self, side: p.Side) -> Link: ...
    def track(self, task: asyncio.Task[None]) -> None: ...


class TlsAccept(asyncio.Protocol):
    """The protocol of an accepted TCP connection, then of its TLS layer until the Link
    takes over (what the peer sends right after the TLS handshake is kept for the link:
    one read at most, as the handover follows in the next loop iteration)."""

    side = p.Side.ACCEPTOR

    def __init__(self, hooks: TlsAcceptHooks, context: ssl.SSLContext, timeout: float) -> None:
        self._hooks = hooks
        self._context = context
        self._timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.remote_host = ""
        self._early: list[bytes] = []
        self._gone = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self.remote_host = str(peername[0])
        self._hooks.link_connected(self)  # past a cap the oldest goes: maybe this one
        if transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        upgrade = loop.start_tls(transport, self, self._context, server_side=True,  # type: ignore[arg-type]
                                 ssl_handshake_timeout=self._timeout)
        try:
            # its first step: the TLS layer is the transport's protocol from now on
            done, started = Starter().start(upgrade)
            if done:
                raise RuntimeError("start_tls returned without waiting for a handshake")
        except BaseException:  # (a transport start_tls does not support: a bug)
            upgrade.close()
            self.abort(LeaveReason.CONNECTION_LOST)
            raise
        self._hooks.track(loop.create_task(self._handover(started)))

    def data_received(self, data: bytes) -> None:
        self._early.append(data)  # decrypted, between the TLS handshake and the handover

    def eof_received(self) -> bool | None:
        self._gone = True  # a peer that hangs up before its cookie handshake: done
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        self._hooks.unauthenticated_gone(self)

    def abort(self, reason: LeaveReason, error: BaseException | None = None) -> None:
        """Evicted from the unauthenticated budget (the same call as ``Link.abort``)."""
        self._gone = True
        if self.transport is not None:
            self.transport.abort()

    async def _handover(self, started: Suspended) -> None:
        raw = self.transport
        try:
            tls: asyncio.Transport | None = await resume(started)
        except BaseException as exc:
            # failed, timed out, evicted (start_tls has closed the socket) or the node is
            # closing: no link was made
            if raw is not None:
                raw.abort()
            if isinstance(exc, Exception):
                return
            raise
        finally:
            self._hooks.unauthenticated_gone(self)
        if tls is None or self._gone or tls.is_closing():
            if tls is not None:
                tls.abort()
            if raw is not None:
                raw.abort()
            return
        link = self._hooks.new_link(p.Side.ACCEPTOR)
        tls.set_protocol(link)
        link.connection_made(tls)  # in the budget again, as a link in its cookie handshake
        early, self._early = self._early, []
        for data in early:
            if link.transport is None or link.transport.is_closing():
                break
            link.data_received(data)
