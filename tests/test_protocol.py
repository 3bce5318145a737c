"""The sans-I/O core: framing byte vectors, hypothesis over chunking and garbage, and
handshake vectors (right, wrong cookie, replay, reflection, cluster, version, self)."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerlink import protocol as p
from peerlink.errors import (
    AuthenticationFailed,
    ClusterMismatch,
    FrameTooLarge,
    HandshakeError,
    MessageTooLarge,
    ProtocolError,
    SelfConnection,
    VersionMismatch,
)

# -- framing -------------------------------------------------------------------------


def test_frame_byte_vector() -> None:
    # one frame, two messages: [6, "t", 1] and [4]
    frame = p.encode_frame((p.SEND, "t", 1), (p.PING,))
    assert frame == b"\x00\x00\x00\x07" + b"\x93\x06\xa1t\x01" + b"\x91\x04"
    assert p.FrameDecoder(1024).feed(frame) == [[6, "t", 1], [4]]


def test_header_checked_before_body_is_buffered() -> None:
    dec = p.FrameDecoder(1024)
    with pytest.raises(FrameTooLarge) as info:
        dec.feed((1025).to_bytes(4, "big"))  # only the header: nothing else arrived
    assert info.value.size == 1025 and info.value.limit == 1024
    assert "frame of 1025 bytes exceeds limit of 1024 bytes" in str(info.value)


def test_frame_exactly_at_limit_is_accepted() -> None:
    body = msgpack.packb([p.SEND, "t", b"x" * (1024 - 8)])
    assert len(body) <= 1024
    frame = len(body).to_bytes(4, "big") + body
    assert p.FrameDecoder(len(body)).feed(frame)[0][2] == b"x" * (1024 - 8)


def test_message_cut_by_frame_boundary_is_a_protocol_error() -> None:
    body = msgpack.packb([p.SEND, "topic", "body"])
    frame = (len(body) - 2).to_bytes(4, "big") + body[:-2]
    with pytest.raises(ProtocolError, match="inside a message"):
        p.FrameDecoder(1024).feed(frame)


def test_empty_frame_and_ext_types_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError):
        p.FrameDecoder(1024).feed(b"\x00\x00\x00\x00")
    ext = msgpack.packb(msgpack.ExtType(5, b"pickle?"))
    with pytest.raises(ProtocolError, match="extension"):
        p.FrameDecoder(1024).feed(len(ext).to_bytes(4, "big") + ext)


def test_encoder_rejects_unpackable_value_and_keeps_queue() -> None:
    enc = p.FrameEncoder(1024)
    enc.add((p.SEND, "a", 1))
    with pytest.raises(TypeError):
        enc.add((p.SEND, "b", object()))
    enc.add((p.SEND, "c", 3))
    assert p.FrameDecoder(1024).feed(b"".join(enc.take())) == [[6, "a", 1], [6, "c", 3]]


def test_encoder_refuses_message_larger_than_max_frame() -> None:
    enc = p.FrameEncoder(1024)
    with pytest.raises(MessageTooLarge, match="exceeds max_frame of 1024"):
        enc.add((p.SEND, "big", b"x" * 2000))
    assert enc.take() == []


def test_encoder_splits_batches_into_frames_within_limit() -> None:
    enc = p.FrameEncoder(4096)
    msgs = [(p.SEND, "t", b"y" * 1000) for _ in range(10)]
    for m in msgs:
        enc.add(m)
    frames = enc.take()
    assert len(frames) > 1
    assert all(len(f) - 4 <= 4096 for f in frames)
    assert p.FrameDecoder(4096).feed(b"".join(frames)) == [list(m) for m in msgs]


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(values, min_size=1, max_size=20), st.lists(st.integers(1, 64), min_size=1, max_size=50))
def test_any_chunking_gives_the_same_messages(bodies: list[Any], cuts: list[int]) -> None:
    enc = p.FrameEncoder(1 << 20)
    for i, b in enumerate(bodies):
        enc.add((p.SEND, f"t{i}", b))
        if i % 3 == 0:
            enc._close_frame()  # several frames, not just one
    stream = b"".join(enc.take())
    dec = p.FrameDecoder(1 << 20)
    out: list[Any] = []
    pos = 0
    for cut in itertools.cycle(cuts):
        if pos >= len(stream):
            break
        out.extend(dec.feed(stream[pos:pos + cut]))
        pos += cut
    assert out == [[p.SEND, f"t{i}", b] for i, b in enumerate(bodies)]
    assert dec.buffered == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_garbage_only_ever_raises_protocol_error(data: bytes) -> None:
    dec = p.FrameDecoder(256)
    try:
        dec.feed(data)
    except ProtocolError:
        pass


# -- handshake -----------------------------------------------------------------------


def ident(name: str, *, cluster: str = "c", inc: str = "i1", port: int = 1) -> p.Identity:
    return p.Identity(cluster, name, inc, "127.0.0.1", port, {"zone": "z"})


def nonces(seed: int) -> Any:
    counter = itertools.count(seed)
    return lambda n: bytes([next(counter) % 256]) * n


def pair(
    *, d_cookies: tuple[bytes, ...] = (b"k",), a_cookies: tuple[bytes, ...] = (b"k",),
    d: p.Identity | None = None, a: p.Identity | None = None,
    d_versions: tuple[int, int] = (1, 1),
) -> tuple[p.Handshake, p.Handshake]:
    dialer = p.Handshake(p.Side.DIALER, identity=d or ident("d"), cookies=d_cookies,
                         versions=d_versions, token_bytes=nonces(1))
    acceptor = p.Handshake(p.Side.ACCEPTOR, identity=a or ident("a"), cookies=a_cookies,
                           token_bytes=nonces(100))
    return dialer, acceptor


def run(dialer: p.Handshake, acceptor: p.Handshake) -> list[list[Any]]:
    """Exchange messages until one side is done or raises; returns the transcript."""
    transcript: list[list[Any]] = []
    queue: list[tuple[p.Handshake, list[Any]]] = [(acceptor, m) for m in dialer.take_outgoing()]
    while queue:
        target, msg = queue.pop(0)
        transcript.append(msg)
        other = dialer if target is acceptor else acceptor
        try:
            target.receive(msg)
        finally:
            queue.extend((other, m) for m in target.take_outgoing())
    return transcript


def test_handshake_succeeds_and_exchanges_identities() -> None:
    dialer, acceptor = pair()
    transcript = run(dialer, acceptor)
    assert [m[0] for m in transcript] == [p.HELLO, p.CHALLENGE, p.PROOF, p.WELCOME, p.READY]
    assert dialer.done and acceptor.done
    assert dialer.peer == ident("a") and acceptor.peer == ident("d")
    assert dialer.version == acceptor.version == 1


def test_handshake_is_deterministic_given_nonces() -> None:
    t1 = run(*pair())
    t2 = run(*pair())
    assert t1 == t2
    # the acceptor's first words reveal nothing but a nonce
    assert t1[1] == [p.CHALLENGE, bytes([100]) * 16]


def test_wrong_cookie_is_refused_and_acceptor_reveals_nothing() -> None:
    dialer, acceptor = pair(d_cookies=(b"wrong",))
    with pytest.raises(AuthenticationFailed):
        run(dialer, acceptor)
    assert acceptor.peer is None and not acceptor.done and not dialer.done
    assert dialer.peer is None  # never learnt who the acceptor is


def test_dialer_refusal_arrives_as_authentication_failed() -> None:
    dialer, acceptor = pair(d_cookies=(b"wrong",))
    hello = dialer.take_outgoing()
    acceptor.receive(hello[0])
    dialer.receive(acceptor.take_outgoing()[0])
    with pytest.raises(AuthenticationFailed):
        acceptor.receive(dialer.take_outgoing()[0])
    refuse = acceptor.take_outgoing()
    assert refuse == [[p.REFUSE, "wrong_cookie", None]]
    with pytest.raises(AuthenticationFailed):
        dialer.receive(refuse[0])


def test_rotation_any_accepted_cookie_works_both_ways() -> None:
    dialer, acceptor = pair(d_cookies=(b"new", b"old"), a_cookies=(b"old", b"new"))
    run(dialer, acceptor)
    assert dialer.done and acceptor.done


def test_replayed_proof_fails_against_a_fresh_challenge() -> None:
    d1, a1 = pair()
    t = run(d1, a1)
    proof = t[2]
    # a new acceptor with a different nonce; an attacker replays the old HELLO and PROOF
    a2 = p.Handshake(p.Side.ACCEPTOR, identity=ident("a"), cookies=(b"k",), token_bytes=nonces(200))
    a2.receive(t[0])
    assert a2.take_outgoing()[0][1] != t[1][1]
    with pytest.raises(AuthenticationFailed):
        a2.receive(proof)


def test_reflected_proof_is_rejected() -> None:
    """An attacker who dials D's own acceptor cannot use an acceptor's MAC as a dialler's."""
    d, a = pair()
    t = run(d, a)
    welcome = t[3]
    # present the acceptor's proof (mac_a) as a dialler's proof to another acceptor
    a2 = p.Handshake(p.Side.ACCEPTOR, identity=ident("a"), cookies=(b"k",), token_bytes=nonces(100))
    a2.receive(t[0])
    a2.take_outgoing()
    with pytest.raises(AuthenticationFailed):
        a2.receive([p.PROOF, welcome[2], welcome[3]])


