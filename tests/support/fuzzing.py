"""Harnesses for the sans-I/O core, shared by the hypothesis properties
(``tests/test_protocol_properties.py``), the atheris fuzz targets (``fuzz/``) and the
regression tests that replay what fuzzing found (``tests/test_fuzz_regressions.py``).

Each ``*_target(data)`` takes arbitrary bytes, drives ``FrameDecoder`` / ``Handshake``
the way ``peerlink.link`` does, and raises ``Finding`` (an AssertionError) when the
contract of issue 11 breaks:

* only ``ProtocolError`` (and its ``FrameTooLarge``) and ``HandshakeError`` subclasses
  leave the decoder and the handshake, for any input;
* how bytes are split into chunks changes nothing: the same messages, the same error;
* a handshake never succeeds on tampered bytes; every ``HandshakeError`` has a reason
  from the fixed set; an error's text quotes at most ``MAX_LOGGED_CHARS`` of any remote
  string.

``DOCUMENTED`` is what may be raised; anything else is a finding.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from peerlink import protocol as p
from peerlink.errors import HANDSHAKE_REASONS, HandshakeError, ProtocolError

__all__ = [
    "COOKIE",
    "DOCUMENTED",
    "TARGETS",
    "Finding",
    "Outcome",
    "check_split",
    "check_tamper",
    "chunks",
    "decode_stream",
    "decoder_target",
    "feed_handshake",
    "handshake_pair",
    "handshake_target",
    "tamper_target",
    "transcript",
]

DOCUMENTED = (ProtocolError, HandshakeError)
COOKIE = b"fuzz-cookie"
SMALL_MAX_FRAME = 64 * 1024
SMALL_MAX_ITEMS = 1024  # small, so the counted path for large frames is reached quickly
# a run of this many identical characters in an error's text came from a remote string
_LONG_RUN = re.compile(r"(.)\1{" + str(p.MAX_LOGGED_CHARS) + ",}")


class Finding(AssertionError):
    """The contract broke; the message says how."""


@dataclass
class Outcome:
    """What a decoder made of a byte stream."""

    messages: list[Any]
    error: type[BaseException] | None


def chunks(data: bytes, sizes: Iterable[int]) -> Iterator[bytes]:
    """``data`` cut into pieces of the given sizes (cycled; a size of 0 is a 1)."""
    pos = 0
    cycle = itertools.cycle(list(sizes) or [len(data) or 1])
    while pos < len(data):
        n = max(1, next(cycle))
        yield data[pos:pos + n]
        pos += n


def frames_of(data: bytes) -> Iterator[bytes]:
    """``data`` cut where its frame headers say frames end (then whatever is left): the
    chunks a busy link reads most, which take the decoder's one-frame fast path."""
    pos = 0
    while len(data) - pos >= p.HEADER_BYTES:
        end = pos + p.HEADER_BYTES + max(1, int.from_bytes(data[pos:pos + p.HEADER_BYTES], "big"))
        yield data[pos:end]
        pos = end
    if pos < len(data):
        yield data[pos:]


def _documented(exc: BaseException, where: str) -> None:
    if not isinstance(exc, DOCUMENTED):
        raise Finding(f"{where} raised an undocumented {type(exc).__name__}: {exc!r}"[:2000]) from exc
    if isinstance(exc, HandshakeError) and exc.reason not in HANDSHAKE_REASONS:
        raise Finding(f"{where}: HandshakeError reason {exc.reason!r} is not one of HANDSHAKE_REASONS")
    if _LONG_RUN.search(str(exc)):
        raise Finding(f"{where}: error text quotes over {p.MAX_LOGGED_CHARS} characters of a remote "
                      f"string: {str(exc)[:300]!r}...")


def decode_stream(pieces: Iterable[bytes], *, preauth: bool, max_frame: int = SMALL_MAX_FRAME,
                  max_items: int = SMALL_MAX_ITEMS) -> Outcome:
    """Feed ``pieces`` to one decoder; unauthenticated, drain it with ``feed(b"")`` after
    each piece (it hands out one message per call). Stops at the first error."""
    dec = p.FrameDecoder(max_frame, max_items=max_items, preauth=preauth)
    out: list[Any] = []
    try:
        for piece in pieces:
            got = dec.feed(piece)
            while got:
                out.extend(got)
                got = dec.feed(b"") if preauth else []
    except Exception as exc:  # classified right here
        _documented(exc, "FrameDecoder.feed")
        return Outcome(out, type(exc))
    return Outcome(out, None)


