"""PNG charts from the results JSON (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import RESULTS


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(s: dict[str, Any], scale: float = 1.0) -> tuple[float, list[float]]:
    med = (s["median"] or 0) / scale
    lo = med - (s["min"] or 0) / scale
    hi = (s["max"] or 0) / scale - med
    return med, [max(lo, 0), max(hi, 0)]


COLORS = {
    "peerlink": "#1f77b4", "streams": "#bbbbbb", "protocol": "#7f7f7f", "erlang": "#a23b72",
}


def _color(r: dict[str, Any]) -> str:
    c = COLORS.get(r["impl"], "#333333")
    if r["impl"] == "peerlink" and (r.get("handler") == "async" or r.get("mode") == "await"):
        c = "#6baed6"
    if r.get("loop") == "uvloop":
        c = "#2ca02c" if r["impl"] == "peerlink" else "#98df8a"
    if str(r.get("key", "")).endswith("+patched"):  # the A/B mode's other tree
        c = "#8c564b" if r.get("loop") == "uvloop" else "#ff7f0e"
    return c


def throughput(data: dict[str, Any], name: str) -> Path:
    plt = _plt()
    sizes = sorted({r["size"] for r in data["results"]})
    fig = plt.figure(figsize=(14, 10.5))
    grid = fig.add_gridspec(2, len(sizes))
    axes = [fig.add_subplot(grid[0, i]) for i in range(len(sizes))] + [fig.add_subplot(grid[1, :])]
    for ax, size in zip(axes, sizes, strict=False):
        rows = [r for r in data["results"] if r["size"] == size]
        labels, meds, errs, colors = [], [], [], []
        for r in rows:
            med, err = _err(r["msgs_per_s"], 1e6)
            labels.append(r["label"].replace(", ", "\n", 1))
            meds.append(med)
            errs.append(err)
            colors.append(_color(r))
        y = list(range(len(rows)))
        ax.barh(y, meds, xerr=list(zip(*errs, strict=True)), color=colors, capsize=3)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        for yi, m, e in zip(y, meds, errs, strict=True):
            ax.text(m + e[1], yi, f" {m:.2f}", va="center", fontsize=8)
        ax.set_xlabel("million messages / s (median of rounds; bars: min..max)")
        ax.set_title(f"one-way send, {size} B payload")
        if size == 100:
            ax.axvline(1.0, color="red", ls="--", lw=1)
            ax.text(1.0, len(rows) - 0.5, " target 1.0 M/s", color="red", fontsize=8, va="bottom")
        ax.margins(x=0.15)
    # CPU per message on each side, 100 B: which side is the bottleneck
    ax = axes[-1]
    rows = [r for r in data["results"] if r["size"] == min(sizes) and r["impl"] != "erlang"
            and r.get("sender_cpu_ns_per_msg", {}).get("median") is not None]
    y = list(range(len(rows)))
    h = 0.4
    snd = [r["sender_cpu_ns_per_msg"]["median"] for r in rows]
    rcv = [r["receiver_cpu_ns_per_msg"]["median"] for r in rows]
    ax.barh([v - h / 2 for v in y], snd, h, color=[_color(r) for r in rows], label="sender")
    ax.barh([v + h / 2 for v in y], rcv, h, color=[_color(r) for r in rows], alpha=0.5, hatch="//",
            label="receiver")
    for yi, a, b in zip(y, snd, rcv, strict=True):
        ax.text(a, yi - h / 2, f" {a:.0f}", va="center", fontsize=7)
        ax.text(b, yi + h / 2, f" {b:.0f}", va="center", fontsize=7)
    ax.set_yticks(y, [r["label"].replace(", ", "\n", 1) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("CPU ns per message (median of rounds)")
    ax.set_title(f"CPU per message, {min(sizes)} B: solid sender, hatched receiver")
    ax.margins(x=0.2)
    fig.suptitle("peerlink throughput vs raw asyncio and Distributed Erlang (one link, loopback)")
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency(data: dict[str, Any], name: str) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    ks = sorted({r["inflight"] for r in data["results"]})
    ax = axes[0]
    keys = list(dict.fromkeys(r["key"] for r in data["results"]))
    width = 0.8 / max(1, len(keys))
    for i, key in enumerate(keys):
        rows = [r for r in data["results"] if r["key"] == key]
        for j, k in enumerate(ks):
            r = next((x for x in rows if x["inflight"] == k), None)
            if r is None or r["p50_us"]["median"] is None:
                continue
            x = j + i * width
            med, err = _err(r["p50_us"])
            ax.bar(x, med, width * 0.9, yerr=[[err[0]], [err[1]]], color=_color(r), capsize=3,
                   label=r["label"] if j == 0 else None)
            p99 = r["p99_us"]["median"]
            ax.plot([x], [p99], marker="v", color="black", ms=5)
            ax.text(x, med, f"{med:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ks))], [f"{k} in flight" for k in ks])
    ax.set_yscale("log")
    ax.set_ylabel("round trip, us (bar: p50 median of rounds; v: p99)")
    ax.set_title("call round trip, 100 B")
    ax.legend(fontsize=8)
    ax = axes[1]
    for r in data["results"]:
        if r["inflight"] != 1 or not r["cdf_us_median_round"]:
            continue
        cdf = r["cdf_us_median_round"]
        ax.plot(cdf, [q / 100 for q in range(len(cdf))], label=r["label"], color=_color(r),
                ls="--" if str(r.get("key", "")).endswith("+patched") else "-")
    ax.set_xscale("log")
    ax.set_xlabel("round trip, us")
    ax.set_ylabel("fraction of calls")
    ax.set_title("distribution, 1 in flight (median round)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def core(data: dict[str, Any], name: str) -> Path:
    plt = _plt()
    targets = data["targets"]
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(targets) + 1.5))
    labels, fracs, colors, notes = [], [], [], []
    for t in targets:
        v = t["value"]
        if isinstance(t["target"], str):  # a window lo..hi
            hi = float(t["target"].split("..")[1])
            frac = (v / hi) if v is not None else 0
        elif t["target"] == 0:  # a count that must be zero
            frac = 0 if not v else 2
        else:
            frac = (v / t["target"]) if v is not None else 0
        labels.append(t["what"])
        fracs.append(frac)
        colors.append("#2ca02c" if t["verdict"] == "met" else "#d62728")
        notes.append(f" {v:.4g} (target {t['op']} {t['target']})" if v is not None else " not measured")
    y = list(range(len(targets)))
    ax.barh(y, fracs, color=colors)
    ax.axvline(1.0, color="black", ls="--", lw=1)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    for yi, f, note in zip(y, fracs, notes, strict=True):
        ax.text(f, yi, note, va="center", fontsize=8)
    ax.set_xlabel("measured / target (lower is better except where the target is a window; "
                  "green = met)")
    ax.set_title(f"peerlink {data['benchmark']} against the issue's targets")
    ax.margins(x=0.35)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def profile(data: dict[str, Any], name: str) -> Path:
    plt = _plt()
    sides = data["sides"]
    fig, axes = plt.subplots(1, len(sides), figsize=(7.5 * len(sides), 6))
    if len(sides) == 1:
        axes = [axes]
    for ax, (side, d) in zip(axes, sides.items(), strict=True):
        top = d["self"][:15]
        y = list(range(len(top)))
        ax.barh(y, [t["pct"] for t in top], color="#1f77b4")
        ax.set_yticks(y, [t["function"][:60] for t in top], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("% of samples (self time)")
        ax.set_title(f"{side}: where the time goes ({d['samples']} samples)")
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


DRAW = {"throughput": throughput, "latency": latency, "core": core, "profile": profile, "scale": core}
