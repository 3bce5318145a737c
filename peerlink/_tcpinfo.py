"""The kernel's round-trip-time estimate of a TCP connection (Linux ``TCP_INFO``), so a
node can report per-peer RTT without sending a single extra packet. Imports nothing
from peerlink."""

from __future__ import annotations

import socket
import struct
from typing import Any

__all__ = ["tcp_rtt"]

# struct tcp_info (linux/tcp.h): eight one-byte fields, then 32-bit fields; tcpi_rtt
# (smoothed RTT, microseconds) is the 16th of those, at byte offset 68.
_RTT_OFFSET = 68
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def tcp_rtt(transport: Any) -> float | None:
    """Smoothed RTT in seconds of the TCP connection under an asyncio transport, or None
    where the platform does not say (not Linux, closed, not TCP)."""
    if _TCP_INFO is None or transport is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _RTT_OFFSET + 4)
    except OSError:
        return None
    if len(info) < _RTT_OFFSET + 4:
        return None
    (micros,) = struct.unpack_from("I", info, _RTT_OFFSET)
    return float(micros) / 1e6
