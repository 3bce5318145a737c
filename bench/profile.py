"""Benchmark 4: where the time goes on the hot path.

Runs the 100-byte one-way throughput case (peerlink, sync handler, ``send_nowait``)
with both processes under ``py-spy record`` (sampling, ``--nonblocking``, native frames
off) and aggregates the samples per function: *self* time (the innermost Python frame)
and *inclusive* time. Raw collapsed stacks are kept in ``results/profile-*.txt``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .common import RESULTS, Child, child_env, stop_all
from .options import Options


def py_spy() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    if exe.exists():
        return str(exe)
    return shutil.which("py-spy")


def _frame(f: str) -> str:
    # py-spy raw frames look like "data_received (peerlink/link.py:120)"; drop the line
    name, _, where = f.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("/peerlink/", "/asyncio/", "/bench/", "/msgpack/"):
        if marker in path:
            path = marker.strip("/") + "/" + path.split(marker, 1)[1]
            break
    else:
        path = path.rsplit("/", 1)[-1]
    return f"{name} ({path})"


def aggregate(raw: str, top: int = 25, within: str = "") -> dict[str, Any]:
    """Self and inclusive samples per function, counting only stacks that pass through a
    frame whose text contains ``within`` (the steady state, not start-up imports)."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        if within and within not in stack:
            continue
        frames = [_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    def rows(c: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": f, "samples": n, "pct": 100 * n / total} for f, n in c.most_common(top)]
    return {"samples": total, "self": rows(self_c), "inclusive": rows(incl)}


def run(opts: Options) -> dict[str, Any]:
    spy = py_spy()
    if spy is None:
        return {"benchmark": "profile", "skipped": "py-spy not installed (.venv/bin/pip install py-spy)"}
    env = child_env(opts.src)
    n = max(100_000, int(1_500_000 * opts.scale))
    name = opts.name("profile")
    out_recv = RESULTS / f"{name}-receiver.txt"
    out_send = RESULTS / f"{name}-sender.txt"
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = [spy, "record", "--format", "raw", "--rate", "1000", "--nonblocking", "-o"]
    worker = [sys.executable, "-m", "bench.worker"]
    recv = Child([*base, str(out_recv), "--", *worker, "tput-recv", "--impl", "peerlink",
                  "--n", str(n), "--size", "100"], env=env, name="recv")
    kids = [recv]
    try:
        port = recv.expect("port", 60)["port"]
        send = Child([*base, str(out_send), "--", *worker, "tput-send", "--impl", "peerlink",
                      "--n", str(n), "--size", "100", "--port", str(port)], env=env, name="send")
        kids.append(send)
        t0 = float(send.expect("t0", 60)["t0"])
        t1 = float(recv.expect("t1", 60 + n / 20_000)["t1"])
        rate = n / (t1 - t0)
        for k in kids:  # let py-spy write its file
            k.proc.wait(60)
    finally:
        stop_all(kids)
    time.sleep(0.5)
    sides = {}
    # the sender's hot loop is tput_send itself; the receiver's work hangs off the loop
    for side, path, within in (("sender", out_send, "tput_send"), ("receiver", out_recv, "_run_once")):
        try:
            sides[side] = aggregate(path.read_text(), within=within)
        except OSError as exc:
            sides[side] = {"samples": 0, "self": [], "inclusive": [], "error": str(exc)}
    ver = subprocess.run([spy, "--version"], capture_output=True, text=True).stdout.strip()
    opts.log(f"profile: {rate / 1e6:.3f} M msgs/s under py-spy; "
             f"{sides['sender']['samples']} sender / {sides['receiver']['samples']} receiver samples")
    return {"benchmark": "profile", "method": __doc__, "tool": ver, "messages": n,
            "msgs_per_s_under_profiler": rate, "sides": sides,
            "raw_files": [out_send.name, out_recv.name]}