def split_message(stream: bytes) -> int | None:
    """The index of the first complete frame of ``stream`` whose body ends inside a
    msgpack value (an independent reading: msgpack.unpackb, value by value)."""
    pos = index = 0
    while len(stream) - pos >= p.HEADER_BYTES:
        end = pos + p.HEADER_BYTES + int.from_bytes(stream[pos:pos + p.HEADER_BYTES], "big")
        if end > len(stream):
            return None
        rest = stream[pos + p.HEADER_BYTES:end]
        while rest:
            try:
                msgpack.unpackb(rest, raw=False, strict_map_key=False)
                rest = b""
            except msgpack.ExtraData as extra:
                rest = extra.extra
            except ValueError as exc:
                if "incomplete" in str(exc):
                    return index
                break  # malformed in another way: not this oracle's business
            except Exception:
                break
        pos, index = end, index + 1
    return None


def _same(a: list[Any], b: list[Any]) -> bool:
    """Equal as msgpack values (a NaN equals a NaN with the same bits; == says no)."""
    return bool(msgpack.packb(a, use_bin_type=True) == msgpack.packb(b, use_bin_type=True))


def check_split(stream: bytes, sizes: Sequence[int], *, preauth: bool) -> None:
    """Fed whole, byte by byte, in chunks of ``sizes`` and a frame at a time, ``stream``
    gives the same messages or the same documented error (after an error, a coarser split
    may lose the messages of the chunk that failed: what it returned is a prefix); and a
    frame that ends inside a message is an error, not the start of a message the next
    frame ends."""
    whole = decode_stream([stream], preauth=preauth)
    cut = split_message(stream)
    if whole.error is None and cut is not None:
        raise Finding(f"frame {cut} ends inside a message, yet the stream decoded without error")
    by_byte = decode_stream(chunks(stream, [1]), preauth=preauth)
    split = decode_stream(chunks(stream, sizes), preauth=preauth)
    framed = decode_stream(frames_of(stream), preauth=preauth)
    for name, other in (("byte by byte", by_byte), (f"in chunks of {list(sizes)}", split),
                        ("a frame at a time", framed)):
        if other.error != whole.error:
            raise Finding(f"fed whole: {whole.error}; fed {name}: {other.error}")
        if whole.error is None and not _same(other.messages, whole.messages):
            raise Finding(f"fed whole and {name} decode to different messages")
        if not _same(other.messages, by_byte.messages[:len(other.messages)]):
            raise Finding(f"fed {name}: messages are not a prefix of those fed byte by byte")


def decoder_target(data: bytes, *, preauth: bool) -> None:
    """Any bytes, split at points the input chooses (the first byte picks the chunk
    sizes; the rest is the stream): ``check_split``."""
    if data:
        seed = data[0]
        check_split(data[1:], [1 + (seed * (i + 3)) % 61 for i in range(7)], preauth=preauth)


# -- handshake ---------------------------------------------------------------------------


def _nonces(seed: int) -> Callable[[int], bytes]:
    counter = itertools.count(seed)
    return lambda n: bytes([next(counter) % 256]) * n


def handshake_pair(*, dialer_cookie: bytes = COOKIE) -> tuple[p.Handshake, p.Handshake]:
    """A dialler and an acceptor of cluster "c" with fixed nonces."""
    dialer = p.Handshake(p.Side.DIALER, cookies=[dialer_cookie], token_bytes=_nonces(1),
                         identity=p.Identity("c", "d", "inc-d", "127.0.0.1", 4001, {"z": 1}))
    acceptor = p.Handshake(p.Side.ACCEPTOR, cookies=[COOKIE], token_bytes=_nonces(100),
                           identity=p.Identity("c", "a", "inc-a", "127.0.0.1", 4002, {}))
    return dialer, acceptor


def transcript() -> list[bytes]:
    """The frames of a valid handshake, in order: HELLO, CHALLENGE, PROOF, WELCOME, READY."""
    dialer, acceptor = handshake_pair()
    frames: list[bytes] = []
    queue = [(acceptor, m) for m in dialer.take_outgoing()]
    while queue:
        side, msg = queue.pop(0)
        frames.append(p.encode_frame(msg))
        side.receive(msg)
        other = dialer if side is acceptor else acceptor
        queue += [(other, m) for m in side.take_outgoing()]
    assert dialer.done and acceptor.done
    return frames


