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
import struct
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
    SimultaneousDial,
    VersionMismatch,
)

__all__ = [
    "PROTOCOL_VERSION_MAX",
    "PROTOCOL_VERSION_MIN",
    "FrameDecoder",
    "FrameEncoder",
    "FrameType",
    "Handshake",
    "HandshakeState",
    "Identity",
    "Side",
    "heartbeat_action",
]

PROTOCOL_VERSION_MIN: Final = 1
PROTOCOL_VERSION_MAX: Final = 1
MAGIC: Final = "peerlink"
NONCE_BYTES: Final = 16
MAC_BYTES: Final = 32
HEADER_BYTES: Final = 4
# A coalesced frame is closed at this size, so one busy sender cannot make a peer
# buffer more than this before it can start decoding.
BATCH_BYTES: Final = 256 * 1024

# -- the resource budget (docs/security.md) ---------------------------------------------
# Every cap on what a remote party can make us hold is here, with its reason.
#
# Before the other side has proven the cookie, a frame carries exactly one handshake
# message: the largest is a PROOF or WELCOME holding an identity, so 16 KiB is ample,
# and a header announcing more closes the connection before any body byte is buffered.
PREAUTH_MAX_FRAME: Final = 16 * 1024
# Identities (cluster, name, incarnation, host, port, metadata) are exchanged before the
# application runs; Config keeps metadata small enough that they fit.
MAX_IDENTITY_BYTES: Final = 8 * 1024
MAX_NAME_CHARS: Final = 255  # cluster, node name, incarnation, host
# Handshake messages are arrays of at most 5 values, no maps; a string is a magic word,
# a refusal reason or a cluster name (<= 255 chars of UTF-8); bin is a nonce, a MAC or
# an identity. Decoding a pre-auth frame therefore costs a handful of small objects.
_PREAUTH_LIMITS: Final[dict[str, int]] = dict(
    max_str_len=4 * MAX_NAME_CHARS, max_bin_len=MAX_IDENTITY_BYTES, max_array_len=5,
    max_map_len=0, max_ext_len=0,
)
# After authentication: a frame decodes to at most this many msgpack values (the
# elements of every array and map in it). An empty array is one byte on the wire but a
# 56-byte list in memory (an empty map: 64 bytes), so without a count a legal 8 MiB
# frame could cost over 500 MB; with it, a bounded amount (docs/security.md).
DEFAULT_MAX_MESSAGE_ITEMS: Final = 256 * 1024
# Remote strings (refusal reasons, topics, error texts) in logs and error messages.
MAX_LOGGED_CHARS: Final = 100


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


