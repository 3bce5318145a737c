"""Backpressure in bytes (issue 11): an authenticated peer that sends 1 MiB messages to
a slow handler, or floods calls and never reads the replies, must be pushed back (TCP
backpressure) instead of buffered. The target here is ``peer_app.py`` (a real Node in
its own process with an ``echo`` and a ``slow`` handler); two healthy peers keep
calling its ``echo`` throughout."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from support.arena import Arena
from support.hostile import BUDGET, KIB, MIB, frame

from peerlink import protocol as p

pytestmark = pytest.mark.timeout(120)


def kernel_buffers() -> int:
    """The most the kernel may hold for one loopback connection: the receiver's
    autotuned buffer (tcp_rmem max) and the sender's (tcp_wmem max)."""
    total = 0
    for name in ("tcp_rmem", "tcp_wmem"):
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            total += int(f.read().split()[2])
    return total


async def test_slow_handler_pushes_back_in_bytes(make_arena: Callable[..., Any]) -> None:
    arena: Arena = await make_arena(target_app=True)
    client = await arena.hostile_peer(sndbuf=64 * KIB)
    message = frame([p.SEND, "slow", bytes(MIB)])
    attempted = 256 * len(message)
    accepted = await client.push(itertools.repeat(message, 256), window=3)
    # the target may hold its inbox (+ one message) and a partial frame; the rest of
    # what we could write sits in kernel buffers
    bound = BUDGET.inbox_bytes + 2 * len(message) + BUDGET.max_frame + kernel_buffers()
    assert accepted <= bound, (
        f"the target took {accepted / MIB:.0f} MiB of 1 MiB messages for a handler that "
        f"holds each one (bound {bound / MIB:.0f} MiB of {attempted / MIB:.0f} MiB): no backpressure")
    await arena.assert_unharmed(rss=BUDGET.postauth_rss)
    client.abort()


async def test_unread_replies_pause_the_caller_and_end_its_link(make_arena: Callable[..., Any]) -> None:
    arena: Arena = await make_arena(target_app=True)
    client = await arena.hostile_peer(sndbuf=64 * KIB, rcvbuf=64 * KIB)
    # 256 KiB calls to echo (each reply as large), and we never read a reply
    payload = bytes(256 * KIB)
    calls = (frame([p.CALL, i, "echo", payload]) for i in range(1, 801))
    accepted = await client.push(calls, window=5)
    bound = (BUDGET.write_buffer_high + BUDGET.inbox_bytes + 2 * len(payload) + BUDGET.max_frame
             + kernel_buffers())
    assert accepted <= bound, (
        f"the target took {accepted / MIB:.0f} MiB of calls whose replies nobody reads "
        f"(bound {bound / MIB:.0f} MiB): it kept reading and buffering replies")
    # a peer that accepts none of the target's pending bytes for `timeout` is dead
    await arena.target.wait_event("leave", peer="mallory", reason="timeout", timeout=15)
    await arena.assert_unharmed(rss=BUDGET.postauth_rss)
    client.abort()


async def test_calls_to_a_concurrent_handler_are_bounded(make_arena: Callable[..., Any]) -> None:
    arena: Arena = await make_arena(target_app=True)
    client = await arena.hostile_peer(sndbuf=64 * KIB)
    # tiny calls to a handler that runs each in its own task and holds it: without a
    # cap, one task (and its coroutine frames) per call
    batch = b"".join(frame([p.CALL, i, "slow_concurrent", None]) for i in range(1, 1001))
    accepted = await client.push(itertools.repeat(batch, 200), window=2)
    await arena.assert_unharmed(rss=BUDGET.postauth_rss)
    print(f"accepted {accepted / len(batch) * 1000:,.0f} calls")
    client.abort()