class Side:
    """One end of a handshake as the link drives it: an unauthenticated decoder that
    hands over one message at a time, switched to authenticated limits the moment the
    peer proves the cookie."""

    def __init__(self, hs: p.Handshake) -> None:
        self.hs = hs
        self.decoder = p.FrameDecoder(SMALL_MAX_FRAME, max_items=SMALL_MAX_ITEMS, preauth=True)
        self.after: list[Any] = []  # messages that arrived after the handshake completed

    def feed(self, data: bytes) -> list[Any]:
        """Bytes in; returns the handshake messages to send. Raises what it raises."""
        out: list[Any] = []
        messages = self.decoder.feed(data)
        while messages:
            for i, msg in enumerate(messages):
                if self.hs.done:
                    self.after.extend(messages[i:])
                    break
                try:
                    self.hs.receive(msg)
                finally:
                    out += self.hs.take_outgoing()
                if self.hs.peer_proven and self.decoder.preauth:
                    self.decoder.authenticate(SMALL_MAX_FRAME, SMALL_MAX_ITEMS)
            messages = self.decoder.feed(b"")
        return out


def feed_handshake(dialer: p.Handshake, acceptor: p.Handshake, *, sizes: Sequence[int] = (),
                   tamper: Callable[[int, bytes], bytes] | None = None,
                   coalesce: Sequence[Any] = ()) -> tuple[Side, Side]:
    """Run a handshake over bytes: every frame goes through the other side's decoder in
    chunks of ``sizes``; ``tamper(i, frame)`` may change the i-th frame on the wire;
    ``coalesce`` are messages the dialler sends right behind READY, in the same chunk.
    Returns both sides; raises the first error either side raises."""
    d, a = Side(dialer), Side(acceptor)
    pending: list[tuple[Side, bytes]] = [(a, p.encode_frame(m)) for m in dialer.take_outgoing()]
    n = 0
    while pending:
        target, frame = pending.pop(0)
        if tamper is not None:
            frame = tamper(n, frame)
        n += 1
        if target is a and dialer.done and coalesce:
            frame += b"".join(p.encode_frame(m) for m in coalesce)
            coalesce = ()
        replies: list[Any] = []
        for piece in chunks(frame, sizes or [len(frame)]):
            replies += target.feed(piece)
        other = d if target is a else a
        pending += [(other, p.encode_frame(m)) for m in replies]
    return d, a


def handshake_target(data: bytes) -> None:
    """Arbitrary bytes as one side's input at any point of a handshake. The first byte
    picks the side and how many valid messages come first; the rest is the stream."""
    if not data:
        return
    mode, stream = data[0], data[1:]
    dialer, acceptor = handshake_pair()
    valid = transcript()
    if mode & 1:  # we are the acceptor; valid dialler frames first: none, HELLO, +PROOF
        me, prefix = Side(acceptor), [valid[0], valid[2]][: (mode >> 1) % 3]
    else:  # we are the dialler; first none, CHALLENGE, +WELCOME
        me, prefix = Side(dialer), [valid[1], valid[3]][: (mode >> 1) % 3]
        dialer.take_outgoing()
    try:
        for frame in prefix:
            me.feed(frame)
        for piece in chunks(stream, [1 + (mode >> 3)]):
            me.feed(piece)
    except Exception as exc:  # classified by _documented
        _documented(exc, f"Handshake ({me.hs.side.name}, mode {mode})")


def check_tamper(index: int, position: int, value: int, size: int) -> None:
    """A valid handshake with byte ``position`` of frame ``index`` (0 HELLO .. 4 READY,
    header included) set to ``value``, every frame fed in chunks of ``size``: it fails
    with a documented error; a changed length header may instead leave it waiting for
    more bytes. It never succeeds."""
    valid = transcript()
    index %= len(valid)
    position %= len(valid[index])
    if valid[index][position] == value:
        return  # not a change

    def tamper(i: int, frame: bytes) -> bytes:
        if i != index:
            return frame
        return frame[:position] + bytes([value]) + frame[position + 1:]

    dialer, acceptor = handshake_pair()
    try:
        feed_handshake(dialer, acceptor, sizes=[size], tamper=tamper)
    except Exception as exc:  # classified by _documented
        _documented(exc, f"tampered frame {index} byte {position}")
        return
    if dialer.done and acceptor.done:
        raise Finding(f"the handshake succeeded with byte {position} of frame {index} set to {value}")
    if position >= p.HEADER_BYTES:
        raise Finding(f"byte {position} of frame {index} set to {value} raised no error")


def tamper_target(data: bytes) -> None:
    """``check_tamper`` with data = [frame index, position (2 bytes), value, chunk size]."""
    if len(data) >= 5:
        check_tamper(data[0], int.from_bytes(data[1:3], "big"), data[3], 1 + data[4] % 64)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "decoder_preauth": lambda data: decoder_target(data, preauth=True),
    "decoder_auth": lambda data: decoder_target(data, preauth=False),
    "handshake": handshake_target,
    "tamper": tamper_target,
}
"""The fuzz targets by name (``fuzz/run.py``; ``fuzz/regressions/<name>/``)."""
