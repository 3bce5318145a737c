"""Presence convergence: 5 node processes, 10k and 100k tracked keys in one topic
(each node tracks a fifth). Measured: the time until every node's view holds every
entry after a burst of tracks; after a node is killed (-9: the kernel resets its
links); after a node is cut off (found by the heartbeat timeout) and after that
partition heals (the same incarnation links again and both sides send their whole
state); and memory per entry (RSS growth of a node / entries it holds). Default
timings (tick 1 s, timeout 4 s).

As root the nodes run in network namespaces (``tests/support/lab.py``) and the cut is
a real one (every packet of the node dropped); elsewhere they run on loopback and the
cut is SIGSTOP / SIGCONT (silent, then back with the same incarnation).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any

from peerlink.testing import free_ports

from .common import REPO, Child, child_env, python_cmd, summary, table
from .options import Options
from .pubsub import send_all

NODES = 5
TICK, TIMEOUT = 1.0, 4.0


def lab_or_none() -> Any:
    """A Lab of NODES namespaces, or None (not root, no netns)."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from support.lab import Lab, netns_unavailable_reason
    except ImportError:
        return None
    if netns_unavailable_reason() is not None:
        return None
    return Lab(NODES)


def cluster(lab: Any) -> list[Child]:
    if lab is None:
        addrs = [f"127.0.0.1:{p}" for p in free_ports(NODES)]
        prefixes: list[list[str]] = [[] for _ in addrs]
    else:
        addrs = lab.addresses(4370)
        prefixes = [lab.exec_prefix(i) for i in range(1, NODES + 1)]
    kids = [Child([*prefix, *python_cmd("bench.psworker", "pl-node", "--name", f"n{i}", "--listen", addr,
                                        "--peers", *addrs, "--expect", str(NODES), "--tick", str(TICK),
                                        "--timeout", str(TIMEOUT))], child_env(), name=f"n{i}")
            for i, (addr, prefix) in enumerate(zip(addrs, prefixes, strict=True))]
    for k in kids:
        k.expect("event", 60, "ready")
    return kids


def converge(kids: list[Child], count: int, t0_ns: int, timeout: float = 60) -> tuple[float | None, list[dict[str, Any]]]:
    """Seconds from ``t0_ns`` until every one of ``kids`` holds ``count`` entries
    (None: one did not within ``timeout``)."""
    reached = send_all(kids, {"cmd": "expect", "count": count, "timeout": timeout}, "reached", timeout + 5)
    if any(r.get("timed_out") for r in reached):
        return None, reached
    return (max(r["t_ns"] for r in reached) - t0_ns) / 1e9, reached


def one(keys: int) -> dict[str, Any]:
    lab = lab_or_none()
    kids = cluster(lab)
    try:
        rss0 = [k.find("event", "ready")["rss_kib"] for k in kids]  # type: ignore[index]
        per = keys // NODES
        t0 = time.monotonic_ns()
        for k in kids:
            k.send_line(json.dumps({"cmd": "track", "n": per}))
        burst, reached = converge(kids, keys, t0)
        kib = [r["rss_kib"] - r0 for r, r0 in zip(reached, rss0, strict=True)]
        per_entry = sorted(kib)[len(kib) // 2] * 1024 / keys

        dead, kids = kids[4], kids[:4]
        t0 = time.monotonic_ns()
        dead.signal(signal.SIGKILL)
        kill_s, _ = converge(kids, keys - per, t0)
        left = keys - per  # what the four others hold

        cut, rest = kids[3], kids[:3]
        t0 = time.monotonic_ns()
        if lab is None:
            cut.signal(signal.SIGSTOP)
        else:
            lab.isolate(4)
        cut_s, _ = converge(rest, left - per, t0)
        if lab is not None:  # the cut-off node has dropped the others too
            converge([cut], per, t0)
        t0 = time.monotonic_ns()
        if lab is None:
            cut.signal(signal.SIGCONT)
        else:
            lab.unisolate(4)
        heal_s, _ = converge(kids if lab is not None else rest, left, t0)
        kids.append(dead)  # stopped below with the others
        return {"burst_s": burst, "kill9_s": kill_s, "silent_s": cut_s, "heal_s": heal_s,
                "bytes_per_entry": per_entry, "netns": lab is not None}
    finally:
        for k in kids:
            k.stop()
        if lab is not None:
            lab.close()


def run(opts: Options) -> dict[str, Any]:
    sizes = [10_000, 100_000] if not opts.quick else [10_000]
    rounds = max(1, min(opts.rounds, 3))
    series: dict[str, dict[str, Any]] = {}
    for keys in sizes:
        got = []
        for r in range(rounds):
            got.append(one(keys))
            opts.log(f"presence {keys} keys round {r + 1}/{rounds}: {got[-1]}")
        netns = got[0].pop("netns")
        for g in got[1:]:
            g.pop("netns")
        series[str(keys)] = {m: summary([g[m] for g in got if g[m] is not None]) for m in got[0]}
        series[str(keys)]["not_converged"] = {m: sum(g[m] is None for g in got) for m in got[0]}
    cut = "partition (netns)" if netns else "silent (SIGSTOP)"
    heal = "partition heals" if netns else "back (SIGCONT)"
    def cell(s: dict[str, Any], m: str) -> str:
        med, missed = s[m]["median"], s["not_converged"][m]
        text = "-" if med is None else f"{med:.2f} s"
        return text + (f" ({missed} of {rounds} rounds did not converge in 60 s)" if missed else "")

    rows = [[f"{int(k):,}", *(cell(s, m) for m in ("burst_s", "kill9_s", "silent_s", "heal_s")),
             f"{s['bytes_per_entry']['median']:.0f} B"] for k, s in series.items()]
    big = series.get("100000")
    targets = []
    if big:
        def target(what: str, metric: str, limit: float) -> dict[str, Any]:
            v = big[metric]["median"]
            ok = v is not None and v <= limit and not big["not_converged"][metric]
            return {"what": what, "value": v, "op": "<=", "target": limit, "verdict": "met" if ok else "MISSED"}

        targets = [
            target("100k entries, 5 nodes: converged after a burst (s)", "burst_s", 2.0),
            target("after a node's death, kill -9 (s)", "kill9_s", TIMEOUT + 1),
            target(f"after a node is cut off, {cut}: heartbeat timeout (s)", "silent_s", TIMEOUT + 1),
            target("memory per replicated entry (bytes)", "bytes_per_entry", 1024),
        ]
    return {
        "benchmark": "presence",
        "setup": f"{NODES} node processes {'in network namespaces' if netns else 'on loopback'}, "
                 f"tick {TICK:g} s, timeout {TIMEOUT:g} s; "
                 f"medians of {rounds} rounds",
        "series": series,
        "table": {"headers": ["keys", "burst", "kill -9", cut, heal, "memory/entry"], "rows": rows},
        "netns": netns,
        "targets": targets,
    }


def render(d: dict[str, Any]) -> str:
    return d["setup"] + ". Time until every (remaining) node's view is right.\n\n" + table(
        d["table"]["headers"], d["table"]["rows"])
