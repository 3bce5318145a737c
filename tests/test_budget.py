"""The resource budget of the sans-I/O core (docs/security.md): what the decoder accepts
before and after authentication, what the encoder refuses at the sender, and that the
handshake answers any input with a documented error only."""

from __future__ import annotations

import collections
import enum
import itertools
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerlink import protocol as p
from peerlink.errors import (
    HANDSHAKE_REASONS,
    ClusterMismatch,
    FrameTooLarge,
    HandshakeError,
    MessageTooLarge,
    ProtocolError,
    SelfConnection,
    VersionMismatch,
)


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def msg(*values: Any) -> bytes:
    return frame(msgpack.packb(list(values), use_bin_type=True))


# -- before authentication -----------------------------------------------------------


def test_preauth_header_over_16_kib_is_refused_before_any_body_arrives() -> None:
    dec = p.FrameDecoder(8 * 2**20, preauth=True)
    with pytest.raises(FrameTooLarge) as info:
        dec.feed((p.PREAUTH_MAX_FRAME + 1).to_bytes(4, "big"))
    assert info.value.limit == p.PREAUTH_MAX_FRAME == 16 * 1024


@pytest.mark.parametrize("body", [
    msgpack.packb([1, 2]) + msgpack.packb([3]),  # two messages in one frame
    msgpack.packb([0, {"a": 1}]),  # a map
    msgpack.packb([0, 1, 2, 3, 4, 5]),  # an array of 6
    msgpack.packb([0, "x" * 1021]),  # a long string
    msgpack.packb([0, b"x" * (p.MAX_IDENTITY_BYTES + 1)]),  # a long bin
    msgpack.packb([0, msgpack.Timestamp(1, 0)]),  # an extension type
    b"\x91" * 2000 + b"\xc0",  # nesting deeper than msgpack's stack
], ids=["two", "map", "array6", "str", "bin", "timestamp", "deep"])
def test_preauth_frames_hold_one_small_message(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.FrameDecoder(8 * 2**20, preauth=True).feed(frame(body))


def test_preauth_hands_over_one_message_at_a_time_then_switches_limits() -> None:
    big = msg(p.SEND, "t", b"x" * 100_000)  # legal only once authenticated
    dec = p.FrameDecoder(2**20, preauth=True)
    assert dec.feed(msg(p.READY, b"m" * 32) + big) == [[p.READY, b"m" * 32]]
    assert dec.buffered == len(big)  # not yet decoded: the handshake decides its limits
    dec.authenticate(2**20)
    assert dec.feed(b"") == [[p.SEND, "t", b"x" * 100_000]]


# -- after authentication ------------------------------------------------------------


def test_a_frame_decodes_to_at_most_max_items_values() -> None:
    limit = 4096
    dec = p.FrameDecoder(2**20, max_items=limit)
    # small frames (<= limit bytes) cannot exceed the count and decode as usual
    assert len(dec.feed(frame(b"\x90" * limit))) == limit
    # a bigger frame holds one message, counted while it decodes
    ok = msgpack.packb([p.SEND, "t", [[] for _ in range(limit // 3)]])
    assert dec.feed(frame(ok))[0][2] == [[]] * (limit // 3)
    bomb = msgpack.packb([p.SEND, "t", [[] for _ in range(limit)]])
    with pytest.raises(ProtocolError, match=f"more than {limit} values"):
        p.FrameDecoder(2**20, max_items=limit).feed(frame(bomb))


def test_a_message_cannot_grow_across_small_frames() -> None:
    """msgpack's streaming unpacker keeps a half-decoded message for the next feed: a
    message split over small frames would dodge the count of large ones."""
    head = b"\x93\x06\xa1t\xdc\x00\x10" + b"\x90" * 8  # an array of 16, 8 given
    dec = p.FrameDecoder(2**20)
    with pytest.raises(ProtocolError, match="inside a message"):
        dec.feed(frame(head) + frame(b"\x90" * 8))


def test_a_large_frame_holds_exactly_one_message() -> None:
    limit = 1024
    two = msgpack.packb([p.SEND, "t", b"x" * limit]) + msgpack.packb([p.PING])
    with pytest.raises(ProtocolError, match="more than one message"):
        p.FrameDecoder(2**20, max_items=limit).feed(frame(two))


@pytest.mark.parametrize("body", [
    b"\x93\x06\xa1t" + b"\x81\x92\x01\x02\xc0",  # {[1, 2]: nil}: an array as a map key
    msgpack.packb([p.SEND, "t", msgpack.Timestamp(1, 0)]),
    msgpack.packb([p.SEND, "t", msgpack.ExtType(5, b"pickle?")]),
], ids=["array-key", "timestamp", "ext"])
def test_authenticated_frames_refuse_array_keys_and_extension_types(body: bytes) -> None:
    for max_items in (2**20, 4):  # the streaming path and the counted path
        with pytest.raises(ProtocolError):
            p.FrameDecoder(2**20, max_items=max_items).feed(frame(body))


# -- the sender refuses first ----------------------------------------------------------


class Color(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Kind(str, enum.Enum):  # noqa: UP042 - the mixin, not StrEnum: str() gives "Kind.A"
    A = "a"


@pytest.mark.parametrize("value", [
    {(1, 2): "x"},
    [1, {"ok": {("nested", 1): 2}}],
    ({(1,): 1},),
], ids=["top", "nested", "in-tuple"])
def test_tuple_map_keys_are_a_type_error_at_the_sender(value: Any) -> None:
    enc = p.FrameEncoder(2**20)
    with pytest.raises(TypeError, match="map key"):
        enc.add([p.SEND, "t", value])
    assert not enc.pending
    enc.add([p.SEND, "t", (1, (2, 3))])  # tuples as values are fine: arrays
    assert p.FrameDecoder(2**20).feed(b"".join(enc.take())) == [[p.SEND, "t", [1, [2, 3]]]]


def test_subclasses_are_carried_as_their_plain_values() -> None:
    enc = p.FrameEncoder(2**20)
    value = {"c": Color.RED, "l": Level.HIGH, "k": Kind.A,
             "o": collections.OrderedDict(a=1), "d": collections.defaultdict(list, b=[1])}
    enc.add([p.SEND, "t", value])
    assert p.FrameDecoder(2**20).feed(b"".join(enc.take()))[0][2] == {
        "c": "red", "l": 3, "k": "a", "o": {"a": 1}, "d": {"b": [1]}}


def test_a_message_over_the_value_budget_is_refused_at_the_sender() -> None:
    enc = p.FrameEncoder(2**20, max_items=1024)
    with pytest.raises(MessageTooLarge, match="max_message_items") as info:
        enc.add([p.SEND, "t", [[] for _ in range(2000)]])
    assert info.value.unit == "values" and not enc.pending
    enc.add([p.SEND, "t", b"x" * 100_000])  # big but few values: fine
    assert len(enc.take()) == 1


# -- the handshake: documented errors only ---------------------------------------------


def ident(name: str) -> p.Identity:
    return p.Identity("c", name, "inc-" + name, "127.0.0.1", 4370, {"zone": "z"})


def dialer_after_hello() -> p.Handshake:
    d = p.Handshake(p.Side.DIALER, identity=ident("d"), cookies=[b"k"])
    d.take_outgoing()
    return d


@pytest.mark.parametrize("refuse", [
    [p.REFUSE, "incompatible_version", ["1", "2"]],  # strings where ints belong
    [p.REFUSE, "incompatible_version", [True, 1]],  # a bool is not an int
    [p.REFUSE, "incompatible_version", [1, 2**70]],
    [p.REFUSE, ["nested", ["reason"]], None],
    [p.REFUSE],
    [p.REFUSE, "wrong_cluster", {"not": "a str"}],
])
def test_malformed_refusals_are_protocol_errors_or_plain_refusals(refuse: list[Any]) -> None:
    with pytest.raises((ProtocolError, HandshakeError)) as info:
        dialer_after_hello().receive(refuse)
    if isinstance(info.value, HandshakeError):
        assert info.value.reason in HANDSHAKE_REASONS and info.value.by_peer


def test_refusals_are_marked_as_the_peers_word_and_shortened() -> None:
    with pytest.raises(SelfConnection) as is_self:
        dialer_after_hello().receive([p.REFUSE, "is_self", None])
    assert is_self.value.by_peer
    with pytest.raises(HandshakeError) as other:
        dialer_after_hello().receive([p.REFUSE, "x" * 1000, None])
    assert other.value.reason == "refused" and len(str(other.value)) < 200
    with pytest.raises(ClusterMismatch) as cluster:
        dialer_after_hello().receive([p.REFUSE, "wrong_cluster", "y" * 1000])
    assert len(cluster.value.theirs) <= p.MAX_LOGGED_CHARS
    with pytest.raises(VersionMismatch) as version:
        dialer_after_hello().receive([p.REFUSE, "incompatible_version", [2, 3]])
    assert version.value.theirs == (2, 3)


@pytest.mark.parametrize("hello", [
    [p.HELLO, "peerlink", True, 1, b"n" * 16],  # bool for int
    [p.HELLO, "peerlink", 2, 1, b"n" * 16],  # min > max
    [p.HELLO, "peerlink", 1, 1, "n" * 16],  # str for bytes
    [p.HELLO, "peerlink", 1, 1, b"n" * 16, "extra"],
])
def test_malformed_hello_is_a_protocol_error(hello: list[Any]) -> None:
    a = p.Handshake(p.Side.ACCEPTOR, identity=ident("a"), cookies=[b"k"])
    with pytest.raises(ProtocolError):
        a.receive(hello)
    assert a.take_outgoing() == []  # nothing revealed


@pytest.mark.parametrize("fields", [
    ["c", "n", "i", "h", True, {}],  # bool port
    ["c", "n", "i", "h", 0, {}],
    ["c", "n" * 256, "i", "h", 1, {}],
    ["c", "", "i", "h", 1, {}],
    ["c", "n", "i", "h", 1, []],
    ["c", "n", "i", "h", 1],
])
def test_identities_are_checked_field_by_field(fields: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        p.Identity.decode(msgpack.packb(fields))


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.text(max_size=30)
    | st.binary(max_size=40) | st.sampled_from([b"n" * 16, b"m" * 32, "peerlink", "is_self"]),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(values, min_size=1, max_size=6) | values, min_size=1, max_size=4),
       st.sampled_from([p.Side.DIALER, p.Side.ACCEPTOR]))
def test_any_input_gives_the_handshake_a_documented_error_or_progress(
    inputs: list[Any], side: p.Side
) -> None:
    hs = p.Handshake(side, identity=ident("x"), cookies=[b"k"])
    for value in inputs:
        if isinstance(value, list) and value and isinstance(value[0], int) and not isinstance(value[0], bool):
            value[0] = abs(value[0]) % 12  # mostly real message types
        try:
            hs.receive(value)
        except HandshakeError as exc:
            assert exc.reason in HANDSHAKE_REASONS
            return
        except ProtocolError:
            return


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_any_bytes_before_authentication_give_protocol_errors_only(data: bytes, cuts: list[int]) -> None:
    dec = p.FrameDecoder(2**20, preauth=True)
    stream = b"".join(frame(data[i:i + 40]) for i in range(0, len(data), 40)) + data
    pos = 0
    try:
        for cut in itertools.cycle(cuts):
            if pos >= len(stream):
                break
            for _ in dec.feed(stream[pos:pos + cut]):
                pass
            pos += cut
    except ProtocolError:
        pass
