"""Benchmark 1: one-way throughput over one link on loopback.

The sender process sends N messages as fast as its API allows; the receiver process
hands each to a handler that counts. msgs/s = N / (receiver's time of the Nth message -
sender's time before the first send), both CLOCK_MONOTONIC. MB/s counts payload bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from . import erlang
from .common import UVLOOP_NEEDS_O, Child, child_env, python_cmd, ratio, stop_all, summary, verdict
from .options import Options

SIZES = (100, 1024)


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    impl: str  # peerlink | streams | protocol | erlang
    handler: str = "sync"
    mode: str = "nowait"
    loop: str = "asyncio"
    erl_flags: tuple[str, ...] = ()
    src: str | None = None  # another peerlink tree (the A/B mode's patched series)
    sizes: tuple[int, ...] = SIZES
    payload: str = "bytes"  # or "dict": a few str/int/float fields, as services send


PATCHED = "+patched"


def series_list(opts: Options) -> list[Series]:
    if opts.compare_src:  # A/B mode: this tree and the other, round by round
        base = [s for s in _series(opts) if s.impl == "peerlink" or s.key == "protocol"]
        return base + [replace(s, key=s.key + PATCHED, label=s.label + " [patched]", src=opts.compare_src)
                       for s in base if s.impl == "peerlink"]
    return _series(opts)


def _series(opts: Options) -> list[Series]:
    out = [
        Series("peerlink-sync", "peerlink, sync handler (send_nowait)", "peerlink"),
        Series("peerlink-sync-await", "peerlink, sync handler (await send)", "peerlink", mode="await",
               sizes=(100,)),
        Series("peerlink-async", "peerlink, async handler", "peerlink", handler="async"),
        Series("peerlink-async-dict", "peerlink, async handler, dict payload", "peerlink", handler="async",
               payload="dict"),
        Series("streams", "(a) asyncio streams, write per frame", "streams"),
        Series("protocol", "(b) asyncio Protocol, coalesced + Unpacker", "protocol"),
        Series("protocol-dict", "(b) asyncio Protocol, dict payload", "protocol", payload="dict"),
    ]
    if opts.erlang:
        out.append(Series("erlang", "(c) Distributed Erlang", "erlang"))
        out.append(Series("erlang-s1", "(c) Distributed Erlang, +S 1 (one scheduler per node)", "erlang",
                          erl_flags=("+S", "1")))
    if opts.uvloop:
        out += [
            Series("peerlink-sync-uvloop", "peerlink, sync handler, uvloop", "peerlink", loop="uvloop"),
            Series("protocol-uvloop", "(b) asyncio Protocol, uvloop", "protocol", loop="uvloop"),
        ]
    return out


def message_count(opts: Options, s: Series, size: int) -> int:
    base = {"streams": 150_000, "protocol": 1_000_000, "erlang": 500_000}.get(s.impl, 500_000)
    if size >= 1024:
        base //= 2
    return max(10_000, int(base * opts.scale))


def run_python(opts: Options, s: Series, size: int, n: int) -> dict[str, float]:
    """One round: msgs/s, and each side's CPU time per message in ns (less sensitive to
    other load on the machine than the rate)."""
    env = child_env(s.src or opts.src)
    opt = UVLOOP_NEEDS_O and s.loop == "uvloop" and s.impl == "peerlink"
    common = ["--impl", s.impl, "--n", str(n), "--size", str(size), "--loop", s.loop, "--payload", s.payload]
    recv_cpu = ["--cpu", "1"] if opts.pin else []
    send_cpu = ["--cpu", "0"] if opts.pin else []
    recv = Child(python_cmd("bench.worker", "tput-recv", *common, "--handler", s.handler, *recv_cpu,
                            optimize=opt),
                 env=env, name=f"{s.key}-recv")
    kids = [recv]
    try:
        ready = recv.expect("port", 30)
        port = ready["port"]
        send = Child(python_cmd("bench.worker", "tput-send", *common, "--mode", s.mode,
                                "--port", str(port), *send_cpu, optimize=opt), env=env, name=f"{s.key}-send")
        kids.append(send)
        start = send.expect("t0", 30)
        end = recv.expect("t1", 30 + n / 20_000)
        sent = send.expect("t_sent", 30)
        return {"rate": n / (float(end["t1"]) - float(start["t0"])),
                "send_ns": (sent["cpu"] - start["cpu"]) * 1e9 / n,
                "recv_ns": (end["cpu"] - ready["cpu"]) * 1e9 / n}
    finally:
        stop_all(kids)


def run(opts: Options) -> dict[str, Any]:
    series = series_list(opts)
    values: dict[tuple[str, int], list[float]] = {(s.key, z): [] for s in series for z in s.sizes}
    cpu: dict[tuple[str, int], list[dict[str, float]]] = {(s.key, z): [] for s in series for z in s.sizes}
    errors: dict[str, list[str]] = {}
    pairs = erlang.start_pairs(s.erl_flags for s in series if s.impl == "erlang")
    try:
        for rnd in range(opts.rounds):
            for s in series:
                for size in s.sizes:
                    n = message_count(opts, s, size)
                    try:
                        if s.impl == "erlang":
                            v = float(pairs[s.erl_flags].run("tput", n, size)["msgs_per_s"])
                        else:
                            one = run_python(opts, s, size, n)
                            v = one["rate"]
                            cpu[(s.key, size)].append(one)
                    except Exception as exc:
                        errors.setdefault(f"{s.key}/{size}", []).append(str(exc)[-600:])
                        opts.log(f"throughput {s.key} {size} B failed: {str(exc)[-300:]}")
                        continue
                    values[(s.key, size)].append(v)
                    c = cpu[(s.key, size)][-1] if s.impl != "erlang" else {}
                    opts.log(f"throughput round {rnd + 1}/{opts.rounds} {s.key:22} {size:5} B "
                             f"{v / 1e6:7.3f} M msgs/s" + (f"  CPU/msg: sender {c['send_ns']:5.0f} ns, "
                                                          f"receiver {c['recv_ns']:5.0f} ns" if c else ""))
                    time.sleep(0.2)
    finally:
        erlang.stop_pairs(pairs)

    results: list[dict[str, Any]] = []
    for s in series:
        for size in s.sizes:
            rates = values[(s.key, size)]
            results.append({
                "key": s.key, "label": s.label, "impl": s.impl, "handler": s.handler, "mode": s.mode,
                "payload": s.payload,
                "loop": s.loop, "size": size, "messages_per_round": message_count(opts, s, size),
                "msgs_per_s": summary(rates),
                "mb_per_s": summary([r * size / 1e6 for r in rates]),
                "sender_cpu_ns_per_msg": summary([c["send_ns"] for c in cpu[(s.key, size)]]),
                "receiver_cpu_ns_per_msg": summary([c["recv_ns"] for c in cpu[(s.key, size)]]),
            })

    def med(key: str, size: int) -> float | None:
        for r in results:
            if r["key"] == key and r["size"] == size:
                m: float | None = r["msgs_per_s"]["median"]
                return m
        return None

    ratios = []
    for r in results:
        if r["impl"] == "peerlink":
            for base in ("protocol", "streams", "erlang", "erlang-s1"):
                x = ratio(r["msgs_per_s"]["median"], med(base, r["size"]))
                if x is not None:
                    ratios.append({"series": r["key"], "size": r["size"], "vs": base, "ratio": x})
    pl100, pl1k = med("peerlink-sync", 100), med("peerlink-sync", 1024)
    erl100, erl1k = med("erlang", 100), med("erlang", 1024)
    targets = [
        {"what": "100 B send to a sync handler, msgs/s", "value": pl100, "target": 1_000_000,
         "op": ">=", "verdict": verdict(pl100, 1_000_000, higher_is_better=True)},
        {"what": "100 B send, ratio to Distributed Erlang", "value": ratio(pl100, erl100), "target": 4.0,
         "op": ">=", "verdict": verdict(ratio(pl100, erl100), 4.0, higher_is_better=True),
         "erlang_figure_in_issue": 250_000},
        {"what": "1 KiB send, ratio to Distributed Erlang", "value": ratio(pl1k, erl1k), "target": 3.0,
         "op": ">=", "verdict": verdict(ratio(pl1k, erl1k), 3.0, higher_is_better=True),
         "erlang_figure_in_issue": 170_000},
        {"what": "100 B send, fraction of the raw Protocol limit (b)", "value": ratio(pl100, med("protocol", 100)),
         "target": 0.8, "op": ">=",
         "verdict": verdict(ratio(pl100, med("protocol", 100)), 0.8, higher_is_better=True)},
        {"what": "1 KiB send, fraction of the raw Protocol limit (b)", "value": ratio(pl1k, med("protocol", 1024)),
         "target": 0.8, "op": ">=",
         "verdict": verdict(ratio(pl1k, med("protocol", 1024)), 0.8, higher_is_better=True)},
    ]
    return {"benchmark": "throughput", "method": __doc__, "results": results, "ratios": ratios,
            "targets": targets, "erlang": opts.erlang_note, "errors": errors}
