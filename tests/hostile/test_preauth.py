"""Attacks by a party that does not know the cookie (issue 11), over real sockets
against a real ``peerlink node --json`` process while two healthy peers keep calling it.

Each test: the attack is refused (the target hangs up; the reason is logged), the
healthy peers see no leave and keep getting answers, the target prints no traceback,
its log and peak RSS grow by at most the documented budget (``support.hostile.Budget``).
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from support.arena import TICK, TIMEOUT, Arena
from support.hostile import (
    BUDGET,
    KIB,
    MIB,
    Client,
    array_keyed_maps,
    count_closed,
    empty_arrays,
    empty_maps,
    flood,
    frame,
    hello,
    longest_run,
    nested_arrays,
    packb,
    raw_frame,
    source_address,
    string_key_map,
)
from support.nodeproc import NodeFactory, static_url

from peerlink import protocol as p
from peerlink.errors import AuthenticationFailed, ClusterMismatch, VersionMismatch

pytestmark = pytest.mark.timeout(120)

BOMBS: dict[str, Callable[[int], bytes]] = {
    "empty_arrays": empty_arrays,
    "empty_maps": empty_maps,
    "string_keys": string_key_map,
    "array_keys": array_keyed_maps,
}


@pytest.mark.parametrize("kind", BOMBS)
async def test_decode_bomb_before_auth_is_refused_within_budget(
    make_arena: Callable[..., Any], kind: str
) -> None:
    arena: Arena = await make_arena()
    host = source_address(1)
    # a frame that fits max_frame (legal before issue 11: 270-660 MB, a 2.5-5 s stall),
    # then one that fits the pre-auth frame limit (the decoder's limits must refuse it)
    for size in (BUDGET.max_frame, BUDGET.preauth_max_frame):
        client = await Client.connect(arena.address, source=host)
        await client.send(raw_frame(BOMBS[kind](size)))
        assert await client.wait_closed(timeout=10), f"the target kept a {size}-byte {kind} bomb's connection open"
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)
    arena.assert_refusal_logged(host)


async def test_stalled_large_frames_before_auth_are_not_buffered(make_arena: Callable[..., Any]) -> None:
    arena: Arena = await make_arena()
    # 32 connections (from 32 hosts: no per-host cap helps) each announce a frame that
    # fits max_frame, send all of it but the last byte, and stall
    clients = [await Client.connect(arena.address, source=source_address(10 + i)) for i in range(32)]
    body = bytes(BUDGET.max_frame - 1)
    header = BUDGET.max_frame.to_bytes(4, "big")
    await asyncio.gather(*(c.push([header, body], window=10) for c in clients))
    # the target hangs up on every one long before its 30 s handshake timeout
    closed = await count_closed(clients, len(clients), timeout=10)
    assert closed == len(clients), f"the target still holds {len(clients) - closed} stalled 8 MiB frames"
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)


async def test_connect_flood_holds_at_most_max_unauthenticated(
    make_arena: Callable[..., Any], node_factory: NodeFactory
) -> None:
    arena: Arena = await make_arena()
    fds_before = arena.observer.fds()
    # 1,000 half-handshakes (HELLO sent, CHALLENGE never answered) from 125 hosts, 8
    # each: under the per-host cap, so only the global cap can hold them
    sources = [source_address(100 + i) for i in range(125)]
    clients = await flood(arena.address, 1000, sources=sources, prefix=frame(hello()))
    excess = len(clients) - BUDGET.max_unauthenticated
    closed = await count_closed(clients, excess, timeout=15)
    assert closed >= excess, (
        f"of {len(clients)} stalled half-handshakes the target closed only {closed} "
        f"(it may hold {BUDGET.max_unauthenticated})")
    held = arena.observer.fds() - fds_before
    assert held <= BUDGET.max_unauthenticated + 8, f"the target holds {held} more descriptors than before"

    # the flood goes on; a real peer still links in the middle of it
    stop = asyncio.Event()

    async def keep_flooding() -> None:
        i = 0
        while not stop.is_set():
            extra = await flood(arena.address, 16, sources=sources[i % 100:i % 100 + 16],
                                prefix=frame(hello()))
            clients.extend(extra)
            i += 16
            await asyncio.sleep(0.01)

    flooder = asyncio.create_task(keep_flooding())
    try:
        await node_factory.start("late", discovery=[static_url([arena.address])], tick=TICK, timeout=TIMEOUT)
        await arena.target.wait_event("join", peer="late", timeout=10)
    finally:
        stop.set()
        await flooder
        for c in clients:
            c.abort()
    # refusals are logged once per (source address, reason) per minute: here "evicted"
    # and "connection_lost" (those we dropped) for each of the 125 addresses; the
    # volume across addresses is test_refusals_from_many_hosts_do_not_flood_the_log's
    await arena.assert_unharmed(rss=BUDGET.preauth_rss, log_bytes=len(sources) * 2 * 256 + 4 * KIB)


async def test_one_host_holds_at_most_max_unauthenticated_per_host(make_arena: Callable[..., Any]) -> None:
    arena: Arena = await make_arena()
    host = source_address(300)
    clients = await flood(arena.address, 100, sources=[host], prefix=frame(hello()))
    excess = len(clients) - BUDGET.max_unauthenticated_per_host
    closed = await count_closed(clients, excess, timeout=15)
    assert closed >= excess, (
        f"one host holds {len(clients) - closed} half-handshakes "
        f"(the per-host cap is {BUDGET.max_unauthenticated_per_host})")
    # another host is still served at once
    other = await Client.connect(arena.address, source=source_address(301))
    await other.send_messages(hello())
    answer = await other.recv()
    assert isinstance(answer, list) and answer[0] == p.CHALLENGE
    for c in [*clients, other]:
        c.abort()
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)


async def test_slowloris_is_dropped_at_the_handshake_timeout(make_arena: Callable[..., Any]) -> None:
    arena: Arena = await make_arena(target_options=("--handshake-timeout", "1"))
    client = await Client.connect(arena.address, source=source_address(2))
    data = frame(hello())

    async def dribble() -> None:  # one byte every 100 ms: ~3 s for the HELLO
        for i in range(len(data)):
            if not await client.send(data[i:i + 1]):
                return
            await asyncio.sleep(0.1)

    dribbler = asyncio.create_task(dribble())
    try:
        assert await client.wait_closed(timeout=1 + 2), "a slowloris outlived the 1 s handshake timeout"
    finally:
        dribbler.cancel()
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)


GARBAGE: dict[str, bytes] = {
    "random": os.urandom(64 * KIB),
    "max_header": b"\xff\xff\xff\xff",
    "just_over_preauth_limit": (BUDGET.preauth_max_frame + 1).to_bytes(4, "big"),
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "tls_client_hello": bytes.fromhex("16030100a5010000a10303") + os.urandom(160),
    "empty_frame": b"\x00\x00\x00\x00",
    "truncated_msgpack": raw_frame(b"\x95\x00\xa8peerl"),
    "invalid_utf8": raw_frame(b"\x95\x00\xa8\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\x01\x01\xc4\x10" + bytes(16)),
}


async def test_garbage_and_oversized_headers_are_refused(make_arena: Callable[..., Any]) -> None:
    arena: Arena = await make_arena()
    still_open = []
    for i, (name, data) in enumerate(GARBAGE.items()):
        client = await Client.connect(arena.address, source=source_address(20 + i))
        await client.send(data)
        if not await client.wait_closed(timeout=10):
            still_open.append(name)
        client.abort()
    assert not still_open, f"the target kept these connections open: {still_open}"
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)
    arena.assert_refusal_logged(source_address(20))


NONCE = bytes(range(16))
# raw message bodies (one frame each); none of them is a valid first handshake message
MALFORMED: dict[str, bytes] = {
    "hello_str_versions": packb([p.HELLO, "peerlink", "1", "1", NONCE]),
    "hello_bool_versions": packb([p.HELLO, "peerlink", True, True, NONCE]),
    "hello_float_versions": packb([p.HELLO, "peerlink", 1.0, 1.0, NONCE]),
    "hello_bool_type": packb([False, "peerlink", 1, 1, NONCE]),
    "hello_short_nonce": packb([p.HELLO, "peerlink", 1, 1, b"x"]),
    "hello_str_nonce": packb([p.HELLO, "peerlink", 1, 1, "x" * 16]),
    "hello_extra_field": packb([p.HELLO, "peerlink", 1, 1, NONCE, "extra"]),
    "hello_wrong_magic": packb([p.HELLO, "peerlinx", 1, 1, NONCE]),
    "hello_ext_nonce": packb([p.HELLO, "peerlink", 1, 1, msgpack.ExtType(1, NONCE)]),
    "hello_timestamp_nonce": packb([p.HELLO, "peerlink", 1, 1, msgpack.Timestamp(1, 2)]),
    "hello_map": packb({"type": 0}),
    "hello_twice_in_one_frame": packb(hello(NONCE)) + packb(hello(NONCE)),
    "int_message": packb(5),
    "empty_array": packb([]),
    "long_array": packb([p.HELLO, *range(100)]),
    "proof_first": packb([p.PROOF, b"identity", b"mac"]),
    "refuse_version_strings": packb([p.REFUSE, "incompatible_version", ["a", "b"]]),
    "refuse_version_nan": packb([p.REFUSE, "incompatible_version", [float("nan"), 1.0]]),
    "refuse_version_inf": packb([p.REFUSE, "incompatible_version", [float("inf"), 1]]),
    "refuse_version_huge": packb([p.REFUSE, "incompatible_version", [2**64 - 1, -(2**63)]]),
    "refuse_version_map": packb([p.REFUSE, "incompatible_version", {"a": 1}]),
    "refuse_nested_reason": b"\x93\x0a" + nested_arrays(1000) + b"\xc0",
    "refuse_nested_detail": b"\x93\x0a\xadwrong_cluster" + nested_arrays(1000),
    "refuse_too_deep": b"\x93\x0a" + nested_arrays(100_000),
    "refuse_map_reason": packb([p.REFUSE, {"a": [1, 2]}, None]),
    "refuse_bool": packb([p.REFUSE, True, True]),
    "refuse_bin_reason": packb([p.REFUSE, b"\xff" * 64, b"\x00"]),
    "refuse_short": packb([p.REFUSE]),
}


async def test_malformed_handshake_messages_are_refused_without_tracebacks(
    make_arena: Callable[..., Any]
) -> None:
    arena: Arena = await make_arena()
    problems = []
    for i, (name, body) in enumerate(MALFORMED.items()):
        client = await Client.connect(arena.address, source=source_address(40 + i))
        await client.send(raw_frame(body))
        answer = await client.recv(timeout=10)
        if isinstance(answer, list) and answer and answer[0] == p.CHALLENGE:
            problems.append(f"{name}: answered with a CHALLENGE (the message was accepted)")
        elif not await client.wait_closed(timeout=10):
            problems.append(f"{name}: connection kept open")
        client.abort()
    try:
        await arena.assert_unharmed(rss=BUDGET.preauth_rss)
    except AssertionError as exc:
        problems.append(str(exc))
    assert not problems, "\n".join(problems)


async def test_attacker_chosen_refusal_reasons_are_neither_kept_nor_logged(
    make_arena: Callable[..., Any]
) -> None:
    arena: Arena = await make_arena()
    host = source_address(400)

    async def refuse_with(reason: str, detail: str | None = None) -> None:
        client = await Client.connect(arena.address, source=host)
        await client.send(frame([p.REFUSE, reason, detail]))
        await client.wait_closed(timeout=10)
        client.abort()

    # unique 4 MiB reasons (over the pre-auth frame limit: refused from the header)...
    for i in range(24):
        await refuse_with(f"{i:06d}" + "R" * (4 * MIB))
    # ...and many unique short ones that fit it
    for start in range(0, 256, 32):
        await asyncio.gather(*(refuse_with(f"{i:06d}" + "R" * 200, "R" * 200 + f"{i:06d}")
                               for i in range(start, start + 32)))
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)
    run = longest_run(arena.log(), "R")
    assert run <= BUDGET.logged_string_max, f"the log holds {run} characters of an attacker's string"


async def test_wrong_cookie_cluster_and_version_are_refused(make_arena: Callable[..., Any]) -> None:
    arena: Arena = await make_arena()
    cases: list[tuple[str, dict[str, Any], type[Exception]]] = [
        ("wrong cookie", {"cluster": arena.cluster, "cookie": b"not-the-cookie"}, AuthenticationFailed),
        ("wrong cluster", {"cluster": "other", "cookie": arena.cookie}, ClusterMismatch),
        ("no common version", {"cluster": arena.cluster, "cookie": arena.cookie, "versions": (7, 9)},
         VersionMismatch),
    ]
    for i, (what, options, error) in enumerate(cases):
        client = await Client.connect(arena.address, source=source_address(60 + i))
        with pytest.raises(error):
            await client.authenticate(name=f"intruder{i}", **options)
        assert await client.wait_closed(), f"{what}: connection kept open after the refusal"
        client.abort()
        arena.assert_refusal_logged(source_address(60 + i))
    assert not arena.new_events(arena.target, "join"), "an intruder joined"
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)


async def test_own_name_is_refused(make_arena: Callable[..., Any]) -> None:
    arena: Arena = await make_arena()
    client = await Client.connect(arena.address, source=source_address(70))
    # knows the cookie but claims the target's own name (another incarnation)
    try:
        await client.authenticate(cluster=arena.cluster, cookie=arena.cookie, name="target")
    except Exception:
        pass  # refusing during the handshake is as good as closing right after it
    assert await client.wait_closed(), "a link claiming the target's own name stayed open"
    client.abort()
    assert not arena.new_events(arena.target, "join"), "the target joined a peer with its own name"
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)


async def test_replayed_handshake_is_refused(make_arena: Callable[..., Any]) -> None:
    arena: Arena = await make_arena()
    # a legitimate dialler's session, recorded by an eavesdropper
    legit = await Client.connect(arena.address)
    await legit.authenticate(cluster=arena.cluster, cookie=arena.cookie, name="legit")
    await arena.target.wait_event("join", peer="legit")
    recorded_hello, recorded_proof = legit.transcript[0], legit.transcript[1]
    legit.close()
    await arena.target.wait_event("leave", peer="legit")
    arena.mark()
    # replayed on a new connection: the target's fresh CHALLENGE makes the proof stale
    host = source_address(80)
    replay = await Client.connect(arena.address, source=host)
    await replay.send_messages(recorded_hello)
    challenge = await replay.recv()
    assert isinstance(challenge, list) and challenge[0] == p.CHALLENGE
    await replay.send_messages(recorded_proof)
    refusal = await replay.recv()
    assert refusal is None or refusal[0] == p.REFUSE, f"a replayed proof was answered with {refusal!r}"
    assert await replay.wait_closed()
    assert not arena.new_events(arena.target, "join"), "the replayed session joined"
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)
    arena.assert_refusal_logged(host)


async def test_descriptor_exhaustion_keeps_links_and_recovers(
    make_arena: Callable[..., Any], node_factory: NodeFactory
) -> None:
    arena: Arena = await make_arena()
    # the target may open only a couple of dozen more descriptors than it has now
    limit = arena.observer.fds() + 24
    resource.prlimit(arena.target.pid, resource.RLIMIT_NOFILE, (limit, limit))
    clients = await flood(arena.address, 200, sources=[source_address(500 + i) for i in range(50)],
                          prefix=frame(hello()))
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)
    for c in clients:
        c.abort()
    # the flood is gone: a new peer links again
    await node_factory.start("late", discovery=[static_url([arena.address])], tick=TICK, timeout=TIMEOUT)
    await arena.target.wait_event("join", peer="late", timeout=15)


async def test_refusals_from_many_hosts_do_not_flood_the_log(make_arena: Callable[..., Any]) -> None:
    arena: Arena = await make_arena()
    # one bad frame from each of 1,000 source addresses (an IPv6 attacker has 2**64):
    # the per-(host, reason) limit alone lets every one of them log a WARNING
    clients = await flood(arena.address, 1000, sources=[source_address(1000 + i) for i in range(1000)],
                          prefix=frame([p.PROOF, b"x" * 32, b"y" * 32]))
    closed = await count_closed(clients, len(clients), timeout=15)
    assert closed == len(clients)
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)