def shorten(value: Any, limit: int = MAX_LOGGED_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters: how remote strings appear in logs and
    error messages. Only str, bytes, int, float, bool and None are rendered; anything else
    by its type name (rendering a deep list could recurse or run long)."""
    if value is None or isinstance(value, bool | int | float):
        text = repr(value)
    elif isinstance(value, str | bytes):
        text = repr(value[: limit + 1])
    else:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


_unpack_header = struct.Struct(">I").unpack_from  # a frame's length, read without a slice
_NIL = b"\xc0"  # msgpack's nil: a one-byte message (see FrameDecoder._stream)


def _unpack_error(exc: Exception) -> ProtocolError:
    if isinstance(exc, (msgpack.OutOfData, msgpack.BufferFull)):  # (BufferFull: a message
        return ProtocolError("frame ends inside a message")  # cut short may fill a frame)
    if isinstance(exc, TypeError):  # unhashable: an array used as a map key
        return ProtocolError(f"malformed msgpack in frame: a map key must be a scalar ({exc})")
    if "max_ext_len" in str(exc):
        return ProtocolError("msgpack extension types (timestamps included) are not allowed")
    return ProtocolError(f"malformed msgpack in frame: {type(exc).__name__}: {shorten(str(exc))}")


class _ItemCounter:
    """msgpack hooks that count the values a decode builds and stop it past a budget.

    Used only for frames big enough to exceed the budget (a frame of n bytes holds at
    most n values), so the hot path of small frames pays nothing for it."""

    __slots__ = ("budget", "count")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.count = 0

    # each container counts itself and its elements (an element that is a container
    # is counted twice: a bound, not an exact figure)
    def list_hook(self, items: list[Any]) -> list[Any]:
        self.count += len(items) + 1
        if self.count > self.budget:
            raise ProtocolError(f"frame decodes to more than {self.budget} values")
        return items

    def pairs_hook(self, pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        self.count += 2 * len(pairs) + 1
        if self.count > self.budget:
            raise ProtocolError(f"frame decodes to more than {self.budget} values")
        return dict(pairs)


def _unpacker(max_bytes: int, max_items: int, **hooks: Any) -> Any:
    return msgpack.Unpacker(
        raw=False, strict_map_key=False, max_buffer_size=max_bytes,
        # msgpack allocates read_size up front; it grows on demand up to max_bytes
        read_size=min(max_bytes, 16 * 1024),
        max_str_len=max_bytes, max_bin_len=max_bytes, max_array_len=max_items,
        max_map_len=max_items, max_ext_len=0, **hooks,
    )


def _decode_counted(data: bytes | bytearray | memoryview, max_items: int) -> Any:
    """The one message in ``data``, decoded in place (no copy into an unpacker buffer)
    while counting values; a large frame holds exactly one message."""
    counter = _ItemCounter(max_items)
    size = len(data)
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, max_str_len=size, max_bin_len=size,
            max_array_len=max_items, max_map_len=max_items, max_ext_len=0,
            list_hook=counter.list_hook, object_pairs_hook=counter.pairs_hook)
    except msgpack.ExtraData:
        raise ProtocolError("a frame over the small-frame size holds more than one message") from None


def count_items(packed: bytes | bytearray | memoryview, max_items: int) -> None:
    """Raise ``ProtocolError`` if ``packed`` (one msgpack value) decodes to more than
    ``max_items`` values, or not at all; a sender checks a large message with it."""
    if len(packed) <= max_items:
        return  # every value takes at least one byte
    try:
        _decode_counted(packed, max_items)
    except ProtocolError:
        raise
    except Exception as exc:
        raise _unpack_error(exc) from exc


class FrameDecoder:
    """Bytes in, decoded messages out, within a stated budget.

    ``feed(data)`` returns every message completed by ``data`` (in order) and raises
    only ``FrameTooLarge`` / ``ProtocolError`` on bad input; after an error the decoder
    must not be used again (the link is closed). ``decoded_bytes`` is the size of the
    frames the last ``feed`` completed.

    A decoder made with ``preauth=True`` is *unauthenticated*: frames are at most
    ``PREAUTH_MAX_FRAME`` bytes, each holds exactly one small message decoded with tight
    msgpack limits, and ``feed`` returns at most one message per call (``feed(b"")``
    gives the next): the handshake must see each message before the next frame is
    decoded, because the limits change the moment the peer proves the cookie
    (``authenticate()``).

    Authenticated frames are at most ``max_frame`` bytes and decode to at most
    ``max_items`` values: frames of at most ``max_items`` bytes cannot exceed that (every
    value takes a byte) and go through one streaming unpacker at full speed; a bigger
    frame holds exactly one message (a sender closes a frame at ``BATCH_BYTES``, so only
    a single large message makes one) and is decoded in place with counting hooks. Map
    keys must be scalars (an array key is a protocol error, not a second, slower decode)
    and msgpack extension types, timestamps included, are refused.
    """

    __slots__ = ("_buf", "_fed", "_small", "_unpacker", "_used", "decoded_bytes", "max_frame",
                 "max_items", "preauth")

    def __init__(self, max_frame: int, *, max_items: int = DEFAULT_MAX_MESSAGE_ITEMS,
                 preauth: bool = False) -> None:
        self.preauth = preauth
        self.max_frame = min(max_frame, PREAUTH_MAX_FRAME) if preauth else max_frame
        self.max_items = max_items
        self._small = min(max_items, self.max_frame)  # frames decoded without counting
        self._buf = bytearray()
        # the streaming unpacker for small frames: made on first use and dropped again by
        # release_idle() - msgpack's Unpacker embeds a 1024-level parse stack (40 KiB)
        # whatever its buffer size, which an idle link should not hold
        self._unpacker: Any = None
        self._fed = 0  # bytes fed to it (what its tell() counts)
        self._used = False
        self.decoded_bytes = 0

    def authenticate(self, max_frame: int, max_items: int = DEFAULT_MAX_MESSAGE_ITEMS) -> None:
        """The peer proved the cookie: from the next frame on, authenticated limits."""
        self.preauth = False
        self.max_frame = max_frame
        self.max_items = max_items
        self._small = min(max_items, max_frame)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        try:
            unpacker = self._unpacker
            if unpacker is not None and not self._buf:
                # the usual chunk of a busy link at one request in flight: exactly one
                # small frame, nothing buffered before it (the loop below, unrolled:
                # half the bytecodes per frame)
                n = len(data)
                if n > HEADER_BYTES and _unpack_header(data, 0)[0] == n - HEADER_BYTES <= self._small:
                    self._used = True
                    self.decoded_bytes = n
                    # _stream, inlined for the message that ends its frame
                    unpacker.feed(memoryview(data)[HEADER_BYTES:])
                    fed = self._fed = self._fed + n - HEADER_BYTES
                    out = [unpacker.unpack()]
                    if unpacker.tell() != fed:
                        self._rest(unpacker, out)
                    return out
            return self._feed_frames(data)
        except ProtocolError:
            raise
        except Exception as exc:  # msgpack's ValueError/TypeError/StackError/ExtraData...
            raise _unpack_error(exc) from exc

    def _feed_frames(self, data: bytes | bytearray | memoryview) -> list[Any]:
        buf = self._buf
        if buf:
            if data:
                buf += data
            src: bytes | bytearray | memoryview = buf
        else:
            src = data  # the usual case: frames are decoded straight from the chunk
        n = len(src)
        pos = 0
        out: list[Any] = []
        max_frame = self.max_frame
        with memoryview(src) as view:  # released before buf is resized
            while n - pos >= HEADER_BYTES:
                (size,) = _unpack_header(view, pos)
                if size > max_frame:
                    raise FrameTooLarge(size, max_frame)
                end = pos + HEADER_BYTES + size
                if end > n:
                    break
                if not size:
                    raise ProtocolError("empty frame")
                # (each slice of view is passed on, never kept: view must be released
                # before buf is resized)
                start, pos = pos + HEADER_BYTES, end
                if self.preauth:
                    out.append(msgpack.unpackb(view[start:end], raw=False, strict_map_key=True,
                                               **_PREAUTH_LIMITS))
                    break  # one at a time: the handshake decides the next frame's limits
                if size > self._small:
                    out.append(_decode_counted(view[start:end], self.max_items))
                else:
                    self._decode_small(view[start:end], size, out)
        self.decoded_bytes = pos
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < n:
            buf += src[pos:]  # a partial frame waits for the next chunk
        return out

    def _decode_small(self, body: memoryview, size: int, out: list[Any]) -> None:
        """The messages of a frame of at most ``max_items`` bytes (it cannot hold more
        values than that), appended to ``out``."""
        unpacker = self._unpacker
        if unpacker is None:
            if not self._used:
                # an idle link's first frame in a tick (a READY, a lone call or control
                # message) is decoded in place: no 40 KiB unpacker unless it holds
                # several messages, or more frames follow
                self._used = True
                try:
                    out.append(msgpack.unpackb(
                        body, raw=False, strict_map_key=False, max_str_len=size, max_bin_len=size,
                        max_array_len=self.max_items, max_map_len=self.max_items, max_ext_len=0))
                    return
                except msgpack.ExtraData:
                    pass  # several messages: the streaming unpacker decodes them
                except ValueError as exc:
                    if "incomplete" in str(exc):
                        raise ProtocolError("frame ends inside a message") from None
                    raise
            unpacker = self._unpacker = _unpacker(self._small, self.max_items)
            self._fed = 0
        self._used = True
        self._stream(unpacker, body, out)

    def _stream(self, unpacker: Any, body: memoryview, out: list[Any]) -> None:
        """The messages of one small frame, through the streaming unpacker. A frame must
        end on a message boundary (a message must not grow across frames), but the
        unpacker keeps a message cut short for the next feed instead of failing."""
        unpacker.feed(body)
        fed = self._fed = self._fed + len(body)
        out.append(unpacker.unpack())  # a frame holds one message or more
        if unpacker.tell() != fed:  # (equal: one, and it ends the frame - a request's, a reply's)
            self._rest(unpacker, out)

    def _rest(self, unpacker: Any, out: list[Any]) -> None:
        """The messages of a frame after its first, in a loop in C (a batch holds
        thousands); ProtocolError if the last of them is cut short. (Like every decode,
        it runs inside ``feed``, which turns msgpack's errors into ProtocolError.)"""
        out.extend(unpacker)
        # tell() counts the bytes of a message cut short too, so a lone nil - one byte,
        # a message of its own - goes in after them: decoded as None, it shows nothing
        # was pending; swallowed into a pending message, or not enough to end it, it
        # shows the frame cut one short
        unpacker.feed(_NIL)
        self._fed += 1
        if unpacker.unpack() is not None:
            raise ProtocolError("frame ends inside a message")

    def release_idle(self) -> None:
        """Drop the streaming unpacker if no frame needed it since the last call (a
        link calls this every heartbeat tick): busy links keep it, idle ones free it."""
        if not self._used:
            self._unpacker = None
        self._used = False

    @property
    def buffered(self) -> int:
        return len(self._buf)


def _has_tuple_key(value: Any) -> bool:
    """True if a dict anywhere in ``value`` has a tuple key (walks lists, tuples, dicts)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, item in v.items():
                if isinstance(k, tuple):
                    return True
                stack.append(item)
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return False


class FrameEncoder:
    """Messages in, frames out. ``add()`` packs at once (so a value msgpack cannot carry
    raises ``TypeError`` at the sender and nothing else queued is affected); ``take()``
    returns the coalesced frames to write.

    What the receiver would refuse is refused here first, before anything is queued:
    ``TypeError`` for a tuple used as a map key (it would arrive as an array key) and
    ``MessageTooLarge`` for a message over ``max_frame`` bytes or ``max_items`` values.
    Packing uses exact types: a tuple, a subclass of a scalar or container (an IntEnum, a
    StrEnum, an OrderedDict...) goes through ``_carry``, which converts it; the fast path
    for plain values is unchanged."""

    __slots__ = ("_frames", "batch", "max_frame", "max_items", "packb", "parts", "saw_tuple", "size")

    def __init__(self, max_frame: int, max_items: int = DEFAULT_MAX_MESSAGE_ITEMS) -> None:
        self.max_frame = max_frame
        self.max_items = max_items
        # a frame no bigger than max_items bytes cannot hold more values than that, so
        # the receiver decodes it without counting
        self.batch = min(BATCH_BYTES, max_frame, max_items)
        # the frame being filled: its header (set when it is closed, so the frame is
        # built by one join, not a join and a copy), its messages and their size;
        # Link.send_nowait appends to them directly (no method call per message)
        self.parts: list[bytes] = [b""]
        self.size = 0
        self._frames: list[bytes] = []
        self.saw_tuple = False
        self.packb: Callable[[Any], bytes] = msgpack.Packer(
            use_bin_type=True, strict_types=True, default=self._carry).pack

    def _carry(self, value: Any) -> Any:
        if isinstance(value, tuple):
            self.saw_tuple = True  # maybe a map key: pack() then checks the message
            return list(value)
        # subclasses, as the plain value: a StrEnum member as its str (str() might
        # give "Color.RED"), an IntEnum as its int, an OrderedDict as a dict
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, bytes):
            return bytes(value)
        if isinstance(value, list):
            return list(value)
        if isinstance(value, dict):
            return dict(value)
        raise TypeError(f"msgpack cannot carry {type(value).__name__}")

    def pack(self, message: Any) -> bytes:
        """``message`` packed, or TypeError (nothing else is affected)."""
        try:
            data = self.packb(message)
        except (OverflowError, ValueError) as exc:  # e.g. 2**64, a lone surrogate, depth
            raise TypeError(f"msgpack cannot carry this value: {exc}") from exc
        if self.saw_tuple:
            self.refuse_tuple_keys(message)
        return data

    def refuse_tuple_keys(self, message: Any) -> None:
        """After packing something that held a tuple: TypeError if one was a map key."""
        self.saw_tuple = False
        if _has_tuple_key(message):
            raise TypeError("a map key must be a str, bytes, int, float, bool or None, not a tuple")

    def add(self, message: Any) -> int:
        """Queue one message; returns the bytes now pending. A value msgpack cannot
        carry raises TypeError and queues nothing."""
        return self.add_packed(self.pack(message))

    def add_packed(self, data: bytes) -> int:
        """Queue one already packed message (the link's hot path packs inline)."""
        size = len(data)
        if self.size + size > self.batch:
            if size > self.batch:
                self.check_large(data)
            self._close_frame()
        self.parts.append(data)
        self.size += size
        return self.size + len(self._frames) * self.batch

    def check_large(self, data: bytes) -> None:
        """MessageTooLarge unless the receiver would accept ``data`` as one frame."""
        if len(data) > self.max_frame:
            raise MessageTooLarge(len(data), self.max_frame)
        try:
            count_items(data, self.max_items)
        except ProtocolError:
            raise MessageTooLarge(len(data), self.max_items, unit="values", option="max_message_items") from None

    def _close_frame(self) -> None:
        if self.size:
            self._frames.append(self.take_frame())

    def take_frame(self) -> bytes:
        """The frame being filled, closed and taken (``take()`` without the list, for a
        caller that knows no closed frame waits: a link writes those at once)."""
        parts = self.parts
        parts[0] = self.size.to_bytes(HEADER_BYTES, "big")
        frame = b"".join(parts)
        parts.clear()
        parts.append(b"")
        self.size = 0
        return frame

    @property
    def pending(self) -> bool:
        return bool(self.size or self._frames)

    @property
    def pending_bytes(self) -> int:
        return self.size + sum(map(len, self._frames))

    def take(self) -> list[bytes]:
        self._close_frame()
        frames, self._frames = self._frames, []
        return frames


SEND_PREFIXES: dict[str, bytes] = {}
"""Cache of ``send_prefix`` results (at most 4096 topics); links read it directly."""


def send_prefix(topic: str) -> bytes:
    """The packed bytes that start every SEND message of ``topic`` (array header, type,
    topic): ``send_prefix(t) + packb(body) == packb([SEND, t, body])``. Cached."""
    prefix = SEND_PREFIXES.get(topic) if topic.__class__ is str else None
    if prefix is None:
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        prefix = b"\x93" + msgpack.packb(SEND) + msgpack.packb(topic, use_bin_type=True)
        if len(SEND_PREFIXES) < 4096:
            SEND_PREFIXES[topic] = prefix
    return prefix


def encode_frame(*messages: Any, max_frame: int = 2**31 - 1) -> bytes:
    """One frame holding ``messages`` (tests and tools)."""
    enc = FrameEncoder(max_frame, max_items=2**31 - 1)
    for m in messages:
        enc.add(m)
    return b"".join(enc.take())


PING_FRAME: Final = encode_frame([PING])
"""The frame an idle link sends every tick (and most often receives): built once."""


# -- identities and the handshake ------------------------------------------------------


def _is_int(value: Any, low: int, high: int) -> bool:
    """An int (not a bool) in [low, high]."""
    return type(value) is int and low <= value <= high


def _is_name(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_NAME_CHARS


def _is_bin(value: Any, size: int) -> bool:
    return type(value) is bytes and len(value) == size


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
        """Parse an identity blob; ``ProtocolError`` unless every field has its exact type
        and size (names 1..255 characters, port 1..65535, metadata a map)."""
        if type(blob) is not bytes or len(blob) > MAX_IDENTITY_BYTES:
            raise ProtocolError(f"identity must be bytes of at most {MAX_IDENTITY_BYTES} bytes")
        try:
            fields = msgpack.unpackb(blob, raw=False, strict_map_key=False, max_ext_len=0)
        except Exception as exc:  # msgpack's ValueError, TypeError (array key), StackError...
            raise _unpack_error(exc) from exc
        if type(fields) is not list or len(fields) != 6:
            raise ProtocolError("malformed identity: expected 6 fields")
        cluster, name, incarnation, host, port, metadata = fields
        if not (_is_name(cluster) and _is_name(name) and _is_name(incarnation) and _is_name(host)
                and _is_int(port, 1, 65535) and type(metadata) is dict):
            raise ProtocolError("malformed identity: wrong field types or sizes")
        return cls(cluster, name, incarnation, host, port, metadata)


def _mac(key: bytes, label: str, head: Sequence[Any], *blobs: bytes) -> bytes:
    h = hmac.new(key, msgpack.packb([label, *head], use_bin_type=True), hashlib.sha256)
    for b in blobs:
        h.update(b)
    return h.digest()


def _any_mac_matches(cookies: Sequence[bytes], mac: Any, label: str, head: Sequence[Any], *blobs: bytes) -> bool:
    if not _is_bin(mac, MAC_BYTES):
        return False
    ok = False
    for key in cookies:  # check every cookie: no early exit, no timing hint of which one
        ok |= hmac.compare_digest(_mac(key, label, head, *blobs), mac)
    return ok


class HandshakeState(enum.Enum):
    AWAIT_HELLO = "await_hello"  # acceptor
    AWAIT_CHALLENGE = "await_challenge"  # dialler
    AWAIT_PROOF = "await_proof"  # acceptor
    AWAIT_WELCOME = "await_welcome"  # dialler
    AWAIT_READY = "await_ready"  # acceptor: the dialler proved the cookie and considers the link open
    OPEN = "open"
    FAILED = "failed"


def _refusal(msg: list[Any], cluster: str, versions: tuple[int, int]) -> HandshakeError:
    """The error a REFUSE stands for. Its words are the other side's, unauthenticated:
    checked strictly, shortened, and marked ``by_peer``."""
    if len(msg) != 3 or type(msg[1]) is not str:
        raise ProtocolError("malformed REFUSE")
    _, reason, detail = msg
    err: HandshakeError
    if reason == ClusterMismatch.reason and type(detail) is str:
        err = ClusterMismatch(cluster, detail[:MAX_LOGGED_CHARS])
    elif (reason == VersionMismatch.reason and type(detail) is list and len(detail) == 2
          and _is_int(detail[0], 0, 0xFFFF) and _is_int(detail[1], 0, 0xFFFF)):
        err = VersionMismatch(versions, (detail[0], detail[1]))
    elif reason == AuthenticationFailed.reason:
        err = AuthenticationFailed("refused by peer: it does not accept our cookie")
    elif reason == SelfConnection.reason:
        err = SelfConnection("refused by peer: it says it is this node")
    elif reason == SimultaneousDial.reason:
        err = SimultaneousDial("refused by peer: it is dialling us too, and its link is kept")
    else:
        err = HandshakeError(f"refused by peer: {shorten(reason)}")
        err.reason = "refused"
    err.by_peer = True
    return err


class Handshake:
    """The mutual challenge-response handshake of one link, as a state machine.

    Feed it each decoded message with ``receive()``; after every call send what
    ``take_outgoing()`` returns. When ``done`` is true the link is open, ``peer`` is the
    authenticated peer and ``version`` the negotiated protocol version. A refusal raises
    a ``HandshakeError`` subclass (after queueing a REFUSE for the other side, where
    saying why is safe); malformed input raises ``ProtocolError``. Nothing else leaves
    ``receive()``, whatever the input: every field is checked for its exact type and size
    before use (a bool is not an int).

    ``peer`` is set on the acceptor as soon as the dialler's proof checks out (before
    ``done``), which lets the membership manager see a link that is about to open.
    An acceptor's ``admit(peer)``, called then, may refuse the authenticated dialler with
    a ``HandshakeError`` it returns, before WELCOME reveals anything of ours.
    """

    def __init__(
        self,
        side: Side,
        *,
        identity: Identity,
        cookies: Sequence[bytes],
        versions: tuple[int, int] = (PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX),
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
        admit: Callable[[Identity], HandshakeError | None] | None = None,
    ) -> None:
        if not cookies:
            raise ValueError("at least one cookie is required")
        self._admit = admit
        self.side = side
        self.identity = identity
        self._blob = identity.encode()
        self.cookies = tuple(cookies)
        self.versions = versions
        self._token_bytes = token_bytes
        self._outgoing: list[Any] = []
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
            self.state = HandshakeState.AWAIT_CHALLENGE
        else:
            self.state = HandshakeState.AWAIT_HELLO
        self._handlers: dict[HandshakeState, Callable[[int, list[Any]], None]] = {
            HandshakeState.AWAIT_HELLO: self._on_await_hello,
            HandshakeState.AWAIT_PROOF: self._on_await_proof,
            HandshakeState.AWAIT_READY: self._on_await_ready,
            HandshakeState.AWAIT_CHALLENGE: self._on_await_challenge,
            HandshakeState.AWAIT_WELCOME: self._on_await_welcome,
        }

    @property
    def peer_is_open(self) -> bool:
        """True once the other side considers the link open: the dialler after our
        WELCOME (we still wait for its READY), or both after the handshake."""
        return self.done or self.state is HandshakeState.AWAIT_READY

    @property
    def peer_proven(self) -> bool:
        """True once the other side has proven a cookie we accept: from then on it is
        authenticated (larger frames, no more pre-auth limits)."""
        return self.done or self.state is HandshakeState.AWAIT_READY

    def take_outgoing(self) -> list[Any]:
        out, self._outgoing = self._outgoing, []
        return out

    def _refuse(self, exc: HandshakeError, detail: Any = None) -> HandshakeError:
        self._outgoing.append([REFUSE, exc.reason, detail])
        self.state = HandshakeState.FAILED
        return exc

    def receive(self, msg: Any) -> None:
        if type(msg) is not list or not msg or type(msg[0]) is not int:
            raise ProtocolError("handshake message is not a typed array")
        kind = msg[0]
        if kind == REFUSE:
            self.state = HandshakeState.FAILED
            raise _refusal(msg, self.identity.cluster, self.versions)
        handler = self._handlers.get(self.state)
        if handler is None:
            raise ProtocolError(f"unexpected message type {shorten(kind)} in handshake state {self.state.value}")
        try:
            handler(kind, msg)
        except (ProtocolError, HandshakeError):
            self.state = HandshakeState.FAILED
            raise
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, RecursionError) as exc:
            self.state = HandshakeState.FAILED  # a check we missed: still a documented error
            raise ProtocolError(f"malformed handshake message: {type(exc).__name__}") from exc

    def _expect(self, kind: int, want: int, n: int, msg: list[Any]) -> None:
        if kind != want or len(msg) != n:
            raise ProtocolError(
                f"expected {FrameType(want).name} in handshake, got type {shorten(kind)} with {len(msg)} fields"
            )

    # acceptor -------------------------------------------------------------------
    def _on_await_hello(self, kind: int, msg: list[Any]) -> None:
        self._expect(kind, HELLO, 5, msg)
        _, magic, vmin, vmax, nonce_d = msg
        if magic != MAGIC or not _is_bin(nonce_d, NONCE_BYTES):
            raise ProtocolError("not a peerlink HELLO")
        if not (_is_int(vmin, 0, 0xFFFF) and _is_int(vmax, vmin, 0xFFFF)):
            raise ProtocolError("HELLO versions must be integers 0 <= min <= max <= 65535")
        self._peer_versions = (vmin, vmax)
        self.nonce_d = nonce_d
        self.nonce_a = self._token_bytes(NONCE_BYTES)
        self._outgoing.append([CHALLENGE, self.nonce_a])
        self.state = HandshakeState.AWAIT_PROOF

    def _on_await_proof(self, kind: int, msg: list[Any]) -> None:
        self._expect(kind, PROOF, 3, msg)
        _, blob, mac = msg
        vmin, vmax = self._peer_versions
        if type(blob) is not bytes or not _any_mac_matches(
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
        if self._admit is not None and (refusal := self._admit(peer)) is not None:
            raise self._refuse(refusal)
        self.version = version
        self._peer_blob = blob
        self.peer = peer
        mac_a = _mac(self.cookies[0], "peerlink/acceptor", [version, self.nonce_d, self.nonce_a], blob, self._blob)
        self._outgoing.append([WELCOME, version, self._blob, mac_a])
        self.state = HandshakeState.AWAIT_READY

    def _on_await_ready(self, kind: int, msg: list[Any]) -> None:
        self._expect(kind, READY, 2, msg)
        if not _any_mac_matches(
            self.cookies, msg[1], "peerlink/ready", [self.version, self.nonce_d, self.nonce_a],
            self._peer_blob, self._blob,
        ):
            raise self._refuse(AuthenticationFailed("the dialler's confirmation does not verify"))
        self.state = HandshakeState.OPEN
        self.done = True

    # dialler --------------------------------------------------------------------
    def _on_await_challenge(self, kind: int, msg: list[Any]) -> None:
        self._expect(kind, CHALLENGE, 2, msg)
        nonce_a = msg[1]
        if not _is_bin(nonce_a, NONCE_BYTES):
            raise ProtocolError("CHALLENGE nonce must be 16 bytes")
        if nonce_a == self.nonce_d:
            raise ProtocolError("CHALLENGE reflects our own nonce")
        self.nonce_a = nonce_a
        vmin, vmax = self.versions
        mac_d = _mac(self.cookies[0], "peerlink/dialer", [vmin, vmax, self.nonce_d, nonce_a], self._blob)
        self._outgoing.append([PROOF, self._blob, mac_d])
        self.state = HandshakeState.AWAIT_WELCOME

    def _on_await_welcome(self, kind: int, msg: list[Any]) -> None:
        self._expect(kind, WELCOME, 4, msg)
        _, version, blob, mac_a = msg
        if not _is_int(version, 0, 0xFFFF) or type(blob) is not bytes:
            raise ProtocolError("malformed WELCOME")
        if not _any_mac_matches(
            self.cookies, mac_a, "peerlink/acceptor", [version, self.nonce_d, self.nonce_a], self._blob, blob
        ):
            raise AuthenticationFailed("the acceptor did not prove a cookie we accept")
        if not self.versions[0] <= version <= self.versions[1]:
            raise VersionMismatch(self.versions, (version, version))
        peer = Identity.decode(blob)
        if peer.cluster != self.identity.cluster:
            raise ClusterMismatch(self.identity.cluster, peer.cluster)
        if peer.name == self.identity.name and peer.incarnation == self.identity.incarnation:
            raise SelfConnection("the acceptor is this node itself")
        self.version = version
        self.peer = peer
        mac_r = _mac(self.cookies[0], "peerlink/ready", [version, self.nonce_d, self.nonce_a], self._blob, blob)
        self._outgoing.append([READY, mac_r])
        self.state = HandshakeState.OPEN
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
