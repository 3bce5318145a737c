"""Link close paths against transports that fail the way real sockets do: a link whose
socket was reset under it (write_eof -> ENOTCONN, write -> EPIPE) closes as bookkeeping
only, and no exception reaches the caller - which may be another link's callback."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest

from peerlink import protocol as p
from peerlink.events import LeaveReason
from peerlink.link import Link, LinkState


class Hooks:
    def __init__(self) -> None:
        self.opened: list[Link] = []
        self.closed: list[tuple[Link, LeaveReason, BaseException | None]] = []

    def link_connected(self, link: Link) -> None:
        pass

    def link_refused(self, link: Link, error: Exception) -> None:
        pass

    def link_opened(self, link: Link) -> None:
        self.opened.append(link)

    def link_closed(self, link: Link, reason: LeaveReason, error: BaseException | None) -> None:
        self.closed.append((link, reason, error))

    def link_messages(self, link: Link, messages: list[Any]) -> None:
        pass


class PipeTransport(asyncio.Transport):
    """One end of an in-memory connection: writes reach ``peer`` on the next loop turn.
    ``fail_write`` / ``fail_write_eof`` make those calls raise like a reset socket."""

    def __init__(self, protocol: Link) -> None:
        super().__init__()
        self.protocol = protocol
        self.peer: PipeTransport | None = None
        self.closing = False
        self.aborted = False
        self.fail_write: OSError | None = None
        self.fail_write_eof: OSError | None = None
        self.loop = asyncio.get_running_loop()

    def write(self, data: Any) -> None:
        if self.fail_write is not None:
            raise self.fail_write
        if self.peer is not None and not self.peer.closing:
            self.loop.call_soon(self.peer.protocol.data_received, bytes(data))

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self.fail_write_eof is not None:
            raise self.fail_write_eof

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def _lose(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.9", 4000)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def make_link(side: p.Side, name: str, hooks: Hooks) -> Link:
    ident = p.Identity("c", name, f"{name}-inc", "127.0.0.1", 4000 + (side is p.Side.ACCEPTOR))
    return Link(side, identity=ident, cookies=[b"k"], hooks=hooks, max_frame=2**20,
                write_buffer_high=2**20, handshake_timeout=5.0)


async def open_pair() -> tuple[Link, PipeTransport, Hooks]:
    """A dialler 'a' linked to an acceptor 'b' through an in-memory pipe; returns a's side."""
    ha, hb = Hooks(), Hooks()
    a, b = make_link(p.Side.DIALER, "a", ha), make_link(p.Side.ACCEPTOR, "b", hb)
    ta, tb = PipeTransport(a), PipeTransport(b)
    ta.peer, tb.peer = tb, ta
    b.connection_made(tb)
    a.connection_made(ta)
    await asyncio.wait_for(a.opened, 5)
    assert a.state is LinkState.OPEN
    return a, ta, ha


@pytest.mark.parametrize("broken", ["write_eof", "write", "both"])
async def test_close_on_a_reset_socket_is_bookkeeping_only(broken: str) -> None:
    link, transport, hooks = await open_pair()
    if broken in ("write_eof", "both"):
        transport.fail_write_eof = OSError(errno.ENOTCONN, "Transport endpoint is not connected")
    if broken in ("write", "both"):
        transport.fail_write = BrokenPipeError(errno.EPIPE, "Broken pipe")
    link.close("restarted")  # must not raise: the caller may be another link's callback
    # dropped at once, reported once, as the close that was asked for
    assert await asyncio.wait_for(link.closed, 5) is LeaveReason.SHUTDOWN
    assert transport.aborted
    assert [(lk, r) for lk, r, _ in hooks.closed] == [(link, LeaveReason.SHUTDOWN)]


async def test_write_on_a_reset_socket_closes_the_link_without_raising() -> None:
    link, transport, hooks = await open_pair()
    transport.fail_write = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    link.write([p.PING], now=True)  # flushes at once: the error stays inside this link
    assert await asyncio.wait_for(link.closed, 5) is LeaveReason.CONNECTION_LOST
    assert len(hooks.closed) == 1


async def test_close_still_says_goodbye_on_a_healthy_socket() -> None:
    link, transport, _ = await open_pair()
    link.close("shutdown")
    assert link.state is LinkState.CLOSING and not transport.aborted
    # the acceptor closes on our GOODBYE; its close reaches us as the end of the pipe
    transport.peer.close()  # type: ignore[union-attr]
    transport.close()
    assert await asyncio.wait_for(link.closed, 5) is LeaveReason.SHUTDOWN
