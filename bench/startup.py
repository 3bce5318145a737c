"""Start-up honesty (issue 12): what importing each strategy's dependencies costs, and
the worst event-loop stall *after* a node reports ready, with the strategies prepared
before ready (as shipped) against a baseline in the same run that skips preparation
(the behaviour before issue 12: ``start()`` returned without waiting for the
strategies, and the kubernetes client was imported inside the watch).

* Import times: a fresh interpreter per sample (``python -c``), median of several.
* Stall after ready: node ``a`` (in this process) with Kubernetes discovery against the
  real-wire test API server (``tests/support/k8s_api.py``) that lists a running peer
  ``b`` (a ``peerlink node`` process); from the moment ``start()`` returns, a monitor
  task sleeps 1 ms at a time and records how late it wakes; the window ends 1.5 s later
  (by then the watch is open and ``b`` is linked). Each sample is a fresh interpreter,
  so the import is really paid.

Usage: ``.venv/bin/python bench/startup.py [--runs 5]``; writes
``bench/results/startup.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "startup.json"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

IMPORTS = {
    "peerlink": "import peerlink",
    "peerlink.discovery.dns (dnspython)": "import peerlink.discovery.dns",
    "peerlink.discovery.mdns (zeroconf)": "import peerlink.discovery.mdns",
    "peerlink.discovery.kubernetes + kubernetes.aio client": (
        "import peerlink.discovery.kubernetes as k; k._import_client()"),
    "peerlink.admin.http (admin listener)": "import peerlink.admin.http",
    "prometheus_client": "import prometheus_client",
}


def import_ms(statement: str, runs: int) -> list[float]:
    code = f"import time; t = time.perf_counter(); {statement}; print((time.perf_counter() - t) * 1000)"
    return [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout) for _ in range(runs)]


STALL_SCRIPT = textwrap.dedent("""
    import asyncio, json, sys, time
    sys.path.insert(0, {tests!r})
    import peerlink
    from peerlink.discovery.kubernetes import Kubernetes

    async def nothing(self):
        return None

    async def main():
        node = peerlink.Node(peerlink.Config(cluster="bench", cookie="bench-cookie", name="a",
                             listen="127.0.0.2:4370", tick=0.2, timeout=0.8,
                             discovery=[Kubernetes("peers", namespace="default", kubeconfig={kubeconfig!r})]))
        t0 = time.monotonic()
        if {skip_prepare!r}:
            # the baseline, as before issue 12: the node said ready as soon as it
            # listened, and the kubernetes client was imported inside watch(), after
            Kubernetes.prepare = nothing
            starting = asyncio.create_task(node.start())
            while node.address is None:
                await asyncio.sleep(0)
        else:
            await node.start()
        ready = time.monotonic()
        worst = 0.0
        end = ready + 1.5
        while time.monotonic() < end:
            due = time.monotonic() + 0.001
            await asyncio.sleep(0.001)
            worst = max(worst, time.monotonic() - due)
        linked = "b" in node.peers
        await node.close()
        print(json.dumps({{"start_ms": (ready - t0) * 1000, "stall_ms": worst * 1000, "linked": linked}}))

    asyncio.run(main())
""")


async def stall_samples(runs: int) -> dict[str, list[dict[str, Any]]]:
    from k8s_latency import A_IP, B_IP, PORT  # type: ignore[import-not-found]
    from support.k8s_api import FakeKubeAPI, endpoint, endpoint_slice, write_kubeconfig
    from support.nodeproc import NodeProcess, node_args

    out: dict[str, list[dict[str, Any]]] = {"prepared (as shipped)": [], "not prepared (baseline)": []}
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        workdir = Path(tmp)
        api = FakeKubeAPI(bookmark_interval=30)
        await api.start("127.0.0.1", 0, tls_dir=workdir / "tls")
        cookie = workdir / "cookie"
        cookie.write_text("bench-cookie\n")
        api.put("endpointslices", endpoint_slice("peers-x1", "peers", [endpoint(A_IP, pod="a"), endpoint(B_IP, pod="b")],
                                                 ports=[("peerlink", PORT)]))
        kubeconfig = write_kubeconfig(workdir / "kubeconfig", api.url, ca_path=api.ca_path)
        b = await NodeProcess.start(node_args(name="b", listen=f"{B_IP}:{PORT}", cluster="bench",
                                              cookie_file=cookie, tick=0.2, timeout=0.8), log_dir=workdir)
        try:
            for _ in range(runs):  # interleaved: one of each per round
                for label, skip in (("prepared (as shipped)", False), ("not prepared (baseline)", True)):
                    script = STALL_SCRIPT.format(tests=str(ROOT / "tests"), skip_prepare=skip,
                                                 kubeconfig=str(kubeconfig))
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
                    stdout, _ = await proc.communicate()
                    out[label].append(json.loads(stdout.decode().splitlines()[-1]))
        finally:
            await b.close()
            await api.close()
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(runs: int) -> dict[str, Any]:
    imports = {name: summary(import_ms(stmt, runs)) for name, stmt in IMPORTS.items()}
    stalls = asyncio.run(stall_samples(runs))
    return {
        "benchmark": "startup",
        "runs": runs,
        "import_ms": imports,
        "after_ready": {label: {"stall_ms": summary([s["stall_ms"] for s in samples]),
                                "start_ms": summary([s["start_ms"] for s in samples]),
                                "linked_within_1.5s": sum(s["linked"] for s in samples)}
                        for label, samples in stalls.items()},
        "target_stall_ms": 50,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "load": os.getloadavg()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_table(r: dict[str, Any]) -> None:
    print(f"Import time, fresh interpreter, median of {r['runs']} (ms)")
    for name, s in r["import_ms"].items():
        print(f"  {name:<56} {s['median']:8.1f}  ({s['min']:.1f} .. {s['max']:.1f})")
    print("\nKubernetes discovery: start() duration and worst loop stall in the 1.5 s after ready (ms)")
    for label, s in r["after_ready"].items():
        st, sd = s["stall_ms"], s["start_ms"]
        print(f"  {label:<26} start {sd['median']:7.1f}   stall median {st['median']:7.1f} "
              f"(max {st['max']:.1f})   linked in time {s['linked_within_1.5s']}/{r['runs']}")
    ok = r["after_ready"]["prepared (as shipped)"]["stall_ms"]["max"] <= r["target_stall_ms"]
    print(f"target: no stall over {r['target_stall_ms']} ms after ready: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    from k8s_latency import isolate  # type: ignore[import-not-found]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    isolate()
    res = main(args.runs)
    print_table(res)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(f"written {RESULTS.relative_to(ROOT)}")
