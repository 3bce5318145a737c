"""Attacks on the dialling side (issue 11): the target discovers an address where a
hostile "peer" listens and answers the target's HELLO with malformed, forged or huge
messages, or relays the target's own bytes back to it. The target must refuse, keep
re-dialling with backoff (nothing an unauthenticated party says may outlive the
connection), print no traceback and stay within budget, while two healthy peers keep
calling it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
from support.arena import TICK, TIMEOUT, Arena
from support.hostile import (
    BUDGET,
    MIB,
    Client,
    FakePeer,
    empty_arrays,
    frame,
    longest_run,
    nested_arrays,
    raw_frame,
    source_address,
)
from support.hostile import hello as hello_message
from support.nodeproc import NodeFactory, scaled, static_url

from peerlink import protocol as p

pytestmark = pytest.mark.timeout(120)

NONCE = bytes(range(16))


def answers() -> dict[str, Callable[[list[Any]], bytes]]:
    """What a hostile acceptor answers a HELLO with (raw frames)."""
    fixed: dict[str, bytes] = {
        "refuse_version_strings": frame([p.REFUSE, "incompatible_version", ["a", "b"]]),
        "refuse_version_nan": frame([p.REFUSE, "incompatible_version", [float("nan"), 1.0]]),
        "refuse_version_inf": frame([p.REFUSE, "incompatible_version", [float("inf"), 1]]),
        "refuse_version_bools": frame([p.REFUSE, "incompatible_version", [True, False]]),
        "refuse_nested_reason": raw_frame(b"\x93\x0a" + nested_arrays(1000) + b"\xc0"),
        "refuse_nested_detail": raw_frame(b"\x93\x0a\xadwrong_cluster" + nested_arrays(1000)),
        "refuse_too_deep": raw_frame(b"\x93\x0a" + nested_arrays(100_000)),
        "refuse_map_reason": frame([p.REFUSE, {"a": [1]}, {"b": 2}]),
        "refuse_timestamp": frame([p.REFUSE, "wrong_cookie", msgpack.Timestamp(1, 1)]),
        "refuse_short": frame([p.REFUSE]),
        "challenge_short_nonce": frame([p.CHALLENGE, b"x"]),
        "challenge_str_nonce": frame([p.CHALLENGE, "x" * 16]),
        "challenge_bool_type": frame([True, NONCE]),
        "challenge_extra_field": frame([p.CHALLENGE, NONCE, "extra"]),
        "welcome_first": frame([p.WELCOME, 1, b"blob", b"mac"]),
        "two_messages": frame([p.CHALLENGE, NONCE], [p.CHALLENGE, NONCE]),
        "garbage": os.urandom(4096),
        "max_header": b"\xff\xff\xff\xff",
        "empty_arrays_bomb": raw_frame(empty_arrays(BUDGET.max_frame)),
    }
    out: dict[str, Callable[[list[Any]], bytes]] = {
        name: (lambda hello, data=data: data) for name, data in fixed.items()}
    # a CHALLENGE that echoes the dialler's own nonce (reflection)
    out["challenge_reflects_nonce"] = lambda hello: frame([p.CHALLENGE, hello[4]])
    return out


@contextlib.asynccontextmanager
async def fake_peer(factory: NodeFactory, answer: Callable[[list[Any], FakePeer], Any],
                    **options: Any) -> AsyncIterator[tuple[FakePeer, str]]:
    address = factory.address()
    fake = FakePeer(answer, **options)
    await fake.start(address)
    try:
        yield fake, address
    finally:
        await fake.close()


async def test_malformed_answers_to_our_hello_are_refused_without_tracebacks(
    make_arena: Callable[..., Any], node_factory: NodeFactory
) -> None:
    table = answers()
    order = list(table)

    async def answer(hello: list[Any], fake: FakePeer) -> bytes:
        return table[order[(len(fake.hellos) - 1) % len(order)]](hello)

    async with fake_peer(node_factory, answer, linger=0.05) as (fake, address):
        arena: Arena = await make_arena(discovery=(static_url([address]),))
        arena.observer.stderr_at_mark = 0  # the whole log: the target dialled before the mark
        dials = await fake.wait_dials(2 * len(order), timeout=60)
        assert dials >= 2 * len(order), (
            f"the target stopped re-dialling a hostile address after {dials} dials "
            f"(last answer: {order[(dials - 1) % len(order)]})")
        await arena.assert_unharmed(rss=BUDGET.preauth_rss)


async def test_forged_is_self_refusal_does_not_stick(
    make_arena: Callable[..., Any], node_factory: NodeFactory
) -> None:
    async def answer(hello: list[Any], fake: FakePeer) -> bytes:
        return frame([p.REFUSE, "is_self", None])

    async with fake_peer(node_factory, answer, linger=0.05) as (fake, address):
        arena: Arena = await make_arena(discovery=(static_url([address]),))
        dials = await fake.wait_dials(3, timeout=15)
        assert dials >= 3, (
            f"after {dials} forged 'is_self' refusal(s) the target stopped dialling that address")
    # a real node comes to live at that address: the target links to it
    await node_factory.start("real", listen=address, tick=TICK, timeout=TIMEOUT)
    await arena.target.wait_event("join", peer="real", timeout=15)
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)


async def test_forged_is_self_with_a_harvested_challenge_does_not_stick(
    make_arena: Callable[..., Any], node_factory: NodeFactory
) -> None:
    # the hostile acceptor answers the target's HELLO with a CHALLENGE nonce that the
    # target's own acceptor issued (to the attacker, who just sent it a HELLO), then
    # says "that is yourself": the nonce came from the target, the self-connection never
    # happened
    target: list[str] = []

    async def answer(hello: list[Any], fake: FakePeer) -> bytes:
        harvest = await Client.connect(target[0], source=source_address(600))
        await harvest.send_messages(hello_message())
        challenge = await harvest.recv()
        harvest.abort()
        return frame(challenge) + frame([p.REFUSE, "is_self", None])

    listen = node_factory.address()
    target.append(listen)
    async with fake_peer(node_factory, answer, linger=0.05) as (fake, address):
        arena: Arena = await make_arena(discovery=(static_url([address]),), listen=listen)
        dials = await fake.wait_dials(3, timeout=15)
        assert dials >= 3, (
            f"after {dials} forged 'is_self' refusal(s) carrying a challenge the target "
            "issued to someone else, the target stopped dialling that address")
    await node_factory.start("real", listen=address, tick=TICK, timeout=TIMEOUT)
    await arena.target.wait_event("join", peer="real", timeout=15)
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)


async def test_huge_refusal_reasons_from_a_dialled_address_are_neither_kept_nor_logged(
    make_arena: Callable[..., Any], node_factory: NodeFactory
) -> None:
    serial = itertools.count()

    async def answer(hello: list[Any], fake: FakePeer) -> bytes:
        i = next(serial)
        return frame([p.REFUSE, f"{i:06d}" + "R" * (4 * MIB), "R" * (2 * MIB) + f"{i:06d}"])

    async with fake_peer(node_factory, answer, linger=0.05) as (fake, address):
        arena: Arena = await make_arena(discovery=(static_url([address]),))
        arena.observer.stderr_at_mark = 0
        dials = await fake.wait_dials(fake.dials + 12, timeout=30)
        assert dials >= 12, f"the target stopped re-dialling after {dials} refusals"
        await arena.assert_unharmed(rss=BUDGET.preauth_rss)
    run = longest_run(arena.observer.stderr_path.read_text(errors="replace"), "R")
    assert run <= BUDGET.logged_string_max, f"the log holds {run} characters of a refusal reason"


async def test_reflected_handshake_never_links_the_target_to_itself(
    make_arena: Callable[..., Any], node_factory: NodeFactory
) -> None:
    # the address the target dials relays every byte to the target's own listener
    relay_address = node_factory.address()
    target: list[str] = []
    relayed = asyncio.Event()  # a relayed dial ran to its end

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def on_dial(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = target[0].rsplit(":", 1)
        r2, w2 = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, w2), pipe(r2, writer))
        relayed.set()

    host, port = relay_address.rsplit(":", 1)
    server = await asyncio.start_server(on_dial, host, int(port), reuse_address=True)
    try:
        listen = node_factory.address()
        target.append(listen)
        arena: Arena = await make_arena(discovery=(static_url([relay_address]),), listen=listen)
        await asyncio.wait_for(relayed.wait(), scaled(15))
        assert not [ev for ev in arena.target.events if ev.get("peer") == "target"], \
            "the target linked to itself through the relay"
        await arena.assert_unharmed(rss=BUDGET.preauth_rss)
    finally:
        server.close()
