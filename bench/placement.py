"""Call latency, 2b (issue 14): what moves the call-latency ratio - core placement and a
pending timer, two things the raw Protocol echo of ``latency`` does not have.

One call in flight, 100 B, an echo handler, as in ``latency``. Each series runs at three
placements of its two processes: pinned to separate cores, pinned to one core (the
round trip then runs both sides one after the other, with two context switches), and
unpinned (the scheduler decides, per run - what ``latency`` measures). Series:

- raw Protocol: ``latency``'s baseline, whose event loop has no timer at all, so it
  waits in ``epoll_wait`` without a timeout;
- raw Protocol, one timer pending: the same, plus a no-op ``call_later`` re-armed every
  0.5 s in each process - what every real service has (a heartbeat, a timeout), and
  what a peerlink node always has;
- peerlink call, with a sync handler and with an ``async def`` one.

Rounds are interleaved (every series and placement once per round); medians of the
rounds' p50. Ratios are taken against both raw series at the same placement.
"""

from __future__ import annotations

import time
from typing import Any

from .common import ratio, summary, table
from .latency import SIZE, Series, run_python
from .options import Options

TIMER_S = 0.5
PLACEMENTS: dict[str, tuple[int | None, int | None]] = {  # name -> (client, server) core
    "separate cores": (0, 1),
    "one core": (0, 0),
    "unpinned": (None, None),  # the scheduler decides
}
SERIES = [
    Series("protocol", "raw Protocol (no timer)", "protocol"),
    Series("protocol-timer", "raw Protocol, one timer pending", "protocol"),
    Series("peerlink", "peerlink call", "peerlink"),
    Series("peerlink-async", "peerlink call, async handler", "peerlink", handler="async"),
]


def run_pair(opts: Options, s: Series, placement: str, n: int) -> dict[str, Any]:
    timer = ["--timer", str(TIMER_S)] if s.key == "protocol-timer" else []
    return run_python(opts, s, 1, n, cpus=PLACEMENTS[placement], extra=[*timer, "--cold", "0"])


def run(opts: Options) -> dict[str, Any]:
    n = max(1_000, int(5_000 * opts.scale))
    raw: dict[tuple[str, str], list[float]] = {(s.key, p): [] for s in SERIES for p in PLACEMENTS}
    cpu: dict[tuple[str, str], list[float]] = {(s.key, p): [] for s in SERIES for p in PLACEMENTS}
    errors: dict[str, list[str]] = {}
    for rnd in range(opts.rounds):
        for placement in PLACEMENTS:
            for s in SERIES:
                try:
                    r = run_pair(opts, s, placement, n)
                except Exception as exc:
                    errors.setdefault(f"{s.key}/{placement}", []).append(str(exc)[-600:])
                    opts.log(f"placement {s.key} {placement} failed: {str(exc)[-300:]}")
                    continue
                raw[(s.key, placement)].append(r["p50"])
                cpu[(s.key, placement)].append(r["client_cpu_us_per_call"])
                opts.log(f"placement round {rnd + 1}/{opts.rounds} {placement:14} {s.key:15} "
                         f"p50 {r['p50']:7.1f} us")
                time.sleep(0.1)
    results = []
    for placement in PLACEMENTS:
        base = summary(raw[("protocol", placement)])["median"]
        timed = summary(raw[("protocol-timer", placement)])["median"]
        for s in SERIES:
            p50 = summary(raw[(s.key, placement)])
            results.append({
                "placement": placement, "key": s.key, "label": s.label, "p50_us": p50,
                "client_cpu_us_per_call": summary(cpu[(s.key, placement)]),
                "vs_protocol": ratio(p50["median"], base), "vs_protocol_timer": ratio(p50["median"], timed),
            })
    return {"benchmark": "placement", "method": __doc__, "calls_per_round": n, "results": results,
            "errors": errors}


def render(d: dict[str, Any]) -> str:
    def x(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    rows = []
    for r in d["results"]:
        p50 = r["p50_us"]
        rows.append([r["placement"], r["label"],
                     "-" if p50.get("median") is None else f"{p50['median']:.1f}",
                     "-" if p50.get("min") is None else f"{p50['min']:.1f} .. {p50['max']:.1f}",
                     x(r["vs_protocol"]), x(r["vs_protocol_timer"]),
                     "-" if r["client_cpu_us_per_call"].get("median") is None
                     else f"{r['client_cpu_us_per_call']['median']:.1f}"])
    return (f"One call in flight, {SIZE} B, {d['calls_per_round']} calls per round; medians of the rounds' p50.\n\n"
            + table(["placement", "series", "p50 us", "min .. max", "vs raw", "vs raw + timer",
                     "client CPU us/call"], rows))
