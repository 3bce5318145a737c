"""Properties of the sans-I/O core under hostile input (issue 11), with hypothesis.

* FrameDecoder, authenticated and unauthenticated: any bytes, any split into chunks,
  give the same messages or the same documented error (ProtocolError / FrameTooLarge),
  never another exception; a frame never splits a message.
* Handshake: a valid transcript split anywhere still succeeds (also with the first
  authenticated messages coalesced behind READY); any message in any state raises only
  ProtocolError / HandshakeError (with a reason from the fixed set, quoting at most
  MAX_LOGGED_CHARS of a remote string); changing any byte of any handshake frame makes
  it fail with a documented error, never succeed.

The checks themselves live in ``support.fuzzing`` and are shared with the atheris
targets in ``fuzz/``.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.fuzzing import (
    DOCUMENTED,
    check_split,
    check_tamper,
    decode_stream,
    feed_handshake,
    handshake_pair,
    handshake_target,
    transcript,
)

from peerlink import protocol as p
from peerlink.errors import HANDSHAKE_REASONS, HandshakeError, ProtocolError

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(PROPERTY, max_examples=60)

# -- values and streams ------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
           | st.text(max_size=40) | st.binary(max_size=40))
# what a sender may send (NaN aside: it never equals itself)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.binary(max_size=40), lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=8), kids, max_size=6),
    max_leaves=30)
# what an attacker can put on the wire besides: ext types, timestamps, non-string keys
hostile_values = st.recursive(
    scalars | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 999_999_999)),
    lambda kids: (st.lists(kids, max_size=5) | st.tuples(kids, kids)
                  | st.dictionaries(scalars | st.tuples(scalars), kids, max_size=4)),
    max_leaves=20)


def pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Byte streams near the protocol: well-framed messages (valid and hostile),
    handshake frames, lying headers, garbage, and mutations of all of these."""
    parts = draw(st.lists(st.one_of(
        st.lists(hostile_values, min_size=1, max_size=3).map(lambda ms: framed(b"".join(map(pack, ms)))),
        st.sampled_from(transcript()),
        st.binary(max_size=64),
        st.integers(0, 2**32 - 1).map(lambda n: n.to_bytes(4, "big")),
        st.binary(min_size=1, max_size=64).map(framed),
    ), min_size=1, max_size=6))
    data = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(0, 3))):
        if data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


sizes = st.lists(st.integers(1, 80), min_size=1, max_size=12)

# -- the frame decoder -------------------------------------------------------------------


@PROPERTY
@given(stream=streams(), sizes=sizes, preauth=st.booleans())
def test_decoder_result_does_not_depend_on_the_split(stream: bytes, sizes: list[int], preauth: bool) -> None:
    check_split(stream, sizes, preauth=preauth)


@PROPERTY
@given(data=st.binary(max_size=2048), sizes=sizes, preauth=st.booleans())
def test_decoder_takes_any_bytes_with_a_documented_error(data: bytes, sizes: list[int], preauth: bool) -> None:
    check_split(data, sizes, preauth=preauth)


@FEWER
@given(messages=st.lists(values, min_size=1, max_size=10), sizes=sizes)
def test_valid_messages_come_through_any_split(messages: list[Any], sizes: list[int]) -> None:
    # small frames go through the streaming unpacker, large ones (over max_items bytes:
    # here padded past 256) through the counting decode: both give back what was sent
    for max_items, sent in ((1 << 20, messages), (256, [[m, b"x" * 300] for m in messages])):
        stream = b"".join(framed(pack(m)) for m in sent)
        out = decode_stream([stream[i:i + n] for i, n in _cuts(len(stream), sizes)],
                            preauth=False, max_items=max_items)
        assert out.error is None and out.messages == sent


def _cuts(total: int, sizes: list[int]) -> list[tuple[int, int]]:
    cuts, pos, k = [], 0, 0
    while pos < total:
        n = sizes[k % len(sizes)]
        cuts.append((pos, n))
        pos, k = pos + n, k + 1
    return cuts


