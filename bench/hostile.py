"""Benchmark: what a hostile client costs a node (issue 11), at full size.

Setup per measurement (``tests/support/arena.py``, all real processes on loopback): a
target node (``peerlink node --json``, or ``tests/support/peer_app.py`` where the attack
needs its ``echo``/``slow`` handlers) and two healthy peers (``peer_app.py``), each
calling the target in a closed loop with 4 calls in flight. The attacker runs in this
process (``tests/support/hostile.py``).

Each round and attack: a fresh arena; the healthy peers' answered calls over
``BASELINE_S`` seconds give the **baseline** rate and round-trip; then the attack runs,
sustained, for ``ATTACK_S`` seconds (a one-shot attack is repeated: new connections,
new bombs), and we read

* **peak RSS growth** of the target: ``/proc/PID/clear_refs`` resets VmHWM when the
  attack starts; VmHWM at the end minus VmRSS at the start;
* **event-loop stall**, measured from outside: the slowest healthy call round trip that
  ended during the attack (or in the ``TAIL_S`` after it), against the slowest one of
  the baseline window;
* **healthy rate** during the attack as a fraction of the baseline of the same round;
* what went wrong on the way: leaves seen by the healthy peers, tracebacks and log bytes
  the target wrote.

Rounds are interleaved (round 1 of every attack, then round 2...), tables give medians
with the spread, and the JSON (``bench/results/hostile.json``) holds every round.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import REPO, summary
from .options import Options

sys.path.insert(0, str(REPO / "tests"))

from support.arena import HEALTHY, Arena, start_arena
from support.hostile import (
    BUDGET,
    KIB,
    MIB,
    Client,
    array_keyed_maps,
    empty_arrays,
    flood,
    frame,
    hello,
    raw_frame,
    send_around,
    source_address,
    string_key_map,
)
from support.nodeproc import NodeFactory

from peerlink import protocol as p

BASELINE_S = 1.5
ATTACK_S = 2.0
TAIL_S = 0.5
# healthy peers: 4 calls in flight each, no pause: the rate is what the target can answer
HEALTHY_CALLS = ("--window", "4", "--interval", "0")

Action = Callable[[Arena, float], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Attack:
    key: str
    label: str
    run: Action
    target_app: bool = False  # needs peer_app's handlers


_hosts = itertools.count()


def next_host() -> str:
    return source_address(2000 + next(_hosts) % 200)


async def until(deadline: float, action: Callable[[], Awaitable[Any]], concurrency: int = 1) -> int:
    """Run ``action`` again and again (``concurrency`` at a time) until ``deadline``."""
    count = 0

    async def worker() -> None:
        nonlocal count
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, TimeoutError, ConnectionError):
                await action()
            count += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count


def left(deadline: float) -> float:
    return max(0.05, deadline - time.monotonic())


# -- before authentication --------------------------------------------------------------


def preauth_bomb(body: bytes) -> Action:
    data = raw_frame(body)

    async def run(arena: Arena, deadline: float) -> dict[str, Any]:
        async def once() -> None:
            c = await Client.connect(arena.address, source=next_host())
            await c.send(data)
            await c.wait_closed(left(deadline))
            c.abort()

        return {"connections": await until(deadline, once, concurrency=2)}

    return run


async def stalled_frames(arena: Arena, deadline: float) -> dict[str, Any]:
    clients = [await Client.connect(arena.address, source=source_address(2300 + i)) for i in range(32)]
    header, body = BUDGET.max_frame.to_bytes(4, "big"), bytes(BUDGET.max_frame - 1)
    accepted = await asyncio.gather(*(c.push([header, body], window=left(deadline)) for c in clients))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.wait_closed(left(deadline)) for c in clients)), left(deadline))
    for c in clients:
        c.abort()
    return {"connections": len(clients), "bytes_accepted": sum(accepted)}


async def connect_flood(arena: Arena, deadline: float) -> dict[str, Any]:
    sources = [source_address(2400 + i) for i in range(125)]
    clients = await flood(arena.address, 1000, sources=sources, prefix=frame(hello()))
    opened = len(clients)
    while time.monotonic() < deadline:  # keep it up: new half-handshakes keep coming
        more = await flood(arena.address, 50, sources=sources, prefix=frame(hello()))
        clients += more
        opened += len(more)
        await asyncio.sleep(0.02)
    for c in clients:
        c.abort()
    return {"connections": opened}


async def garbage(arena: Arena, deadline: float) -> dict[str, Any]:
    async def once() -> None:
        c = await Client.connect(arena.address, source=next_host())
        await c.send(os.urandom(16 * KIB))
        await c.wait_closed(left(deadline))
        c.abort()

    return {"connections": await until(deadline, once, concurrency=8)}


async def refusal_reasons(arena: Arena, deadline: float) -> dict[str, Any]:
    async def once() -> None:
        c = await Client.connect(arena.address, source=next_host())
        await c.send(frame([p.REFUSE, secrets.token_hex(100), secrets.token_hex(100)]))
        await c.wait_closed(left(deadline))
        c.abort()

    return {"connections": await until(deadline, once, concurrency=8)}


async def slowloris(arena: Arena, deadline: float) -> dict[str, Any]:
    data = frame(hello())

    async def once() -> None:
        c = await Client.connect(arena.address, source=next_host())
        try:
            for i in range(len(data)):
                if time.monotonic() >= deadline or not await c.send(data[i:i + 1]):
                    return
                await asyncio.sleep(0.1)
        finally:
            c.abort()

    return {"connections": await until(deadline, once, concurrency=64)}


# -- after authentication ----------------------------------------------------------------


def postauth_frames(frames: Callable[[], list[bytes]]) -> Action:
    """An authenticated peer sends ``frames`` again and again; when the target closes
    the link, it authenticates anew (it knows the cookie) and goes on."""
    data = b"".join(frames())

    async def run(arena: Arena, deadline: float) -> dict[str, Any]:
        serial = itertools.count()

        async def once() -> None:
            c = await arena.hostile_peer(f"mallory{next(serial)}", mark=False, source=next_host())
            try:
                await c.send(data)
                await c.wait_closed(left(deadline))
            finally:
                c.abort()

        return {"links": await until(deadline, once)}

    return run


def split_bomb() -> list[bytes]:
    n = BUDGET.max_message_items
    inner = b"\xdd" + n.to_bytes(4, "big") + empty_arrays(n)
    pieces = [inner[i:i + 200_000] for i in range(0, len(inner), 200_000)]
    return [raw_frame(send_around("t", b"\xdd" + n.to_bytes(4, "big")))] + [raw_frame(x) for x in pieces] * 32


async def unknown_topics(arena: Arena, deadline: float) -> dict[str, Any]:
    c = await arena.hostile_peer("mallory", mark=False, source=next_host())
    sent = 0
    try:
        while time.monotonic() < deadline:
            if not await c.send(frame([p.SEND, secrets.token_hex(8) + "T" * (4 * MIB), None])):
                break
            sent += 1
    finally:
        c.abort()
    return {"messages": sent}


def pushing(message: bytes, *, rcvbuf: int | None = None) -> Action:
    """An authenticated peer writes ``message`` as fast as the target takes it."""

    async def run(arena: Arena, deadline: float) -> dict[str, Any]:
        serial = itertools.count()
        accepted = 0

        async def once() -> None:
            nonlocal accepted
            c = await arena.hostile_peer(f"mallory{next(serial)}", mark=False, source=next_host(),
                                         sndbuf=64 * KIB, rcvbuf=rcvbuf)
            try:
                accepted += await c.push(itertools.repeat(message), window=left(deadline))
            finally:
                c.abort()

        links = await until(deadline, once)
        return {"links": links, "bytes_accepted": accepted}

    return run


def attacks() -> list[Attack]:
    size = BUDGET.max_frame
    return [
        Attack("preauth-empty-arrays", "pre-auth: 8 MiB frame of empty arrays", preauth_bomb(empty_arrays(size))),
        Attack("preauth-string-keys", "pre-auth: 8 MiB map of 1.7 M string keys",
               preauth_bomb(string_key_map(size))),
        Attack("preauth-stalled-8mib", "pre-auth: 32 stalled 8 MiB frames", stalled_frames),
        Attack("connect-flood", "pre-auth: 1,000+ half-handshakes from 125 hosts", connect_flood),
        Attack("garbage", "pre-auth: 16 KiB of random bytes per connection", garbage),
        Attack("refusal-reasons", "pre-auth: REFUSE with unique 200-char reasons", refusal_reasons),
        Attack("slowloris", "pre-auth: 64 slowloris connections", slowloris),
        Attack("postauth-empty-arrays", "post-auth: 8 MiB frame of empty arrays",
               postauth_frames(lambda: [raw_frame(empty_arrays(size))])),
        Attack("postauth-string-keys", "post-auth: SEND of a 1.7 M-key map",
               postauth_frames(lambda: [raw_frame(send_around("t", string_key_map(size - 16)))])),
        Attack("postauth-array-keys", "post-auth: 8 MiB of array-keyed maps",
               postauth_frames(lambda: [raw_frame(array_keyed_maps(size))])),
        Attack("postauth-split-bomb", "post-auth: one message of empty arrays over 200 kB frames",
               postauth_frames(split_bomb)),
        Attack("unknown-topics", "post-auth: unique 4 MiB topics nobody handles", unknown_topics),
        Attack("slow-handler", "post-auth: 1 MiB messages to a slow handler",
               pushing(frame([p.SEND, "slow", bytes(MIB)])), target_app=True),
        Attack("unread-replies", "post-auth: 256 KiB calls, replies never read",
               pushing(frame([p.CALL, 1, "echo", bytes(256 * KIB)]), rcvbuf=64 * KIB), target_app=True),
        Attack("concurrent-handler", "post-auth: calls to a concurrent slow handler",
               pushing(b"".join(frame([p.CALL, i, "slow_concurrent", None]) for i in range(1, 1001))),
               target_app=True),
    ]


# -- measuring ----------------------------------------------------------------------------


def _answered(arena: Arena, t: float) -> int:
    """Calls answered to both healthy peers by time ``t`` (their last report before)."""
    total = 0
    for app in arena.healthy:
        last = 0
        for ev in app.events:
            if ev.get("event") == "progress" and ev["t"] <= t:
                last = ev["answered"]
        total += last
    return total


def _slowest(arena: Arena, t0: float, t1: float) -> float:
    return max((ev["rtt_max_ms"] for app in arena.healthy for ev in app.events
                if ev.get("event") == "progress" and t0 < ev["t"] <= t1), default=0.0)


async def measure(factory: NodeFactory, attack: Attack) -> dict[str, Any]:
    arena = await start_arena(factory, target_app=attack.target_app, calls=HEALTHY_CALLS)
    try:
        t0 = time.monotonic()
        await asyncio.sleep(BASELINE_S)
        t1 = time.monotonic()
        arena.mark()
        notes = await attack.run(arena, t1 + ATTACK_S)
        t2 = time.monotonic()
        await asyncio.sleep(TAIL_S)
        t3 = time.monotonic()
        peak = arena.observer.peak_growth()
        log = arena.log()
        baseline_rate = (_answered(arena, t1) - _answered(arena, t0)) / (t1 - t0)
        attack_rate = (_answered(arena, t2) - _answered(arena, t1)) / (t2 - t1)
        return {
            "peak_mib": peak / MIB,
            "stall_ms": _slowest(arena, t1, t3),
            "baseline_rtt_max_ms": _slowest(arena, t0, t1),
            "baseline_rate": baseline_rate,
            "rate_fraction": attack_rate / baseline_rate if baseline_rate else None,
            "attack_s": t2 - t1,
            "healthy_leaves": sum(len(arena.new_events(app, "leave")) for app in arena.healthy),
            "target_saw_healthy_leave": sum(ev.get("peer") in HEALTHY for ev in arena.new_events(arena.target, "leave")),
            "tracebacks": len(arena.observer.tracebacks(log)),
            "log_bytes": arena.observer.log_bytes_since_mark(),
            "target_alive": arena.target.returncode is None,
            **notes,
        }
    finally:
        await arena.aclose()


async def run_all(opts: Options) -> dict[str, Any]:
    chosen = attacks()
    rounds: dict[str, list[dict[str, Any]]] = {a.key: [] for a in chosen}
    with tempfile.TemporaryDirectory(prefix="peerlink-hostile-") as tmp:
        cookie = Path(tmp) / "cookie"
        cookie.write_text(secrets.token_hex(16) + "\n")
        factory = NodeFactory(Path(tmp) / "nodes", cookie_file=cookie, cluster="bench")
        for r in range(opts.rounds):
            for attack in chosen:
                result = await measure(factory, attack)
                rounds[attack.key].append(result)
                opts.log(f"hostile round {r + 1}/{opts.rounds} {attack.key}: peak +{result['peak_mib']:.1f} MiB, "
                         f"stall {result['stall_ms']:.0f} ms (baseline {result['baseline_rtt_max_ms']:.0f}), "
                         f"rate x{result['rate_fraction'] or 0:.2f}, leaves {result['healthy_leaves']}")
    results = []
    for attack in chosen:
        rs = rounds[attack.key]
        results.append({
            "key": attack.key, "label": attack.label, "target": "peer_app" if attack.target_app else "peerlink node",
            **{k: summary([x[k] for x in rs if x[k] is not None])
               for k in ("peak_mib", "stall_ms", "baseline_rtt_max_ms", "rate_fraction", "baseline_rate",
                         "log_bytes")},
            "healthy_leaves": [x["healthy_leaves"] for x in rs],
            "tracebacks": [x["tracebacks"] for x in rs],
            "rounds": rs,
        })
    return {"benchmark": "hostile", "baseline_s": BASELINE_S, "attack_s": ATTACK_S, "tail_s": TAIL_S,
            "healthy_calls": " ".join(HEALTHY_CALLS), "budget": {
                "preauth_rss_mib": BUDGET.preauth_rss / MIB, "postauth_rss_mib": BUDGET.postauth_rss / MIB},
            "results": results}


def run(opts: Options) -> dict[str, Any]:
    if opts.src:
        return {"benchmark": "hostile", "skipped": "--src is not supported: the arena runs this tree"}
    return asyncio.run(run_all(opts))
