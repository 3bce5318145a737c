"""Presence convergence: 5 node processes, 10k and 100k tracked keys in one topic
(each node tracks a fifth). Measured: the time until every node's view holds every
entry after a burst of tracks; after a node is killed (-9: the kernel resets its
links); after a node goes silent (SIGSTOP: found by the heartbeat timeout); after the
silent node comes back (SIGCONT: the same incarnation links again and both sides send
their whole state, the way a healed partition does); and memory per entry (RSS
growth of a node / entries it holds). Default timings (tick 1 s, timeout 4 s).
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

from peerlink.testing import free_ports

from .common import Child, child_env, python_cmd, summary, table
from .options import Options
from .pubsub import send_all

NODES = 5
TICK, TIMEOUT = 1.0, 4.0


def cluster() -> list[Child]:
    addrs = [f"127.0.0.1:{p}" for p in free_ports(NODES)]
    kids = [Child(python_cmd("bench.psworker", "pl-node", "--name", f"n{i}", "--listen", addr,
                             "--peers", *addrs, "--expect", str(NODES), "--tick", str(TICK),
                             "--timeout", str(TIMEOUT)), child_env(), name=f"n{i}")
            for i, addr in enumerate(addrs)]
    for k in kids:
        k.expect("event", 60, "ready")
    return kids


def converge(kids: list[Child], count: int, t0_ns: int) -> tuple[float, list[dict[str, Any]]]:
    reached = send_all(kids, {"cmd": "expect", "count": count, "timeout": 300}, "reached")
    return (max(r["t_ns"] for r in reached) - t0_ns) / 1e9, reached


def one(keys: int) -> dict[str, float]:
    kids = cluster()
    try:
        rss0 = [k.find("event", "ready")["rss_kib"] for k in kids]  # type: ignore[index]
        per = keys // NODES
        t0 = time.monotonic_ns()
        for k in kids:
            k.send_line(json.dumps({"cmd": "track", "n": per}))
        burst, reached = converge(kids, keys, t0)
        kib = [r["rss_kib"] - r0 for r, r0 in zip(reached, rss0, strict=True)]
        per_entry = sorted(kib)[len(kib) // 2] * 1024 / keys

        silent, rest = kids[3], kids[:3] + kids[4:]
        t0 = time.monotonic_ns()
        silent.signal(signal.SIGSTOP)
        silent_s, _ = converge(rest, keys - per, t0)
        t0 = time.monotonic_ns()
        silent.signal(signal.SIGCONT)
        heal_s, _ = converge(rest, keys, t0)

        dead, rest = kids[4], kids[:4]
        t0 = time.monotonic_ns()
        dead.signal(signal.SIGKILL)
        kill_s, _ = converge(rest, keys - per, t0)
        return {"burst_s": burst, "kill9_s": kill_s, "silent_s": silent_s, "heal_s": heal_s,
                "bytes_per_entry": per_entry}
    finally:
        for k in kids:
            k.stop()


def run(opts: Options) -> dict[str, Any]:
    sizes = [10_000, 100_000] if not opts.quick else [10_000]
    rounds = max(1, min(opts.rounds, 3))
    series: dict[str, dict[str, Any]] = {}
    for keys in sizes:
        got = []
        for r in range(rounds):
            got.append(one(keys))
            opts.log(f"presence {keys} keys round {r + 1}/{rounds}: {got[-1]}")
        series[str(keys)] = {m: summary([g[m] for g in got]) for m in got[0]}
    rows = [[f"{int(k):,}", *(f"{s[m]['median']:.2f} s" for m in ("burst_s", "kill9_s", "silent_s", "heal_s")),
             f"{s['bytes_per_entry']['median']:.0f} B"] for k, s in series.items()]
    big = series.get("100000")
    targets = []
    if big:
        b, k, m = (big[x]["median"] for x in ("burst_s", "kill9_s", "bytes_per_entry"))
        s = big["silent_s"]["median"]
        targets = [
            {"what": "100k entries, 5 nodes: converged after a burst (s)", "value": b, "op": "<=",
             "target": 2.0, "verdict": "met" if b <= 2.0 else "MISSED"},
            {"what": "after a node's death, kill -9 (s)", "value": k, "op": "<=",
             "target": TIMEOUT + 1, "verdict": "met" if k <= TIMEOUT + 1 else "MISSED"},
            {"what": "after a node's death, silent (SIGSTOP; heartbeat timeout) (s)", "value": s,
             "op": "<=", "target": TIMEOUT + 1, "verdict": "met" if s <= TIMEOUT + 1 else "MISSED"},
            {"what": "memory per replicated entry (bytes)", "value": m, "op": "<=", "target": 1024,
             "verdict": "met" if m <= 1024 else "MISSED"},
        ]
    return {
        "benchmark": "presence",
        "setup": f"{NODES} node processes on loopback, tick {TICK:g} s, timeout {TIMEOUT:g} s; "
                 f"medians of {rounds} rounds",
        "series": series,
        "table": {"headers": ["keys", "burst", "kill -9", "silent (SIGSTOP)", "heal (SIGCONT)",
                              "memory/entry"], "rows": rows},
        "targets": targets,
    }


def render(d: dict[str, Any]) -> str:
    return d["setup"] + ". Time until every (remaining) node's view is right.\n\n" + table(
        d["table"]["headers"], d["table"]["rows"])