def test_tampered_identity_fails() -> None:
    d, a = pair()
    a.receive(d.take_outgoing()[0])
    d.receive(a.take_outgoing()[0])
    proof = d.take_outgoing()[0]
    forged = ident("mallory").encode()
    with pytest.raises(AuthenticationFailed):
        a.receive([p.PROOF, forged, proof[2]])


def test_cluster_mismatch_is_distinct() -> None:
    d, a = pair(d=ident("d", cluster="other"))
    with pytest.raises(ClusterMismatch) as info:
        run(d, a)
    assert info.value.theirs in ("other", "c")


def test_dialer_learns_cluster_mismatch() -> None:
    d, a = pair(d=ident("d", cluster="other"))
    a.receive(d.take_outgoing()[0])
    d.receive(a.take_outgoing()[0])
    with pytest.raises(ClusterMismatch):
        a.receive(d.take_outgoing()[0])
    with pytest.raises(ClusterMismatch) as info:
        d.receive(a.take_outgoing()[0])
    assert info.value.ours == "other" and info.value.theirs == "c"


def test_version_mismatch_is_distinct() -> None:
    d, a = pair(d_versions=(2, 3))
    with pytest.raises(VersionMismatch) as info:
        run(d, a)
    assert info.value.reason == "incompatible_version"


