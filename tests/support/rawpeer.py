"""A raw peerlink client over asyncio streams, for tests that must misbehave: it runs
the real sans-I/O handshake (so it can authenticate with the cookie) and then writes
whatever bytes the test wants, reading only when the test asks.

    peer = await RawPeer.dial(host, port, cookie=b"k", cluster="t", name="mallory")
    peer.send(p.SEND, "topic", b"body")      # one message, one frame
    peer.write(raw_bytes)                    # anything at all
    msgs = await peer.receive()              # what the node sent (decoded)
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from peerlink import protocol as p

__all__ = ["RawPeer"]


class RawPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = p.FrameDecoder(2**31 - 1, max_items=2**31 - 1, preauth=True)
        self.handshake: p.Handshake | None = None

    @classmethod
    async def connect(cls, host: str, port: int, *, local_host: str | None = None) -> RawPeer:
        """A TCP connection that has said nothing yet."""
        reader, writer = await asyncio.open_connection(
            host, port, local_addr=(local_host, 0) if local_host else None, limit=2**20)
        return cls(reader, writer)

    @classmethod
    async def dial(cls, host: str, port: int, *, cookie: bytes, cluster: str, name: str,
                   timeout: float = 5.0) -> RawPeer:
        """Connect and complete the handshake as a dialler named ``name``."""
        peer = await cls.connect(host, port)
        ident = p.Identity(cluster, name, secrets.token_hex(8), "127.0.0.1", 9, {})
        hs = peer.handshake = p.Handshake(p.Side.DIALER, identity=ident, cookies=[cookie])
        async with asyncio.timeout(timeout):
            while not hs.done:
                for m in hs.take_outgoing():
                    peer.send(*m)
                for m in await peer.receive():
                    hs.receive(m)
                    if hs.peer_proven:
                        peer.decoder.authenticate(2**31 - 1, 2**31 - 1)
            for m in hs.take_outgoing():  # READY
                peer.send(*m)
        return peer

    def send(self, *message: Any) -> None:
        self.writer.write(p.encode_frame(list(message)))

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def receive(self) -> list[Any]:
        """The next decoded messages; [] at EOF."""
        while True:
            data = await self.reader.read(65536)
            if not data:
                return []
            out = self.decoder.feed(data)
            if out:
                return out

    async def closed(self, timeout: float = 5.0) -> bool:
        """Wait until the node hangs up (reading and dropping whatever it sends)."""
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass
        return True

    def close(self) -> None:
        self.writer.close()
