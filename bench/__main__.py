"""``python -m bench`` (``make bench``): run peerlink's benchmarks with their baselines,
print tables, write ``bench/results/<name>.json`` + ``.png`` and regenerate the results
section of ``bench/README.md``.

Examples::

    python -m bench                      # everything, 5 rounds (about 10 minutes)
    python -m bench --quick              # short runs to check the suite works
    python -m bench throughput latency   # only these
    python -m bench hostile --rounds 3   # what hostile clients cost a node (issue 11)
    python -m bench --report             # redraw charts and README from the JSON only
    python -m bench throughput --src /tmp/scratch --tag scratch   # another peerlink tree

As root with ``unshare`` available it re-runs itself in a private network namespace
with only loopback up, so no benchmark traffic (epmd and Erlang distribution included)
can leave the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from . import charts, erlang, report
from .common import RESULTS, machine_info, write_json
from .options import Options

BENCHMARKS = ["throughput", "latency", "placement", "workcount", "core", "pubsub", "presence", "profile", "hostile"]
# run only when named (``python -m bench scale``, ``make bench-scale``): 100 processes load
# a 2-core machine for minutes
ON_REQUEST = ["scale"]


def _maybe_reexec_in_netns(argv: list[str]) -> None:
    if os.environ.get("PEERLINK_BENCH_NETNS") or "--no-netns" in argv:
        return
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        print("bench: not root or no unshare/ip: running in the current network namespace "
              "(everything binds 127.0.0.1)", file=sys.stderr)
        return
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        print("bench: unshare --net failed: running in the current network namespace", file=sys.stderr)
        return
    env = dict(os.environ, PEERLINK_BENCH_NETNS="1")
    cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
           sys.executable, "-m", "bench", *argv]
    os.execvpe("unshare", cmd, env)


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benchmarks", nargs="*", default=[],
                    help=f"which to run (default: all of {', '.join(BENCHMARKS)}; also "
                    f"{', '.join(ON_REQUEST)} when named)")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 1/10 of the messages (a smoke run)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per measurement (default 5; quick 2)")
    ap.add_argument("--scale", type=float, default=None, help="multiply message counts (default 1; quick 0.1)")
    ap.add_argument("--src", default=None, help="directory holding another peerlink package to measure")
    ap.add_argument("--tag", default="", help="suffix for the results files (e.g. with --src)")
    ap.add_argument("--compare-src", default=None, metavar="DIR",
                    help="A/B: also measure the peerlink package in DIR, interleaved round by round "
                    "with this tree (throughput and latency; results tagged 'ab' unless --tag)")
    ap.add_argument("--pin", action="store_true", help="pin sender and receiver to separate cores")
    ap.add_argument("--no-uvloop", action="store_true", help="skip the uvloop series")
    ap.add_argument("--no-erlang", action="store_true", help="skip Distributed Erlang")
    ap.add_argument("--no-netns", action="store_true", help="do not re-run in a private network namespace")
    ap.add_argument("--report", action="store_true", help="only redraw charts and README from the JSON")
    ap.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="scale: mesh sizes, e.g. 10,30 (default 10,30,100; quick 10,30)")
    a = ap.parse_args(raw)

    if a.report:
        for name, stored in report.load_all().items():
            if stored.get("benchmark") in charts.DRAW:
                charts.DRAW[stored["benchmark"]](stored, name)
        report.update_readme()
        print(report.readme_section())
        return 0

    for b in a.benchmarks:
        if b not in BENCHMARKS + ON_REQUEST:
            ap.error(f"unknown benchmark {b!r} (choose from {', '.join(BENCHMARKS + ON_REQUEST)})")
    _maybe_reexec_in_netns(raw)
    selected = a.benchmarks or BENCHMARKS
    erl_missing = erlang.available()
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    opts = Options(
        quick=a.quick, rounds=a.rounds or (2 if a.quick else 5),
        scale=a.scale if a.scale is not None else (0.1 if a.quick else 1.0),
        src=os.path.abspath(a.src) if a.src else None, tag=a.tag, pin=a.pin,
        uvloop=has_uvloop and not a.no_uvloop,
        erlang=erl_missing is None and not a.no_erlang,
        erlang_note=("measured in this run" if erl_missing is None and not a.no_erlang
                     else f"not measured: {erl_missing or 'disabled with --no-erlang'}"),
        sizes=a.sizes,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    if a.compare_src:
        opts.compare_src = os.path.abspath(a.compare_src)
        selected = [b for b in selected if b in ("throughput", "latency")]
        if not a.tag:
            opts.tag = "ab"
    if a.quick and not opts.tag:
        opts.tag = "quick"
    if a.sizes and not opts.tag:
        opts.tag = "sizes-" + "-".join(map(str, a.sizes))
    opts.log(f"bench: {', '.join(selected)}; rounds {opts.rounds}, scale {opts.scale}; "
             f"erlang: {opts.erlang_note}; uvloop: {'yes' if opts.uvloop else 'no'}")
    t_all = time.monotonic()
    for name in selected:
        mod = importlib.import_module(f"bench.{name}")
        t0 = time.monotonic()
        data: dict[str, Any] = mod.run(opts)
        data["machine"] = machine_info()
        data["options"] = {"quick": opts.quick, "rounds": opts.rounds, "scale": opts.scale,
                           "pinned": opts.pin, "src": opts.src or "this repository",
                           "compare_src": opts.compare_src,
                           "uvloop_series": opts.uvloop, "erlang": opts.erlang_note}
        data["duration_s"] = round(time.monotonic() - t0, 1)
        fname = opts.name(name)
        path = write_json(fname, data)
        if data.get("benchmark") in charts.DRAW and "skipped" not in data:
            charts.DRAW[data["benchmark"]](data, fname)
        print(f"\n## {fname} ({data['duration_s']} s) -> {path.relative_to(RESULTS.parent.parent)}\n")
        print(report.render(fname, data), flush=True)
    if not opts.tag:
        report.update_readme()
    opts.log(f"bench: done in {time.monotonic() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
