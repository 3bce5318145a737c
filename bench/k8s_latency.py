"""Kubernetes discovery latency: from the API server accepting a change that makes a pod
ready to the ``join`` event at a running peer (issue 6: target <= 150 ms median).

Setup (all on loopback, inside a fresh network namespace): the test API server
(``tests/support/k8s_api.py``, HTTPS with a test CA) runs in this process. Node ``a``
(``python -m peerlink node``) watches Service ``peers`` through a kubeconfig; node
``b`` has no discovery at all, so only ``a``'s watch can create the link (``a`` dials
``b``). Each run: start a fresh ``b``, publish it ready in the EndpointSlice (t0 = the
server applied the change), wait for ``join b`` on ``a``'s stdout (t1); then SIGTERM
``b`` (goodbye) and wait for ``leave b``. Also measured in-process: change -> snapshot
yielded by a ``Kubernetes`` strategy (the watch alone).

"Just started" (issue 12): the same, but ``b`` runs Kubernetes discovery too (as every
pod of the Deployment does) and is published ready the moment it prints ``ready``, so
``a``'s dial meets a node that has just imported the kubernetes client and opened its
own watch (before issue 12 it was still importing, and the link formed 0.35-1.2 s
late).

Usage (root re-executes itself under ``unshare --net``)::

    .venv/bin/python bench/k8s_latency.py [--runs 15]

Prints a table and writes ``bench/results/k8s_latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.k8s_api import FakeKubeAPI, endpoint, endpoint_slice, write_kubeconfig  # noqa: E402
from support.nodeproc import NodeProcess, node_args  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "k8s_latency.json"
A_IP, B_IP, PORT = "127.0.0.2", "127.0.0.3", 4370


def publish(api: FakeKubeAPI, b_ready: bool | None) -> None:
    eps = [endpoint(A_IP, pod="a")]
    if b_ready is not None:
        eps.append(endpoint(B_IP, ready=b_ready, pod="b"))
    api.put("endpointslices", endpoint_slice("peers-x1", "peers", eps, ports=[("peerlink", PORT)]))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def wait_for_watch(api: FakeKubeAPI, before: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(api.requests_for("endpointslices", watch=True)) <= before:
        if time.monotonic() > deadline:
            raise TimeoutError("no watch request arrived")
        await asyncio.sleep(0.005)


async def strategy_latency(api: FakeKubeAPI, runs: int) -> list[float]:
    """Change -> snapshot yielded by the strategy (same process, no node)."""
    from kubernetes.aio.client import Configuration

    from peerlink.discovery.base import LocalNode
    from peerlink.discovery.kubernetes import Kubernetes

    cfg = Configuration(host=api.url, api_key={"BearerToken": "test-token"},
                        api_key_prefix={"BearerToken": "Bearer"})
    cfg.ssl_ca_cert = api.ca_path
    gen = Kubernetes("peers", namespace="default", configuration=cfg).watch(
        LocalNode("bench", "bench", "x", "127.0.0.9", 1, 1))
    samples = []
    try:
        await anext(gen)
        for i in range(runs * 2):
            ready = i % 2 == 0
            nxt = asyncio.ensure_future(anext(gen))
            if i == 0:
                await wait_for_watch(api, 0)
            publish(api, ready)
            t0 = api.change_times[-1]
            await asyncio.wait_for(nxt, 5)
            if ready:
                samples.append((time.monotonic() - t0) * 1000)
    finally:
        await gen.aclose()  # type: ignore[attr-defined]
    return samples


async def node_latency(api: FakeKubeAPI, runs: int, workdir: Path, *, b_watches: bool = False) -> list[float]:
    cookie = workdir / "cookie"
    cookie.write_text("bench-cookie\n")
    kubeconfig = write_kubeconfig(workdir / "kubeconfig", api.url, ca_path=api.ca_path)
    url = f"k8s://peers?namespace=default&kubeconfig={kubeconfig}"
    common: dict[str, Any] = {"cluster": "bench", "cookie_file": cookie, "tick": 0.2, "timeout": 0.8}
    publish(api, None)
    watches = len(api.requests_for("endpointslices", watch=True))
    a = await NodeProcess.start(node_args(name="a", listen=f"{A_IP}:{PORT}", discovery=[url], **common),
                                log_dir=workdir, name="a")
    samples = []
    try:
        await wait_for_watch(api, watches)  # a has listed and opened its watch
        for _ in range(runs):
            b = await NodeProcess.start(node_args(name="b", listen=f"{B_IP}:{PORT}",
                                                  discovery=[url] if b_watches else [], **common),
                                        log_dir=workdir, name="b")
            mark = a.mark()
            publish(api, True)
            t0 = api.change_times[-1]
            await a.wait_event("join", "b", after=mark, timeout=10)
            samples.append((time.monotonic() - t0) * 1000)
            mark = a.mark()
            publish(api, None)
            await b.terminate()
            await a.wait_event("leave", "b", after=mark, timeout=10)
            await b.close()
    finally:
        await a.close()
    return samples


async def main(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="k8s-bench-") as tmp:
        workdir = Path(tmp)
        api = FakeKubeAPI(bookmark_interval=30)
        await api.start("127.0.0.1", 0, tls_dir=workdir / "tls")
        publish(api, None)
        try:
            strategy = await strategy_latency(api, runs)
            node = await node_latency(api, runs, workdir)
            fresh = await node_latency(api, runs, workdir, b_watches=True)
        finally:
            await api.close()
    result: dict[str, Any] = {
        "benchmark": "k8s_latency",
        "what": "API server applies 'pod b ready' -> 'join b' printed by running node a",
        "runs": runs,
        "join_ms": {"median": statistics.median(node), "p90": pct(node, 0.9),
                    "min": min(node), "max": max(node), "samples": [round(x, 2) for x in node]},
        "fresh_join_ms": {"median": statistics.median(fresh), "p90": pct(fresh, 0.9),
                          "min": min(fresh), "max": max(fresh), "samples": [round(x, 2) for x in fresh]},
        "snapshot_ms": {"median": statistics.median(strategy), "p90": pct(strategy, 0.9),
                        "min": min(strategy), "max": max(strategy)},
        "target_ms": 150,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return result


def print_table(r: dict[str, Any]) -> None:
    print(f"Kubernetes discovery latency, {r['runs']} runs (ms)")
    print(f"{'measure':<44} {'median':>8} {'p90':>8} {'min':>8} {'max':>8}")
    for label, key in [("change -> strategy snapshot (in-process)", "snapshot_ms"),
                       ("change -> join at a running peer", "join_ms"),
                       ("change -> join, b just started (k8s too)", "fresh_join_ms")]:
        m = r[key]
        print(f"{label:<44} {m['median']:8.1f} {m['p90']:8.1f} {m['min']:8.1f} {m['max']:8.1f}")
    for key in ("join_ms", "fresh_join_ms"):
        ok = r[key]["median"] <= r["target_ms"]
        print(f"target ({key}): median <= {r['target_ms']} ms: {'met' if ok else 'NOT met'}")


def isolate() -> None:
    """Re-run inside a fresh network namespace (no traffic can leave the machine)."""
    if os.environ.get("PEERLINK_BENCH_ISOLATED") or os.geteuid() != 0 or not shutil.which("unshare"):
        return
    env = dict(os.environ, PEERLINK_BENCH_ISOLATED="1")
    cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
           sys.executable, *sys.argv]
    raise SystemExit(subprocess.run(cmd, env=env).returncode)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    isolate()
    res = asyncio.run(main(args.runs))
    print_table(res)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(f"written {RESULTS.relative_to(ROOT)}")