def test_self_connection_is_detected() -> None:
    me = ident("me")
    d, a = pair(d=me, a=me)
    with pytest.raises(SelfConnection):
        run(d, a)


def test_same_name_other_incarnation_is_not_self() -> None:
    d, a = pair(d=ident("x", inc="old"), a=ident("x", inc="new"))
    run(d, a)
    assert d.done and a.done


@pytest.mark.parametrize("msg", [
    [p.PROOF, b"x", b"y"],  # out of order
    [p.HELLO, "nope", 1, 1, b"0" * 16],  # not peerlink
    [p.HELLO, "peerlink", 1, 1, b"short"],
    "not a list",
    [],
])
def test_malformed_first_message_is_a_protocol_error(msg: Any) -> None:
    a = p.Handshake(p.Side.ACCEPTOR, identity=ident("a"), cookies=(b"k",))
    with pytest.raises(ProtocolError):
        a.receive(msg)


def test_handshake_errors_carry_reasons() -> None:
    assert AuthenticationFailed.reason == "wrong_cookie"
    assert ClusterMismatch.reason == "wrong_cluster"
    assert SelfConnection.reason == "is_self"
    assert issubclass(VersionMismatch, HandshakeError)


def test_heartbeat_action() -> None:
    # tick 1, timeout 4: dead after 4.5 s of silence, ping after half a tick idle
    assert p.heartbeat_action(10.0, last_rx=9.5, last_tx=9.9, tick=1.0, timeout=4.0) is None
    assert p.heartbeat_action(10.0, last_rx=9.5, last_tx=9.5, tick=1.0, timeout=4.0) == "ping"
    assert p.heartbeat_action(10.0, last_rx=6.0, last_tx=9.9, tick=1.0, timeout=4.0) is None
    assert p.heartbeat_action(10.0, last_rx=5.5, last_tx=9.9, tick=1.0, timeout=4.0) == "dead"


@pytest.mark.parametrize("phase", [0.0, 0.3, 0.999])
def test_silent_peer_is_reported_between_timeout_and_timeout_plus_tick(phase: float) -> None:
    """Simulate aligned heartbeat instants: a peer pinging at every instant falls
    silent at ``stop``; the instant that declares it dead lies in [timeout, timeout+tick]."""
    tick, timeout = 1.0, 4.0
    for skew in (-0.05, 0.0, 0.05):  # the peer's clock vs ours
        stop = 100 + phase
        last_rx = max(k + skew for k in range(200) if k + skew <= stop)  # its last ping
        instant = 101.0
        while p.heartbeat_action(instant, last_rx, instant, tick, timeout) != "dead":
            instant += tick
        assert timeout - abs(skew) <= instant - stop <= timeout + tick + abs(skew), (phase, skew)
