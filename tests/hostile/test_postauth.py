"""Attacks by a peer that knows the cookie and turns hostile after the handshake
(issue 11): decode bombs, values msgpack must not carry, malformed messages and
attacker-chosen topics, against a real ``peerlink node --json`` process while two
healthy peers keep calling it.

The hostile link may be closed (``leave(protocol_error)`` at the target); the healthy
links must not notice, and the target stays within the post-authentication budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from support.arena import Arena
from support.hostile import (
    BUDGET,
    MIB,
    array_keyed_maps,
    empty_arrays,
    empty_maps,
    frame,
    longest_run,
    nested_arrays,
    packb,
    raw_frame,
    send_around,
    string_key_map,
)

from peerlink import protocol as p

pytestmark = pytest.mark.timeout(120)


def array32(items: bytes, count: int) -> bytes:
    return b"\xdd" + count.to_bytes(4, "big") + items


SIZE = BUDGET.max_frame
# frames of exactly max_frame bytes: legal by size, each decodes to millions of values
POST_BOMBS: dict[str, Callable[[], bytes]] = {
    "empty_arrays": lambda: empty_arrays(SIZE),
    "empty_maps": lambda: empty_maps(SIZE),
    "string_keys_in_send": lambda: send_around("t", string_key_map(SIZE - 16)),
    "array_keys_in_send": lambda: send_around("t", array32(array_keyed_maps(SIZE - 16), (SIZE - 16) // 4)),
    "small_sends": lambda: b"\x93\x06\xa1t\xc0" * (SIZE // 5),  # 1.7 M messages in one frame
}


@pytest.mark.parametrize("kind", POST_BOMBS)
async def test_decode_bomb_after_auth_closes_the_link_within_budget(
    make_arena: Callable[..., Any], kind: str
) -> None:
    arena: Arena = await make_arena()
    body = POST_BOMBS[kind]()
    client = await arena.hostile_peer()
    await client.send(raw_frame(body))
    try:
        await arena.target.wait_event("leave", peer="mallory", reason="protocol_error", timeout=15)
        assert await client.wait_closed()
    finally:
        await arena.assert_unharmed(rss=BUDGET.postauth_rss)
    assert any("mallory" in line and "protocol_error" in line for line in arena.log().splitlines()), \
        "the target did not log why it closed the hostile link"


async def test_sustained_decode_bombs_after_auth_stay_within_budget(make_arena: Callable[..., Any]) -> None:
    # the budget is per hostile link, and it must hold for the next link too: one
    # attacker, 24 links one after the other, each closed for an 8 MiB bomb
    arena: Arena = await make_arena()
    bomb = raw_frame(empty_arrays(BUDGET.max_frame))
    for i in range(24):
        client = await arena.hostile_peer(f"mallory{i}", mark=(i == 0))
        await client.send(bomb)
        assert await client.wait_closed(timeout=10), f"bomb {i}: the link stayed open"
        client.abort()
    await arena.assert_unharmed(rss=BUDGET.postauth_rss)


async def test_decode_bomb_split_across_small_frames_closes_the_link_within_budget(
    make_arena: Callable[..., Any]
) -> None:
    # a frame never splits a message: one message begun in a small frame and carried on
    # in the next ones (each well under the size that is decoded with counting) must not
    # add up to more values than one frame may hold
    arena: Arena = await make_arena()
    n = BUDGET.max_message_items
    head = send_around("t", b"\xdd" + n.to_bytes(4, "big"))  # [SEND, "t", [<n elements>...
    inner = b"\xdd" + n.to_bytes(4, "big") + empty_arrays(n)  # an element: n empty arrays
    pieces = [inner[i:i + 200_000] for i in range(0, len(inner), 200_000)]
    client = await arena.hostile_peer()
    await client.send(raw_frame(head))
    for _ in range(32):  # 8 MiB of wire in frames of 200 kB
        if not await client.send(b"".join(raw_frame(piece) for piece in pieces)):
            break
    try:
        await arena.target.wait_event("leave", peer="mallory", reason="protocol_error", timeout=15)
    finally:
        await arena.assert_unharmed(rss=BUDGET.postauth_rss)


# values a message may not hold: the receiver closes the link (protocol_error)
FORBIDDEN: dict[str, bytes] = {
    "timestamp": packb([p.SEND, "t", msgpack.Timestamp(1, 2)]),
    "ext_type": packb([p.SEND, "t", msgpack.ExtType(5, b"x")]),
    "array_as_map_key": packb([p.SEND, "t", {(1, 2): 1}]),
    "map_as_map_key": b"\x93\x06\xa1t\x81\x81\x01\x01\x01",
    "timestamp_in_call": packb([p.CALL, 1, "t", [msgpack.Timestamp(0, 0)]]),
}

MALFORMED: dict[str, bytes] = {
    "send_too_short": packb([p.SEND]),
    "send_list_topic": packb([p.SEND, ["t"], None]),
    "call_map_topic": packb([p.CALL, 1, {"t": 1}, None]),
    "unknown_type": packb([99, "x"]),
    "bool_type": packb([True]),
    "not_an_array": packb("hello"),
    "empty_array": packb([]),
    "handshake_after_open": packb([p.HELLO, "peerlink", 1, 1, bytes(16)]),
    "goodbye_nested_reason": b"\x92\x09" + nested_arrays(1000),
    "too_deep": b"\x93\x06\xa1t" + nested_arrays(100_000),
    "reply_to_nothing_nested": b"\x94\x08\x01\xc2" + nested_arrays(1000),
}


@pytest.mark.parametrize("table", ["forbidden_values", "malformed_messages"])
async def test_bad_messages_after_auth_close_the_link_without_tracebacks(
    make_arena: Callable[..., Any], table: str
) -> None:
    arena: Arena = await make_arena()
    cases = FORBIDDEN if table == "forbidden_values" else MALFORMED
    problems = []
    for i, (name, body) in enumerate(cases.items()):
        client = await arena.hostile_peer(name=f"mallory{i}", mark=False)
        await client.send(raw_frame(body))
        reply = await client.barrier(timeout=10)
        if reply is not None:
            problems.append(f"{name}: accepted (the link stayed open and answered a call)")
        elif not await client.wait_closed(timeout=10):
            problems.append(f"{name}: link kept open")
        client.abort()
    try:
        await arena.assert_unharmed(rss=BUDGET.postauth_rss)
    except AssertionError as exc:
        problems.append(str(exc))
    assert not problems, "\n".join(problems)


async def test_attacker_chosen_topics_are_neither_kept_nor_logged(make_arena: Callable[..., Any]) -> None:
    arena: Arena = await make_arena()
    client = await arena.hostile_peer()
    # unique 4 MiB topics nobody handles: each legal by size, each a would-be log line
    # and rate-limiter key
    for i in range(24):
        assert await client.send(frame([p.SEND, f"{i:06d}" + "T" * (4 * MIB), None]))
    reply = await client.barrier()
    assert reply is not None, "an unknown topic closed the link (it is not a protocol error)"
    await arena.assert_unharmed(rss=BUDGET.postauth_rss)
    run = longest_run(arena.log(), "T")
    assert run <= BUDGET.logged_string_max, f"the log holds {run} characters of an attacker's topic"
