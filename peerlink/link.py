"""Link: one authenticated TCP (optionally TLS) connection to a peer.

An ``asyncio.Protocol`` around the sans-I/O pieces of ``protocol.py``: it feeds bytes to
the ``FrameDecoder``, runs the ``Handshake``, coalesces writes through the
``FrameEncoder`` (one ``transport.writelines`` per loop iteration), keeps heartbeat
timestamps and reports what happened to its owner through ``LinkHooks``. It is the only
module with sockets and timers for a link. Imports protocol, events, errors, _log.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from . import protocol as p
from .discovery.base import format_hostport
from .errors import HandshakeError, HandshakeTimeout, PeerUnavailable, ProtocolError
from .events import LeaveReason, Peer
from .protocol import HEADER_BYTES

if TYPE_CHECKING:
    from .discovery.base import Endpoint

__all__ = ["Link", "LinkHooks", "LinkState"]

log = logging.getLogger(__name__)
_SEND_PREFIXES = p.SEND_PREFIXES
# msgpack's header of a bin of n < 256 bytes (what packb writes before a bytes body)
_BIN8 = [b"\xc4" + bytes([n]) for n in range(256)]
_bin16_head = struct.Struct(">BH").pack  # ... and of a bin of n < 65536: (0xC5, n)
_PING_FRAME = p.PING_FRAME
# SO_LINGER on, 0 s: close() sends RST and discards unsent data
_LINGER_RESET = struct.pack("ii", 1, 0)


def _without_frames(error: BaseException | None) -> BaseException | None:
    """``error`` with no traceback along its chain. A link keeps the error it closed on,
    and a traceback keeps every frame it passed through alive - the decoder's, holding a
    half-built hostile message and the frame's bytes - in a cycle through the link that
    only the cyclic garbage collector breaks, much later."""
    e, depth = error, 0
    while e is not None and depth < 16:
        e.__traceback__ = None
        e, depth = e.__cause__ or e.__context__, depth + 1
    return error


class LinkState(enum.IntEnum):
    HANDSHAKE = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


# Enum member lookups cost ~100 ns each on Python 3.11: the hot path uses these aliases
LINK_OPEN = LinkState.OPEN
LINK_HANDSHAKE = LinkState.HANDSHAKE


class LinkHooks(Protocol):
    """What a link reports. Called from the event loop, never concurrently."""

    def link_connected(self, link: Link) -> None:
        """The TCP (and TLS) connection is up; the handshake starts. The hook may abort
        this link or others (a cap on unauthenticated connections)."""

    def link_proven(self, link: Link) -> None:
        """The peer proved the cookie; the handshake may still be finishing (an acceptor
        waits for READY, but the dialler already treats the link as open)."""

    def link_refused(self, link: Link, error: HandshakeError | ProtocolError) -> None:
        """Our side refused the handshake (a REFUSE, if any, is queued; the link closes
        next)."""

    def link_opened(self, link: Link) -> None:
        """The handshake completed."""

    def link_closed(self, link: Link, reason: LeaveReason, error: BaseException | None) -> None:
        """The connection is gone (after open, or during the handshake)."""

    def link_messages(self, link: Link, messages: list[Any]) -> None:
        """Messages that arrived on an open link (SEND/CALL/REPLY/control)."""


class Link(asyncio.Protocol):
    """One connection. Create through ``loop.create_connection`` / ``create_server``
    with a factory; await ``opened`` for the handshake's outcome."""

    def __init__(
        self,
        side: p.Side,
        *,
        identity: p.Identity,
        cookies: Sequence[bytes],
        hooks: LinkHooks,
        max_frame: int,
        write_buffer_high: int,
        handshake_timeout: float,
        endpoint: Endpoint | None = None,
        max_items: int = p.DEFAULT_MAX_MESSAGE_ITEMS,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
        admit: Callable[[p.Identity], HandshakeError | None] | None = None,
    ) -> None:
        self.side = side
        self.hooks = hooks
        self.endpoint = endpoint
        self.state = LinkState.HANDSHAKE
        self.handshake = p.Handshake(side, identity=identity, cookies=cookies, token_bytes=token_bytes,
                                     admit=admit)
        # unauthenticated until the handshake says otherwise: small frames, tight limits
        self._decoder = p.FrameDecoder(max_frame, max_items=max_items, preauth=True)
        self._encoder = p.FrameEncoder(max_frame, max_items)
        self._max_frame = max_frame
        self._max_items = max_items
        self._write_buffer_high = write_buffer_high
        self._handshake_timeout = handshake_timeout
        self.loop = asyncio.get_running_loop()  # the messenger reads it per call
        # the loop's clock, read per write and per chunk received: time.monotonic itself
        # where that is all loop.time() does (asyncio's own loops), a Python frame less
        self.clock: Callable[[], float] = (
            time.monotonic if type(self.loop).time is asyncio.BaseEventLoop.time else self.loop.time)
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[LeaveReason] = self.loop.create_future()
        self.peer: p.Identity | None = None
        self.peer_obj: Peer | None = None  # the application's view, set by membership
        self.remote = "?"  # the other end's socket address, for logs
        self.remote_host = "?"  # ... and its IP address alone
        self.last_rx = self.last_tx = self.loop.time()
        self.rx_bytes = 0
        self.tx_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._hs_timer: asyncio.TimerHandle | None = None
        self._close_reason: LeaveReason | None = None
        self._close_error: BaseException | None = None
        self.goodbye: str | None = None  # the reason in a GOODBYE we received
        self.superseded = False  # closed by membership as a duplicate: report nothing
        self.retiring = False  # a duplicate still delivering what the peer sent on it
        self.reading_paused = False  # by us, because handlers fell behind
        self.paused = False  # our write buffer is above its high-water mark
        self._stuck_since = 0.0  # while paused: when the peer last took any of our bytes
        self._stuck_sent = 0  # ... and how many it had taken by then
        self._receiving = False  # inside data_received: writes wait for its final flush
        self._gather = False  # the next request leads a group: see gather_writes
        self._drain_waiters: list[asyncio.Future[None]] = []
        # messaging state, owned by messaging.py
        self.on_messages: Callable[[Link, list[Any]], None] = hooks.link_messages
        self.calls: dict[int, asyncio.Future[Any]] = {}
        self.inbox: deque[Any] = deque()
        self.inbox_task: asyncio.Task[None] | None = None
        self.inbox_bytes = 0  # wire bytes of the messages queued or being handled
        self.batch: Any = None  # messaging's accounting for the chunk being dispatched
        self.batch_bytes = 0  # bytes of the frames the chunk being dispatched came in
        self.running = 0  # concurrent handler tasks
        self.slot_waiter: asyncio.Future[None] | None = None  # the inbox task, for a free slot

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self.remote_host = str(peername[0])
            self.remote = format_hostport(self.remote_host, int(peername[1]))
        self.transport.set_write_buffer_limits(high=self._write_buffer_high)
        self._restart_handshake_timer()
        self.hooks.link_connected(self)
        if not self.transport.is_closing():
            self._send_handshake_output()

    def data_received(self, data: bytes) -> None:
        self.rx_bytes += len(data)
        if data == _PING_FRAME and self.state is LINK_OPEN and not self._decoder.buffered:
            self.last_rx = self.clock()
            return  # an idle peer's heartbeat (most of what an idle mesh receives): done
        try:
            messages = self._decoder.feed(data)
            if self.state is LINK_HANDSHAKE:
                messages = self._run_handshake(messages)
        except ProtocolError as exc:
            self.abort(LeaveReason.PROTOCOL_ERROR, exc)
            return
        if messages and (self.state is LINK_OPEN or self.retiring):
            self.batch_bytes = self._decoder.decoded_bytes
            self._receiving = True
            try:
                self.on_messages(self, messages)
            except ProtocolError as exc:
                self.abort(LeaveReason.PROTOCOL_ERROR, exc)
                return
            finally:
                self._receiving = False
            # replies produced while handling this chunk go out in one write, now (a
            # flush scheduled meanwhile stays: it gathers what follows in this iteration;
            # a full frame was written when it filled, so at most one is left)
            if self._encoder.size:
                self._write(self._encoder.take_frame())
        # stamped last: between a request's arrival and its reply's write (or a reply's
        # and the caller's wake-up) only what must happen first
        self.last_rx = self.clock()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        prev = self.state
        self.state = LinkState.CLOSED
        self.transport = None
        for h in (self._flush_handle, self._hs_timer):
            if h is not None:
                h.cancel()
        self._flush_handle = self._hs_timer = None
        self._wake_drainers(PeerUnavailable(self.name, "link closed"))
        reason = self._close_reason
        if reason is None:
            if self.goodbye is not None:
                reason = LeaveReason.SHUTDOWN
            else:
                reason = LeaveReason.CONNECTION_LOST
        error = self._close_error or _without_frames(exc)
        if not self.opened.done():
            err = error if isinstance(error, HandshakeError) else HandshakeError(
                f"connection closed during handshake ({reason.value})"
                + (f": {error}" if error else "")
            )
            if not isinstance(error, HandshakeError):
                err.reason = "connection_lost" if not isinstance(error, ProtocolError) else "protocol_error"
            self.opened.set_exception(err)
            self.opened.exception()  # mark retrieved: the dialler may be gone
        if not self.closed.done():
            self.closed.set_result(reason)
        if prev is not LinkState.CLOSED:
            self.hooks.link_closed(self, reason, error)

    def pause_writing(self) -> None:
        self.paused = True
        self._stuck_since = self.loop.time()
        self._stuck_sent = self._bytes_sent()

    def _bytes_sent(self) -> int:
        """Bytes the kernel has taken from us (written minus still buffered)."""
        t = self.transport
        return self.tx_bytes - (t.get_write_buffer_size() if t is not None else 0)

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_drainers(None)

    # -- handshake -----------------------------------------------------------------
    def _run_handshake(self, messages: list[Any]) -> list[Any]:
        """Feed the handshake; returns what arrived after it completed. Unauthenticated,
        the decoder hands over one message at a time, so each frame is decoded under the
        limits that hold when it is reached: the moment the peer proves the cookie, the
        next frame may be a full-size one (READY and the first messages, coalesced)."""
        hs = self.handshake
        decoder = self._decoder
        while messages:
            for i, msg in enumerate(messages):
                try:
                    hs.receive(msg)
                except (HandshakeError, ProtocolError) as exc:
                    if not (isinstance(exc, HandshakeError) and exc.by_peer):
                        self.hooks.link_refused(self, exc)  # our refusal, not theirs
                    self._send_handshake_output()
                    reason = LeaveReason.PROTOCOL_ERROR
                    self._close_reason, self._close_error = reason, _without_frames(exc)
                    if self.transport is not None:
                        self.transport.close()  # flushes the REFUSE first
                    return []
                self._send_handshake_output()
                if hs.peer is not None:
                    # the acceptor knows who dials before the link opens: membership uses
                    # it to recognise the survivor of a duplicate pair still in handshake
                    self.peer = hs.peer
                if hs.peer_proven and decoder.preauth:
                    decoder.authenticate(self._max_frame, self._max_items)
                    if not hs.done:
                        # an acceptor that sent WELCOME: the dialler treats the link as
                        # open, so READY gets a whole handshake_timeout of its own, not
                        # what a slow (loaded) start of the handshake left of it
                        self._restart_handshake_timer()
                    self.hooks.link_proven(self)
                if hs.done:
                    self._opened()
                    return messages[i + 1:] + decoder.feed(b"")
            messages = decoder.feed(b"")
        return []

    def _send_handshake_output(self) -> None:
        out = self.handshake.take_outgoing()
        if out and self.transport is not None:
            for m in out:
                self._encoder.add(m)
            self._flush()

    def _restart_handshake_timer(self) -> None:
        if self._hs_timer is not None:
            self._hs_timer.cancel()
        self._hs_timer = self.loop.call_later(self._handshake_timeout, self._handshake_timed_out)

    def _opened(self) -> None:
        if self._hs_timer is not None:
            self._hs_timer.cancel()
            self._hs_timer = None
        self.peer = self.handshake.peer
        self.state = LINK_OPEN
        self.opened.set_result(None)
        self.hooks.link_opened(self)

    def _handshake_timed_out(self) -> None:
        self._hs_timer = None
        if self.state is LinkState.HANDSHAKE:
            self.abort(LeaveReason.CONNECTION_LOST,
                       HandshakeTimeout(f"no complete handshake within {self._handshake_timeout:g} s"))

    # -- writing -------------------------------------------------------------------
    def send_nowait(self, topic: str, body: Any) -> None:
        """Queue a one-way message (the hot path). Raises PeerUnavailable if not open,
        TypeError if msgpack cannot carry ``body``, MessageTooLarge."""
        if self.state is not LINK_OPEN:
            raise PeerUnavailable(self.name, "link is closing")
        try:
            prefix = _SEND_PREFIXES[topic]
        except (KeyError, TypeError):  # first use of this topic, or not a str at all
            prefix = p.send_prefix(topic)  # a clear TypeError for a topic that is no str
        enc = self._encoder
        # == packb((SEND, topic, body)), without building the tuple or packing the topic,
        # queued in parts: the frame's join is the only copy of the body
        if body.__class__ is bytes and (n := len(body)) < 65536:
            # bulk data: msgpack's bin header by hand, the body not copied at all here
            # (three parts rather than prefix + header: one concatenation less)
            bin_head = _BIN8[n] if n < 256 else _bin16_head(0xC5, n)
            size = enc.size + len(prefix) + len(bin_head) + n
            if size >= enc.batch:  # rare: the frame is full (or the batch is tiny)
                self._write_full(prefix + bin_head, body)
                return
            parts = enc.parts
            parts.append(prefix)
            parts.append(bin_head)
            parts.append(body)
        else:
            try:
                data = enc.packb(body)
            except (OverflowError, ValueError) as exc:  # e.g. 2**64, a lone surrogate
                raise TypeError(f"msgpack cannot carry this value: {exc}") from exc
            if enc.saw_tuple:
                enc.refuse_tuple_keys(body)
            size = enc.size + len(prefix) + len(data)
            if size >= enc.batch:  # rare: the frame is full, or a large message
                self._write_full(prefix, data)
                return
            parts = enc.parts
            parts.append(prefix)
            parts.append(data)
        # (inlined FrameEncoder.add_packed: this runs once per message)
        enc.size = size
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _write_full(self, head: bytes, data: bytes) -> None:
        """A message (``head + data``) that does not fit in the frame being filled: that
        frame goes out now, on its own (asyncio's ``writelines`` would join it with the
        next: one more copy of a whole batch), and the message starts the next frame,
        or - as big as a batch or more - is a frame of its own, written now too."""
        enc = self._encoder
        if enc.size:
            self._write(enc.take_frame())
        n = len(head) + len(data)
        if n < enc.batch:
            enc.parts.append(head)
            enc.parts.append(data)
            enc.size = n
            if self._flush_handle is None:
                self._flush_handle = self.loop.call_soon(self._flush)
            return
        message = head + data
        enc.check_large(message)  # MessageTooLarge: what the peer would refuse
        self._write(n.to_bytes(HEADER_BYTES, "big") + message)

    def write(self, message: Any, *, now: bool = False) -> None:
        """Queue any message. ``now`` (a request: latency over coalescing) writes it at
        once if nothing is queued ahead of it and ``data_received`` is not dispatching
        (its final flush sends what the handlers write)."""
        if self.state is not LINK_OPEN:
            raise PeerUnavailable(self.name, "link is closing")
        enc = self._encoder
        try:
            data = enc.packb(message)
        except (OverflowError, ValueError):
            data = enc.pack(message)  # raises the TypeError that says why
        if enc.saw_tuple:
            enc.refuse_tuple_keys(message)
        size = enc.size + len(data)
        if size >= enc.batch:  # rare: the frame is full, or a large message
            self._write_full(b"", data)
        elif self._flush_handle is None and not self._receiving:
            # nothing is queued (what is queued has a flush scheduled, or waits for
            # data_received's): a request goes out at once as one frame - no encoder,
            # no callback, no extra loop iteration, like a raw Protocol's write
            if now:
                self._write(size.to_bytes(HEADER_BYTES, "big") + data)
                if self._gather:  # the callers woken with ours write behind it, gathered
                    self._gather = False
                    self._flush_handle = self.loop.call_soon(self._flush)
                return
            enc.parts.append(data)
            enc.size = size
            self._flush_handle = self.loop.call_soon(self._flush)
        else:  # inlined FrameEncoder.add_packed
            enc.parts.append(data)
            enc.size = size

    def gather_writes(self) -> None:
        """One chunk of replies woke several callers: the first request they make goes
        out at once (the peer starts on it), the others queue behind it and leave in one
        ``send()`` at the end of the loop iteration instead of one each."""
        self._gather = True

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._write_frames(self._encoder.take())

    def _write_frames(self, frames: list[bytes]) -> None:
        if len(frames) == 1:  # the usual case: no join in writelines
            self._write(frames[0])
            return
        t = self.transport
        if frames and t is not None and not t.is_closing():
            try:
                t.writelines(frames)
                self.tx_bytes += sum(map(len, frames))
            except (OSError, RuntimeError) as exc:
                self._write_failed(exc)
                return
            self.last_tx = self.clock()

    def _write(self, frame: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            try:
                t.write(frame)
            except (OSError, RuntimeError) as exc:
                self._write_failed(exc)
                return
            self.tx_bytes += len(frame)
            self.last_tx = self.clock()

    def _write_failed(self, exc: Exception) -> None:
        # the socket died under us (or was half-closed): whoever flushed - maybe another
        # link's callback - must not see it; only bookkeeping is left
        self.abort(LeaveReason.CONNECTION_LOST, exc)

    async def drain(self) -> None:
        """Wait while the write buffer is above its high-water mark.
        Cancelling is safe. Raises PeerUnavailable if the link closes meanwhile."""
        if not self.paused:
            if self.state is not LINK_OPEN:
                raise PeerUnavailable(self.name, "link is closed")
            return
        fut = self.loop.create_future()
        self._drain_waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._drain_waiters:
                self._drain_waiters.remove(fut)

    def _wake_drainers(self, exc: BaseException | None) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                if exc is None:
                    w.set_result(None)
                else:
                    w.set_exception(exc)

    # -- control -------------------------------------------------------------------
    def control(self, msg: Any) -> None:
        """Non-application messages on an open link."""
        kind = msg[0]
        if kind == p.PING or kind == p.PONG:
            return
        if kind == p.GOODBYE:
            reason = msg[1] if len(msg) > 1 else None
            self.goodbye = reason[:64] if type(reason) is str else "shutdown"
            if self.transport is not None:
                self.transport.close()
            return
        raise ProtocolError(f"unexpected message type {p.shorten(kind)} on an open link")

    def pause_reading(self) -> None:
        """Stop reading (handlers fell behind). The heartbeat treats a link we are not
        reading as alive: its silence is ours, not the peer's."""
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            self.last_rx = self.loop.time()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    def retire(self, linger: float) -> None:
        """This link lost the duplicate-link tie-break: say GOODBYE("duplicate") after
        whatever is queued, but keep delivering what the peer sent on it until its own
        GOODBYE (it retires the same link), so nothing in flight is lost. Closed after
        ``linger`` seconds at the latest."""
        self.superseded = True
        if self.state is not LINK_OPEN:
            self.close("duplicate")
            return
        self.write([p.GOODBYE, "duplicate"], now=True)
        self.state = LinkState.CLOSING
        self.retiring = True
        if self._close_reason is None:
            self._close_reason = LeaveReason.SHUTDOWN
        self._stuck_sent = self._bytes_sent()
        self.loop.call_later(linger, self._retire_deadline, linger)

    def _retire_deadline(self, linger: float) -> None:
        """A retired link normally ends when the peer, having read our GOODBYE, hangs
        up. Resetting it earlier would throw away bytes still in flight while the peer
        stays linked - a silent loss - so the deadline moves on while bytes move: we
        received some lately, our handlers hold its reading paused, or the peer takes
        ours. Then: a plain close (the kernel still delivers what it holds), or a reset
        if the peer has not read our last bytes for ``linger`` seconds."""
        t = self.transport
        if t is None or t.is_closing():
            return
        sent = self._bytes_sent()
        if self.reading_paused or self.loop.time() - self.last_rx < linger or sent > self._stuck_sent:
            self._stuck_sent = sent
            self.loop.call_later(linger, self._retire_deadline, linger)
        elif t.get_write_buffer_size() == 0:
            t.close()
        else:
            self.abort(LeaveReason.SHUTDOWN)

    def heartbeat(self, now: float, tick: float, timeout: float) -> None:
        if self.state is not LINK_OPEN:
            return
        if self.paused:
            # our writes are stuck above the high-water mark: a peer that takes none of
            # our bytes for as long as a silent one is tolerated is as good as gone
            sent = self._bytes_sent()
            if sent > self._stuck_sent:
                self._stuck_sent, self._stuck_since = sent, now
            elif now - self._stuck_since >= timeout + tick / 2:
                self.abort(LeaveReason.TIMEOUT, TimeoutError(
                    f"the peer took none of our data for {now - self._stuck_since:.2f} s"), reset=True)
                return
        if self.reading_paused:
            self.last_rx = now
        self._decoder.release_idle()
        action = p.heartbeat_action(now, self.last_rx, self.last_tx, tick, timeout)
        if action == "ping":
            if self._encoder.pending:
                self.write([p.PING], now=True)
            else:
                self._write(_PING_FRAME)
        elif action == "dead":
            self.abort(LeaveReason.TIMEOUT, TimeoutError(f"nothing received for {now - self.last_rx:.2f} s"),
                       reset=True)

    def close(self, goodbye: str = "shutdown", linger: float = 2.0) -> None:
        """Say goodbye and close, losing nothing already queued.

        An open link sends GOODBYE after everything queued, shuts down its sending
        side, and keeps reading until the peer (which closes on GOODBYE) hangs up, at
        most ``linger`` seconds: closing a socket that still holds unread bytes (a ping
        that crossed our GOODBYE) makes the kernel reset the connection and drop what
        it has not sent yet.

        Never raises: it is called from other links' callbacks (a restarted or duplicate
        peer retires its old link), and closing a link whose socket is already dead is
        only bookkeeping."""
        t = self.transport
        # an acceptor still waiting for READY has sent WELCOME: the dialler already
        # treats the link as open (and may be using it), so it gets a GOODBYE too
        if self.state is LINK_OPEN or (
            self.state is LinkState.HANDSHAKE and self.handshake.peer_is_open
        ):
            self.state = LinkState.CLOSING
            if self._close_reason is None:
                self._close_reason = LeaveReason.SHUTDOWN
            self._encoder.add([p.GOODBYE, goodbye])
            if t is not None:
                self.resume_reading()  # drain what is in flight, so no reset is sent
                self._flush()
                if t.is_closing():  # the flush found the socket dead
                    return
                if t.can_write_eof():
                    try:
                        t.write_eof()
                    except OSError as exc:  # reset meanwhile (ENOTCONN): nothing to say goodbye on
                        self.abort(LeaveReason.CONNECTION_LOST, exc)
                        return
                self.loop.call_later(linger, self.abort, LeaveReason.SHUTDOWN)
            return
        if self.state is LinkState.HANDSHAKE:
            self.state = LinkState.CLOSING
            if self._close_reason is None:
                self._close_reason = LeaveReason.SHUTDOWN
        if t is not None:
            self._flush()  # a flush still scheduled would find the transport closing
            t.close()

    def abort(self, reason: LeaveReason, error: BaseException | None = None, *, reset: bool = False) -> None:
        """Drop the connection at once (no flush). Never raises. ``reset`` sends a TCP RST
        instead of a FIN queued behind unacknowledged data, so the other side learns at
        once even when our earlier packets never reached it (a one-way cut)."""
        if self._close_reason is None:
            self._close_reason, self._close_error = reason, _without_frames(error)
        t = self.transport
        if t is not None:
            if reset:
                sock = t.get_extra_info("socket")
                if sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                    except OSError:
                        pass  # already closed: nothing left to reset
            t.abort()

    # -- introspection -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self.peer.name if self.peer else (str(self.endpoint) if self.endpoint else "?")

    @property
    def dialer_key(self) -> tuple[str, bytes]:
        """Identifies the link the same way on both sides: (dialler's name, its nonce).
        The smaller key wins when two links connect the same pair."""
        hs = self.handshake
        dialer = hs.identity.name if self.side is p.Side.DIALER else (self.peer.name if self.peer else "")
        return (dialer, hs.nonce_d)

    def __repr__(self) -> str:
        where = ""
        if self.peer is not None:
            where = f"{self.peer.cluster}/{self.peer.name}@{format_hostport(self.peer.host, self.peer.port)}"
        elif self.endpoint is not None:
            where = str(self.endpoint)
        return f"<Link {where} {self.side.name} {self.state.name} rx={self.rx_bytes} tx={self.tx_bytes}>"
