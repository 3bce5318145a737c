"""Sans-I/O wire protocol: framing, message types and the handshake state machine.

Must not import asyncio, socket, ssl or time: everything here is driven by bytes in
and bytes out, so it can be tested with byte vectors and fuzzed.

Wire format
-----------
A link carries *frames*: a 4-byte big-endian length, then that many bytes holding one or
more msgpack-encoded *messages* back to back (a writer coalesces every message queued
during one event-loop iteration into one frame). A frame never splits a message. The
length is checked against ``max_frame`` before any of the body is buffered.

A message is a msgpack array whose first element is its ``FrameType``::

    HELLO      [0, "peerlink", version_min, version_max, nonce_d]      dialler -> acceptor
    CHALLENGE  [1, nonce_a]                                             acceptor -> dialler
    PROOF      [2, identity_d, mac_d]                                   dialler -> acceptor
    WELCOME    [3, version, identity_a, mac_a]                          acceptor -> dialler
    PING       [4]
    PONG       [5]                        (reserved)
    SEND       [6, topic, body]
    CALL       [7, call_id, topic, body]
    REPLY      [8, call_id, ok, body]     (ok false: body = [error_type, message])
    GOODBYE    [9, reason]
    REFUSE     [10, reason, detail]                                     either side, then close
    READY      [11, mac_r]                                              dialler -> acceptor

``identity`` is the msgpack encoding (bytes) of ``[cluster, name, incarnation, host,
port, metadata]``; MACs cover those exact bytes so nothing is re-encoded before
verification. With ``K`` a cookie and ``H = HMAC-SHA256``::

    mac_d = H(K, pack(["peerlink/dialer",   vmin, vmax, nonce_d, nonce_a]) + identity_d)
    mac_a = H(K, pack(["peerlink/acceptor", version, nonce_d, nonce_a]) + identity_d + identity_a)
    mac_r = H(K, pack(["peerlink/ready",    version, nonce_d, nonce_a]) + identity_d + identity_a)

Fresh 16-byte nonces from both sides stop replay; the direction label stops reflection;
``mac_a`` and ``mac_r`` bind both identities and the chosen version. The acceptor sends
only a nonce until the dialler has proven a cookie.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgpack

from .errors import (
    AuthenticationFailed,
    ClusterMismatch,
    FrameTooLarge,
    HandshakeError,
    MessageTooLarge,
    ProtocolError,
    SelfConnection,
    VersionMismatch,
)

__all__ = [
    "PROTOCOL_VERSION_MAX",
    "PROTOCOL_VERSION_MIN",
    "FrameDecoder",
    "FrameEncoder",
    "FrameType",
    "Handshake",
    "Identity",
    "Side",
    "heartbeat_action",
]

PROTOCOL_VERSION_MIN: Final = 1
PROTOCOL_VERSION_MAX: Final = 1
MAGIC: Final = "peerlink"
NONCE_BYTES: Final = 16
HEADER_BYTES: Final = 4
# A coalesced frame is closed at this size, so one busy sender cannot make a peer
# buffer more than this before it can start decoding.
BATCH_BYTES: Final = 256 * 1024
# Identities are exchanged before the application runs; keep them small.
MAX_IDENTITY_BYTES: Final = 64 * 1024


class FrameType(enum.IntEnum):
    # WARNING: ONLY APPEND. The numeric values are part of the wire protocol.
    HELLO = 0
    CHALLENGE = 1
    PROOF = 2
    WELCOME = 3
    PING = 4
    PONG = 5
    SEND = 6
    CALL = 7
    REPLY = 8
    GOODBYE = 9
    REFUSE = 10
    READY = 11


# plain ints for the hot path (an IntEnum comparison costs a method call)
HELLO, CHALLENGE, PROOF, WELCOME, PING, PONG, SEND, CALL, REPLY, GOODBYE, REFUSE, READY = range(12)


class Side(enum.IntEnum):
    DIALER = 0
    ACCEPTOR = 1


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} is not allowed")


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        raise ProtocolError("a map used as a map key")
    return value


def _decode_with_tuple_keys(frame: bytes) -> list[Any]:
    try:
        return _unpack_all(frame)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed msgpack in frame: {type(exc).__name__}: {exc}") from exc


def _unpack_all(frame: bytes) -> list[Any]:
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=False, ext_hook=_no_ext, max_buffer_size=len(frame) or 1,
        object_pairs_hook=lambda pairs: {_hashable(k): v for k, v in pairs},
    )
    unpacker.feed(frame)
    out = list(unpacker)
    if unpacker.tell() != len(frame):
        raise ProtocolError("frame ends inside a message")
    return out


class FrameDecoder:
    """Bytes in, decoded messages out.

    ``feed(data)`` returns every message completed by ``data`` (in order) and raises
    ``FrameTooLarge`` / ``ProtocolError`` on bad input; after an error the decoder must
    not be used again (the link is closed).
    """

    __slots__ = ("_buf", "_fed", "_unpacker", "max_frame")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._unpacker = self._new_unpacker()
        self._fed = 0

    def _new_unpacker(self) -> Any:
        return msgpack.Unpacker(
            raw=False,
            strict_map_key=False,
            max_buffer_size=self.max_frame,
            # msgpack pre-allocates read_size (default up to 1 MiB); start small, it grows
            read_size=min(self.max_frame, 64 * 1024),
            ext_hook=_no_ext,
        )

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        out: list[Any] = []
        unpacker = self._unpacker
        while n - pos >= HEADER_BYTES:
            size = int.from_bytes(buf[pos:pos + HEADER_BYTES], "big")
            if size > self.max_frame:
                raise FrameTooLarge(size, self.max_frame)
            end = pos + HEADER_BYTES + size
            if end > n:
                break
            if size == 0:
                raise ProtocolError("empty frame")
            frame = buf[pos + HEADER_BYTES:end]
            mark = len(out)
            try:
                unpacker.feed(frame)
                out.extend(unpacker)
            except ProtocolError:
                raise
            except TypeError:
                # an array used as a map key ({(1, 2): x} packs fine but unpacks to an
                # unhashable list): decode this frame again the slow way, keys as tuples
                del out[mark:]
                out.extend(_decode_with_tuple_keys(bytes(frame)))
                unpacker = self._unpacker = self._new_unpacker()
                self._fed = 0
                pos = end
                continue
            except Exception as exc:
                raise ProtocolError(f"malformed msgpack in frame: {type(exc).__name__}: {exc}") from exc
            self._fed += size
            if unpacker.tell() != self._fed:
                raise ProtocolError("frame ends inside a message")
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


class FrameEncoder:
    """Messages in, frames out. ``add()`` packs at once (so a value msgpack cannot carry
    raises ``TypeError`` at the sender and nothing else queued is affected); ``take()``
    returns the coalesced frames to write."""

    __slots__ = ("_frames", "_parts", "_size", "batch", "max_frame", "packb")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.batch = min(BATCH_BYTES, max_frame)
        self._parts: list[bytes] = []
        self._size = 0
        self._frames: list[bytes] = []
        self.packb: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack

    def add(self, message: Any) -> int:
        """Queue one message; returns the bytes now pending. A value msgpack cannot
        carry raises TypeError and queues nothing."""
        try:
            data = self.packb(message)
        except (OverflowError, ValueError) as exc:  # e.g. 2**64, a lone surrogate
            raise TypeError(f"msgpack cannot carry this value: {exc}") from exc
        return self.add_packed(data)

    def add_packed(self, data: bytes) -> int:
        """Queue one already packed message (the link's hot path packs inline)."""
        size = len(data)
        if self._size + size > self.batch:
            if size > self.max_frame:
                raise MessageTooLarge(size, self.max_frame)
            self._close_frame()
        self._parts.append(data)
        self._size += size
        return self._size + len(self._frames) * self.batch

    def _close_frame(self) -> None:
        if self._parts:
            body = b"".join(self._parts)
            self._frames.append(len(body).to_bytes(HEADER_BYTES, "big") + body)
            self._parts.clear()
            self._size = 0

    @property
    def pending(self) -> bool:
        return bool(self._parts or self._frames)

    def take(self) -> list[bytes]:
        self._close_frame()
        frames, self._frames = self._frames, []
        return frames


_SEND_PREFIXES: dict[str, bytes] = {}


def send_prefix(topic: str) -> bytes:
    """The packed bytes that start every SEND message of ``topic`` (array header, type,
    topic): ``send_prefix(t) + packb(body) == packb([SEND, t, body])``. Cached."""
    prefix = _SEND_PREFIXES.get(topic) if topic.__class__ is str else None
    if prefix is None:
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        prefix = b"\x93" + msgpack.packb(SEND) + msgpack.packb(topic, use_bin_type=True)
        if len(_SEND_PREFIXES) < 4096:
            _SEND_PREFIXES[topic] = prefix
    return prefix


def encode_frame(*messages: Any, max_frame: int = 2**31 - 1) -> bytes:
    """One frame holding ``messages`` (tests and tools)."""
    enc = FrameEncoder(max_frame)
    for m in messages:
        enc.add(m)
    return b"".join(enc.take())


# -- identities and the handshake ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a node is, as exchanged in the handshake."""

    cluster: str
    name: str
    incarnation: str
    host: str
    port: int
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        blob: bytes = msgpack.packb(
            [self.cluster, self.name, self.incarnation, self.host, self.port, dict(self.metadata)],
            use_bin_type=True,
        )
        return blob

    @classmethod
    def decode(cls, blob: Any) -> Identity:
        if not isinstance(blob, bytes) or len(blob) > MAX_IDENTITY_BYTES:
            raise ProtocolError("identity must be bytes of at most 64 KiB")
        try:
            fields = msgpack.unpackb(blob, raw=False, strict_map_key=False, ext_hook=_no_ext)
            cluster, name, incarnation, host, port, metadata = fields
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(f"malformed identity: {exc}") from exc
        if not (
            isinstance(cluster, str) and isinstance(name, str) and isinstance(incarnation, str)
            and isinstance(host, str) and isinstance(port, int) and isinstance(metadata, dict)
        ):
            raise ProtocolError("malformed identity: wrong field types")
        return cls(cluster, name, incarnation, host, port, metadata)


def _mac(key: bytes, label: str, head: Sequence[Any], *blobs: bytes) -> bytes:
    h = hmac.new(key, msgpack.packb([label, *head], use_bin_type=True), hashlib.sha256)
    for b in blobs:
        h.update(b)
    return h.digest()


def _any_mac_matches(cookies: Sequence[bytes], mac: Any, label: str, head: Sequence[Any], *blobs: bytes) -> bool:
    if not isinstance(mac, bytes):
        return False
    ok = False
    for key in cookies:  # check every cookie: no early exit, no timing hint of which one
        ok |= hmac.compare_digest(_mac(key, label, head, *blobs), mac)
    return ok


_REFUSALS: dict[str, type[HandshakeError]] = {
    AuthenticationFailed.reason: AuthenticationFailed,
    SelfConnection.reason: SelfConnection,
}


class Handshake:
    """The mutual challenge-response handshake of one link, as a state machine.

    Feed it each decoded message with ``receive()``; after every call send what
    ``take_outgoing()`` returns. When ``done`` is true the link is open, ``peer`` is the
    authenticated peer and ``version`` the negotiated protocol version. A refusal raises
    a ``HandshakeError`` subclass (after queueing a REFUSE for the other side, where
    saying why is safe); malformed input raises ``ProtocolError``.

    ``peer`` is set on the acceptor as soon as the dialler's proof checks out (before
    ``done``), which lets the membership manager see a link that is about to open.
    """

    def __init__(
        self,
        side: Side,
        *,
        identity: Identity,
        cookies: Sequence[bytes],
        versions: tuple[int, int] = (PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX),
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if not cookies:
            raise ValueError("at least one cookie is required")
        self.side = side
        self.identity = identity
        self._blob = identity.encode()
        self.cookies = tuple(cookies)
        self.versions = versions
        self._token_bytes = token_bytes
        self._outgoing: list[Any] = []
        self._state = "start"
        self.nonce_d = b""
        self.nonce_a = b""
        self._peer_blob = b""
        self._peer_versions = (0, 0)
        self.version = 0
        self.peer: Identity | None = None
        self.done = False
        if side is Side.DIALER:
            self.nonce_d = token_bytes(NONCE_BYTES)
            self._outgoing.append([HELLO, MAGIC, versions[0], versions[1], self.nonce_d])
            self._state = "await_challenge"
        else:
            self._state = "await_hello"

    @property
    def peer_is_open(self) -> bool:
        """True once the other side considers the link open: the dialler after our
        WELCOME (we still wait for its READY), or both after the handshake."""
        return self.done or self._state == "await_ready"

    def take_outgoing(self) -> list[Any]:
        out, self._outgoing = self._outgoing, []
        return out

    def _refuse(self, exc: HandshakeError, detail: Any = None) -> HandshakeError:
        self._outgoing.append([REFUSE, exc.reason, detail])
        self._state = "failed"
        return exc

    def receive(self, msg: Any) -> None:
        if not isinstance(msg, list) or not msg or not isinstance(msg[0], int):
            raise ProtocolError("handshake message is not a typed array")
        kind = msg[0]
        if kind == REFUSE:
            self._state = "failed"
            self._raise_refusal(msg)
        handler = getattr(self, "_on_" + self._state, None)
        if handler is None:
            raise ProtocolError(f"unexpected message type {kind} in handshake state {self._state}")
        try:
            handler(kind, msg)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"malformed handshake message: {exc}") from exc

    def _raise_refusal(self, msg: list[Any]) -> None:
        reason = msg[1] if len(msg) > 1 else None
        detail = msg[2] if len(msg) > 2 else None
        if reason == ClusterMismatch.reason:
            raise ClusterMismatch(self.identity.cluster, str(detail))
        if reason == VersionMismatch.reason and isinstance(detail, list) and len(detail) == 2:
            raise VersionMismatch(self.versions, (int(detail[0]), int(detail[1])))
        cls = _REFUSALS.get(str(reason))
        if cls is not None:
            raise cls(f"refused by peer: {reason}")
        err = HandshakeError(f"refused by peer: {reason}" + (f" ({detail})" if detail else ""))
        err.reason = str(reason)
        raise err

    def _expect(self, kind: int, want: int, n: int, msg: list[Any]) -> None:
        if kind != want or len(msg) != n:
            raise ProtocolError(
                f"expected {FrameType(want).name} in handshake, got type {kind} with {len(msg)} fields"
            )

    # acceptor -------------------------------------------------------------------
    def _on_await_hello(self, kind: int, msg: list[Any]) -> None:
        self._expect(kind, HELLO, 5, msg)
        _, magic, vmin, vmax, nonce_d = msg
        if magic != MAGIC or not isinstance(nonce_d, bytes) or len(nonce_d) != NONCE_BYTES:
            raise ProtocolError("not a peerlink HELLO")
        if not (isinstance(vmin, int) and isinstance(vmax, int)):
            raise ProtocolError("HELLO versions must be integers")
        self._peer_versions = (vmin, vmax)
        self.nonce_d = nonce_d
        self.nonce_a = self._token_bytes(NONCE_BYTES)
        self._outgoing.append([CHALLENGE, self.nonce_a])
        self._state = "await_proof"

    def _on_await_proof(self, kind: int, msg: list[Any]) -> None:
        self._expect(kind, PROOF, 3, msg)
        _, blob, mac = msg
        vmin, vmax = self._peer_versions
        if not isinstance(blob, bytes) or not _any_mac_matches(
            self.cookies, mac, "peerlink/dialer", [vmin, vmax, self.nonce_d, self.nonce_a], blob
        ):
            raise self._refuse(AuthenticationFailed("the dialler did not prove a cookie we accept"))
        peer = Identity.decode(blob)
        if peer.cluster != self.identity.cluster:
            raise self._refuse(ClusterMismatch(self.identity.cluster, peer.cluster), self.identity.cluster)
        version = min(vmax, self.versions[1])
        if version < max(vmin, self.versions[0]):
            raise self._refuse(VersionMismatch(self.versions, (vmin, vmax)), list(self.versions))
        if peer.name == self.identity.name and peer.incarnation == self.identity.incarnation:
            raise self._refuse(SelfConnection("the dialler is this node itself"))
        self.version = version
        self._peer_blob = blob
        self.peer = peer
        mac_a = _mac(self.cookies[0], "peerlink/acceptor", [version, self.nonce_d, self.nonce_a], blob, self._blob)
        self._outgoing.append([WELCOME, version, self._blob, mac_a])
        self._state = "await_ready"

    def _on_await_ready(self, kind: int, msg: list[Any]) -> None:
        self._expect(kind, READY, 2, msg)
        if not _any_mac_matches(
            self.cookies, msg[1], "peerlink/ready", [self.version, self.nonce_d, self.nonce_a],
            self._peer_blob, self._blob,
        ):
            raise self._refuse(AuthenticationFailed("the dialler's confirmation does not verify"))
        self._state = "open"
        self.done = True

    # dialler --------------------------------------------------------------------
    def _on_await_challenge(self, kind: int, msg: list[Any]) -> None:
        self._expect(kind, CHALLENGE, 2, msg)
        nonce_a = msg[1]
        if not isinstance(nonce_a, bytes) or len(nonce_a) != NONCE_BYTES:
            raise ProtocolError("CHALLENGE nonce must be 16 bytes")
        if nonce_a == self.nonce_d:
            raise ProtocolError("CHALLENGE reflects our own nonce")
        self.nonce_a = nonce_a
        vmin, vmax = self.versions
        mac_d = _mac(self.cookies[0], "peerlink/dialer", [vmin, vmax, self.nonce_d, nonce_a], self._blob)
        self._outgoing.append([PROOF, self._blob, mac_d])
        self._state = "await_welcome"

    def _on_await_welcome(self, kind: int, msg: list[Any]) -> None:
        self._expect(kind, WELCOME, 4, msg)
        _, version, blob, mac_a = msg
        if not isinstance(version, int) or not isinstance(blob, bytes):
            raise ProtocolError("malformed WELCOME")
        if not _any_mac_matches(
            self.cookies, mac_a, "peerlink/acceptor", [version, self.nonce_d, self.nonce_a], self._blob, blob
        ):
            self._state = "failed"
            raise AuthenticationFailed("the acceptor did not prove a cookie we accept")
        if not self.versions[0] <= version <= self.versions[1]:
            self._state = "failed"
            raise VersionMismatch(self.versions, (version, version))
        peer = Identity.decode(blob)
        if peer.cluster != self.identity.cluster:
            self._state = "failed"
            raise ClusterMismatch(self.identity.cluster, peer.cluster)
        if peer.name == self.identity.name and peer.incarnation == self.identity.incarnation:
            self._state = "failed"
            raise SelfConnection("the acceptor is this node itself")
        self.version = version
        self.peer = peer
        mac_r = _mac(self.cookies[0], "peerlink/ready", [version, self.nonce_d, self.nonce_a], self._blob, blob)
        self._outgoing.append([READY, mac_r])
        self._state = "open"
        self.done = True


def heartbeat_action(
    now: float, last_rx: float, last_tx: float, tick: float, timeout: float
) -> Literal["ping", "dead"] | None:
    """What a link should do at a heartbeat instant (one every ``tick``, aligned across
    the cluster to multiples of ``tick`` on the wall clock).

    * ``"dead"`` when nothing arrived for ``timeout + tick/2``: an idle peer pings at
      every instant, so its last ping is at most one tick old when it falls silent; the
      half tick absorbs clock and scheduling skew between nodes. The peer is thus
      reported between ``timeout`` and ``timeout + tick`` after it fell silent.
    * ``"ping"`` when we sent nothing for half a tick (a busy link needs no pings).
    """
    if now - last_rx >= timeout + tick / 2:
        return "dead"
    if now - last_tx >= tick / 2:
        return "ping"
    return None
