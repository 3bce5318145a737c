"""Benchmark 2: request/reply round trip, 100-byte payload, 1 and 64 calls in flight.

A client process runs K concurrent loops of ``call`` against an echo handler in a server
process - a plain function, or an ``async def`` (what services write) - and every
call's round trip is timed with ``perf_counter_ns`` after a warm-up; the first 200 calls
of the fresh link, before the warm-up, are timed too ("cold").
Per round: p50, p90, p99 of all calls; across rounds: median and spread of those.
Baseline: a raw ``asyncio.Protocol`` that writes once per message (request and reply)
with ``msgpack.Unpacker`` streaming, and Distributed Erlang (K processes calling an
echo process on the other node).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from . import erlang
from .common import UVLOOP_NEEDS_O, Child, child_env, python_cmd, ratio, stop_all, summary, verdict
from .options import Options

SIZE = 100
INFLIGHT = (1, 64)


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    impl: str
    loop: str = "asyncio"
    erl_flags: tuple[str, ...] = ()
    src: str | None = None  # another peerlink tree (the A/B mode's patched series)
    handler: str = "sync"  # peerlink's echo handler: a function or an async def


PATCHED = "+patched"


def series_list(opts: Options) -> list[Series]:
    if opts.compare_src:  # A/B mode: this tree and the other, round by round
        base = [s for s in _series(opts) if s.impl in ("peerlink", "protocol")]
        return base + [replace(s, key=s.key + PATCHED, label=s.label + " [patched]", src=opts.compare_src)
                       for s in base if s.impl == "peerlink"]
    return _series(opts)


def _series(opts: Options) -> list[Series]:
    out = [
        Series("peerlink", "peerlink call", "peerlink"),
        Series("peerlink-async", "peerlink call, async handler", "peerlink", handler="async"),
        Series("protocol", "raw Protocol, write per message", "protocol"),
    ]
    if opts.erlang:
        out.append(Series("erlang", "Distributed Erlang", "erlang"))
        out.append(Series("erlang-s1", "Distributed Erlang, +S 1", "erlang", erl_flags=("+S", "1")))
    if opts.uvloop:
        out += [Series("peerlink-uvloop", "peerlink call, uvloop", "peerlink", loop="uvloop"),
                Series("peerlink-async-uvloop", "peerlink call, async handler, uvloop", "peerlink",
                       loop="uvloop", handler="async"),
                Series("protocol-uvloop", "raw Protocol, uvloop", "protocol", loop="uvloop")]
    return out


def call_count(opts: Options, k: int) -> int:
    return max(2_000, int((10_000 if k == 1 else 40_000) * opts.scale))


def _cpu(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["--cpu", str(cpu)]


def run_python(opts: Options, s: Series, k: int, n: int, *, cpus: tuple[int | None, int | None] | None = None,
               extra: Sequence[str] = ()) -> dict[str, Any]:
    """One client/server pair of ``bench.worker`` processes; ``cpus``: the (client,
    server) cores, by default separate ones with ``--pin`` and none without."""
    client_cpu, server_cpu = cpus if cpus is not None else ((0, 1) if opts.pin else (None, None))
    env = child_env(s.src or opts.src)
    opt = UVLOOP_NEEDS_O and s.loop == "uvloop" and s.impl == "peerlink"
    common = ["--impl", s.impl, "--loop", s.loop, *extra]
    server = Child(python_cmd("bench.worker", "lat-server", *common, "--handler", s.handler, *_cpu(server_cpu),
                              optimize=opt),
                   env=env, name=f"{s.key}-server")
    kids = [server]
    try:
        port = server.expect("port", 30)["port"]
        client = Child(python_cmd("bench.worker", "lat-client", *common, "--port", str(port), "--n", str(n),
                                  "--inflight", str(k), "--size", str(SIZE), *_cpu(client_cpu), optimize=opt),
                       env=env, name=f"{s.key}-client")
        kids.append(client)
        return client.expect("p50", 60 + n / 1000)
    finally:
        stop_all(kids)


def run(opts: Options) -> dict[str, Any]:
    series = series_list(opts)
    raw: dict[tuple[str, int], list[dict[str, Any]]] = {(s.key, k): [] for s in series for k in INFLIGHT}
    errors: dict[str, list[str]] = {}
    pairs = erlang.start_pairs(s.erl_flags for s in series if s.impl == "erlang")
    try:
        for rnd in range(opts.rounds):
            for s in series:
                for k in INFLIGHT:
                    n = call_count(opts, k)
                    try:
                        if s.impl == "erlang":
                            r = pairs[s.erl_flags].run("lat", n, SIZE, k)
                        else:
                            r = run_python(opts, s, k, n)
                    except Exception as exc:
                        errors.setdefault(f"{s.key}/{k}", []).append(str(exc)[-600:])
                        opts.log(f"latency {s.key} {k} failed: {str(exc)[-300:]}")
                        continue
                    raw[(s.key, k)].append(r)
                    opts.log(f"latency round {rnd + 1}/{opts.rounds} {s.key:16} {k:3} in flight "
                             f"p50 {r['p50']:8.1f} us  p99 {r['p99']:8.1f} us  {r['calls_per_s']:9.0f} calls/s")
                    time.sleep(0.2)
    finally:
        erlang.stop_pairs(pairs)

    results: list[dict[str, Any]] = []
    for s in series:
        for k in INFLIGHT:
            rounds = raw[(s.key, k)]
            best = sorted(rounds, key=lambda r: r["p50"])[len(rounds) // 2] if rounds else {}
            results.append({
                "key": s.key, "label": s.label, "impl": s.impl, "loop": s.loop, "inflight": k,
                "size": SIZE, "calls_per_round": call_count(opts, k),
                "p50_us": summary([r["p50"] for r in rounds]),
                "p90_us": summary([r["p90"] for r in rounds]),
                "p99_us": summary([r["p99"] for r in rounds]),
                "calls_per_s": summary([r["calls_per_s"] for r in rounds]),
                "client_cpu_us_per_call": summary([r["client_cpu_us_per_call"] for r in rounds
                                                   if "client_cpu_us_per_call" in r]),
                "cold_p50_us": summary([r["cold_p50"] for r in rounds if r.get("cold_p50") is not None]),
                "cdf_us_median_round": best.get("cdf", []),
            })

    def med(key: str, k: int, field: str = "p50_us") -> float | None:
        for r in results:
            if r["key"] == key and r["inflight"] == k:
                m: float | None = r[field]["median"]
                return m
        return None

    ratios = []
    for r in results:
        if r["impl"] == "peerlink":
            base_key = "protocol-uvloop" if r["loop"] == "uvloop" else "protocol"
            for base in (base_key, "erlang"):
                for field in ("p50_us", "p99_us"):
                    x = ratio(r[field]["median"], med(base, r["inflight"], field))
                    if x is not None:
                        ratios.append({"series": r["key"], "inflight": r["inflight"], "vs": base,
                                       "stat": field, "ratio": x})
    targets = []
    for key, base, what in (
            ("peerlink", "protocol", "call p50 (1 in flight), sync handler, ratio to raw Protocol"),
            ("peerlink-async", "protocol", "call p50 (1 in flight), async handler, ratio to raw Protocol"),
            ("peerlink-uvloop", "protocol-uvloop", "call p50 (1 in flight), sync handler, uvloop, ratio to raw"),
            ("peerlink-async-uvloop", "protocol-uvloop",
             "call p50 (1 in flight), async handler, uvloop, ratio to raw")):
        x = ratio(med(key, 1), med(base, 1))
        if x is None and key.endswith("uvloop") and not opts.uvloop:
            continue
        targets.append({"what": what, "value": x, "target": 1.2, "op": "<=",
                        "verdict": verdict(x, 1.2, higher_is_better=False),
                        "absolute_us": med(key, 1), "baseline_us": med(base, 1)})
    return {"benchmark": "latency", "method": __doc__, "results": results, "ratios": ratios,
            "targets": targets, "erlang": opts.erlang_note, "errors": errors}