@PROPERTY
@given(first=values, second=values, cut=st.integers(0, 1 << 16), preauth=st.booleans())
@example(first=None, second=-33, cut=1, preauth=False)  # frames c0 d0 | df
def test_a_frame_never_splits_a_message(first: Any, second: Any, cut: int, preauth: bool) -> None:
    """Two messages whose bytes are framed at any point other than between them: the
    frame that ends inside a message is a protocol error, whichever decode path it takes."""
    body = pack(first) + pack(second)
    cut = 1 + cut % (len(body) - 1)
    if cut == len(pack(first)):
        return  # that is the boundary between the two messages
    out = decode_stream([framed(body[:cut]) + framed(body[cut:])], preauth=preauth)
    assert out.error is not None and issubclass(out.error, ProtocolError), (
        f"a message split over two frames decoded to {out.messages!r}")


# -- the handshake -----------------------------------------------------------------------


@PROPERTY
@given(sizes=sizes)
def test_a_valid_transcript_split_anywhere_succeeds(sizes: list[int]) -> None:
    dialer, acceptor = handshake_pair()
    # the first authenticated messages ride in the same chunk as READY, one of them
    # bigger than any unauthenticated frame may be
    big = [p.SEND, "t", b"x" * (p.PREAUTH_MAX_FRAME + 1)]
    _, a = feed_handshake(dialer, acceptor, sizes=sizes, coalesce=[[p.SEND, "t", 1], big])
    assert dialer.done and acceptor.done
    assert acceptor.peer is not None and acceptor.peer.name == "d"
    assert dialer.peer is not None and dialer.peer.name == "a"
    assert a.after == [[p.SEND, "t", 1], big]


@PROPERTY
@given(index=st.integers(0, 4), position=st.integers(0, 1 << 16), value=st.integers(0, 255),
       size=st.integers(1, 64))
@example(index=4, position=5, value=0x8A, size=64)  # READY's type byte made a 10-entry map
def test_tampering_any_byte_of_a_handshake_fails_with_a_documented_error(
    index: int, position: int, value: int, size: int
) -> None:
    check_tamper(index, position, value, size)


@pytest.mark.parametrize("steps", range(3))
@pytest.mark.parametrize("side", [p.Side.DIALER, p.Side.ACCEPTOR])
@FEWER
@given(msg=hostile_values)
def test_any_message_in_any_state_raises_only_documented_errors(
    side: p.Side, steps: int, msg: Any
) -> None:
    dialer, acceptor = handshake_pair()
    valid = transcript()
    me, frames = (acceptor, [valid[0], valid[2]]) if side is p.Side.ACCEPTOR else (dialer, [valid[1], valid[3]])
    if side is p.Side.DIALER:
        dialer.take_outgoing()
    for frame in frames[:steps]:
        for m in p.FrameDecoder(1 << 20).feed(frame):
            me.receive(m)
    try:
        me.receive(msg)
    except DOCUMENTED as exc:
        if isinstance(exc, HandshakeError):
            assert exc.reason in HANDSHAKE_REASONS


@PROPERTY
@given(reason=st.text(min_size=101, max_size=300), detail=hostile_values,
       kind=st.sampled_from(["wrong_cluster", "incompatible_version", "wrong_cookie", "is_self", None]))
def test_a_refusal_quotes_little_of_the_remote_words(reason: str, detail: Any, kind: str | None) -> None:
    dialer, _ = handshake_pair()
    words = [p.REFUSE, kind if kind is not None else reason, reason if kind == "wrong_cluster" else detail]
    try:
        dialer.receive(words)
    except HandshakeError as exc:
        assert exc.reason in HANDSHAKE_REASONS and exc.by_peer
        assert reason[:p.MAX_LOGGED_CHARS + 1] not in str(exc)
    except ProtocolError:
        pass
    else:
        pytest.fail("a REFUSE did not end the handshake")


@PROPERTY
@given(data=st.binary(max_size=512))
def test_handshake_takes_any_bytes_at_any_point(data: bytes) -> None:
    handshake_target(data)


@PROPERTY
@given(blob=st.binary(max_size=256) | hostile_values.map(pack))
def test_identity_decode_raises_only_protocol_error(blob: bytes) -> None:
    try:
        p.Identity.decode(blob)
    except ProtocolError:
        pass
