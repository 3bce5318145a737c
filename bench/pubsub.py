"""PubSub: publish-to-delivery latency (one message in flight) and throughput to N
subscribers on two remote nodes, peerlink vs Redis pub/sub (Debian's ``redis-server``
on loopback, ``redis.asyncio`` clients) measured in the same run, rounds interleaved.

Three processes per system: a publisher and two subscriber processes with
``SUBS`` subscriptions each (peerlink: three linked nodes; Redis: one connection per
subscription, as per-session subscribers would hold). Latency is one-way, publish to
delivery at each remote subscriber (CLOCK_MONOTONIC stamps across processes).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from typing import Any

from peerlink.testing import free_ports

from .common import Child, child_env, python_cmd, quantile, summary, table, wait_for
from .options import Options

SUBS = 4  # subscriptions per subscriber process
SIZE = 100  # payload bytes


def start_redis(port: int) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tempfile.gettempdir()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.02)
    proc.kill()
    return None


def spawn(impl: str, redis_port: int) -> list[Child]:
    env = child_env()
    if impl == "peerlink":
        ports = free_ports(3)
        addrs = [f"127.0.0.1:{p}" for p in ports]
        roles = [["--publisher"], ["--subs", str(SUBS), "--acker"], ["--subs", str(SUBS)]]
        kids = [Child(python_cmd("bench.psworker", "pl-node", "--name", f"n{i}", "--listen", addr,
                                 "--peers", *addrs, "--expect", "3", *roles[i]), env, name=f"pl-n{i}")
                for i, addr in enumerate(addrs)]
    else:
        roles = [["--publisher"], ["--subs", str(SUBS), "--acker"], ["--subs", str(SUBS)]]
        kids = [Child(python_cmd("bench.psworker", "redis", "--name", f"r{i}",
                                 "--redis", f"127.0.0.1:{redis_port}", *roles[i]), env, name=f"redis-{i}")
                for i in range(3)]
    for k in kids:
        k.expect("event", 60, "ready")
    if impl == "peerlink":  # the publisher knows both subscriber nodes, they know it
        send_all(kids[:1], {"cmd": "interest", "nodes": 2}, "interest")
        send_all(kids[1:2], {"cmd": "interest", "nodes": 0, "ack": 1}, "interest")
    return kids


def send_all(kids: list[Child], cmd: dict[str, Any], wait: str, timeout: float = 180) -> list[dict[str, Any]]:
    import json
    marks = [len(k.events) for k in kids]
    for k in kids:
        k.send_line(json.dumps(cmd))
    ok = wait_for(kids, lambda: all(any(e.get("event") == wait for e in k.events[m:])
                                    for k, m in zip(kids, marks, strict=True)), timeout)
    if not ok:
        raise RuntimeError(f"no {wait!r} from {[k.name for k in kids]}: {[k.stderr_tail() for k in kids]}")
    return [next(e for e in k.events[m:] if e.get("event") == wait) for k, m in zip(kids, marks, strict=True)]


def one_round(kids: list[Child], n_lat: int, n_tput: int) -> dict[str, float]:
    pub, subs = kids[0], kids[1:]
    send_all(subs, {"cmd": "arm", "n": n_lat}, "armed")
    send_all([pub], {"cmd": "latency", "n": n_lat, "size": SIZE}, "published")
    reports = send_all(subs, {"cmd": "report"}, "report")
    lat = [x / 1000 for r in reports for x in r["latencies_ns"]]
    send_all(subs, {"cmd": "arm", "n": n_tput}, "armed")
    pubbed = send_all([pub], {"cmd": "tput", "n": n_tput, "size": SIZE}, "published")[0]
    reports = send_all(subs, {"cmd": "report"}, "report")
    delivered = sum(r["count"] for r in reports)
    elapsed = (max(r["last_ns"] for r in reports) - pubbed["t0_ns"]) / 1e9
    return {"p50_us": quantile(lat, 0.5), "p99_us": quantile(lat, 0.99),
            "deliveries_per_s": delivered / elapsed, "publishes_per_s": n_tput / elapsed}


def run(opts: Options) -> dict[str, Any]:
    n_lat = max(200, int(3000 * opts.scale))
    n_tput = max(2000, int(50_000 * opts.scale))
    redis_port = free_ports(1)[0]
    redis = start_redis(redis_port)
    impls = ["peerlink"] + (["redis"] if redis is not None else [])
    results: dict[str, list[dict[str, float]]] = {i: [] for i in impls}
    kids = {}
    try:
        for impl in impls:
            kids[impl] = spawn(impl, redis_port)
        for r in range(opts.rounds):
            for impl in impls:
                results[impl].append(one_round(kids[impl], n_lat, n_tput))
                opts.log(f"pubsub round {r + 1}/{opts.rounds} {impl}: {results[impl][-1]}")
    finally:
        for ks in kids.values():
            for k in ks:
                k.stop()
        if redis is not None:
            redis.terminate()
            redis.wait(10)
    series = {impl: {m: summary([x[m] for x in rounds]) for m in rounds[0]}
              for impl, rounds in results.items()}
    pl, rd = series["peerlink"], series.get("redis")
    ratio = pl["p50_us"]["median"] / rd["p50_us"]["median"] if rd else None
    rows = [[impl, f"{s['p50_us']['median']:.0f}", f"{s['p99_us']['median']:.0f}",
             f"{s['publishes_per_s']['median']:,.0f}", f"{s['deliveries_per_s']['median']:,.0f}"]
            for impl, s in series.items()]
    return {
        "benchmark": "pubsub",
        "setup": f"1 publisher + 2 subscriber processes x {SUBS} subscriptions, {SIZE} B payload; "
                 f"latency: {n_lat} messages one in flight; throughput: {n_tput} messages",
        "redis": "not measured: redis-server not found" if redis is None else "redis-server (Debian) on loopback",
        "series": series,
        "table": {"headers": ["system", "p50 us (publish -> remote subscriber)", "p99 us",
                              "publishes/s", "deliveries/s (8 subscribers)"], "rows": rows},
        "targets": [{"what": "p50 publish->delivery, peerlink / Redis (same run)", "value": ratio,
                     "op": "<=", "target": 1.0,
                     "verdict": "not measured" if ratio is None else ("met" if ratio <= 1.0 else "MISSED")}],
    }


def render(d: dict[str, Any]) -> str:
    return f"{d['setup']}. Baseline: {d['redis']}.\n\n" + table(d["table"]["headers"], d["table"]["rows"])
