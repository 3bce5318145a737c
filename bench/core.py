"""Benchmark 3: the core's costs, each against the issue's target (and Erlang's figure
from the issue; Erlang is not measured here for these).

- Import: wall time of ``python -c "import peerlink"`` (and of ``python -c pass``), the
  package's bytecode cached (as installed).
- Full-mesh formation of N node processes (``bench/meshnode.py``, static discovery
  listing everyone, default tick 1 s): from the moment the last process is ready
  (listening, discovery started; stamped inside it) until every node has seen a join
  for every other (stamped inside each node by its ``on_join`` callback).
- Idle CPU per node of the 10-node mesh over a window (``/proc/PID/task/*/schedstat``).
- RSS per extra link: a hub node accepts links from K nodes that live in one other
  process (``bench/swarm.py``); (hub RSS after - before) / K, after ``gc.collect()``.
- Failure detection in the 10-node mesh: ``kill -9`` (peers see ``connection_lost``),
  ``SIGSTOP`` (peers see ``timeout`` between timeout and timeout + tick), SIGTERM
  (graceful stop; peers see ``shutdown``). Latency = each peer's leave stamp - the
  parent's stamp just before the signal (CLOCK_MONOTONIC in both).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from peerlink.testing import free_ports

from .common import (
    Child,
    child_env,
    cpu_ns,
    python_cmd,
    stop_all,
    summary,
    verdict,
    wait_for,
)
from .options import Options

ERLANG_FIGURES = {  # from issue 4, measured by the author; not measured here
    "mesh10_ms": 179, "idle_cpu_pct": 0.01, "rss_per_link_kib": 98, "kill9_ms": 4,
    "sigstop_s": "45-75 (net_ticktime 60 s default)",
}


# -- import ----------------------------------------------------------------------------


def import_time(opts: Options) -> dict[str, Any]:
    """As a user's process pays it: with the package's bytecode cached, as pip compiles
    it at install. (A session that sets PYTHONDONTWRITEBYTECODE would otherwise compile
    every peerlink module from source at each start: ~40 ms more, measured in none of
    the baselines.) One untimed import first writes the cache."""
    env = child_env(opts.src)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", "import peerlink"], env=env, check=True)
    n = 5 if opts.quick else 11
    out: dict[str, list[float]] = {"import peerlink": [], "pass": []}
    for _ in range(n):
        for what, code in (("import peerlink", "import peerlink"), ("pass", "pass")):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            out[what].append((time.perf_counter() - t) * 1000)
    return {"import_ms": summary(out["import peerlink"]), "bare_interpreter_ms": summary(out["pass"]),
            "runs": n, "bytecode_cached": True}


# -- mesh --------------------------------------------------------------------------------


class Mesh:
    def __init__(self, opts: Options, n: int, tick: float) -> None:
        self.n = n
        self.tick = tick
        ports = free_ports(n)
        static = ",".join(f"127.0.0.1:{p}" for p in ports)
        env = child_env(opts.src)
        self.nodes: list[Child] = []
        self.names = [f"n{i:02d}" for i in range(n)]
        for name, port in zip(self.names, ports, strict=True):
            self.nodes.append(Child(python_cmd("bench.meshnode", name, str(port), static, "--tick", str(tick)),
                                    env=env, name=name))
        self.last_spawn = time.monotonic()

    def live(self) -> list[Child]:
        return [c for c in self.nodes if c.proc.poll() is None]

    @staticmethod
    def sees(c: Child) -> set[str]:
        seen: set[str] = set()
        for ev in c.events:
            if ev.get("event") == "join":
                seen.add(ev["peer"])
            elif ev.get("event") == "leave":
                seen.discard(ev["peer"])
        return seen

    def formed(self, among: list[Child] | None = None) -> bool:
        group = among or self.nodes
        names = {c.name for c in group}
        return all(c.find("event", "ready") is not None and names - {c.name} <= self.sees(c) for c in group)

    def wait_formed(self, timeout: float) -> dict[str, Any]:
        if not wait_for(self.nodes, self.formed, timeout):
            missing = {c.name: sorted(set(self.names) - {c.name} - self.sees(c)) for c in self.nodes}
            raise RuntimeError(f"mesh of {self.n} not formed within {timeout} s: {missing}")
        ready = [float(c.expect("event", 1, "ready")["t"]) for c in self.nodes]
        done = []
        for c in self.nodes:
            others = set(self.names) - {c.name}
            seen: set[str] = set()
            for ev in c.events:
                if ev.get("event") == "join":
                    seen.add(ev["peer"])
                    if others <= seen:
                        done.append(float(ev["t"]))
                        break
        t_mesh = max(done)
        return {"from_last_ready_ms": (t_mesh - max(ready)) * 1000,
                "from_last_spawn_ms": (t_mesh - self.last_spawn) * 1000,
                "ready_spread_ms": (max(ready) - min(ready)) * 1000}

    def leave_latency(self, victim: Child, sig: int, timeout: float) -> dict[str, Any]:
        observers = [c for c in self.live() if c is not victim]
        before = {c.name: len(c.events) for c in observers}
        t0 = time.monotonic()
        victim.signal(sig)

        def left(c: Child) -> dict[str, Any] | None:
            for ev in c.events[before[c.name]:]:
                if ev.get("event") == "leave" and ev.get("peer") == victim.name:
                    return ev
            return None

        ok = wait_for(observers, lambda: all(left(c) for c in observers), timeout)
        evs = [e for e in (left(c) for c in observers) if e is not None]
        lat = [(float(e["t"]) - t0) * 1000 for e in evs]
        return {"victim": victim.name, "observers": len(observers), "reported": len(evs), "complete": ok,
                "latency_ms": summary(lat), "max_ms": max(lat) if lat else None,
                "reasons": sorted({str(e["reason"]) for e in evs})}

    def close(self) -> None:
        stop_all(self.nodes)


def idle_cpu(mesh: Mesh, seconds: float) -> dict[str, Any]:
    pids = [c.pid for c in mesh.live()]
    a = {p: cpu_ns(p) for p in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    b = {p: cpu_ns(p) for p in pids}
    dt = time.monotonic() - t0
    pct = [(b[p] - a[p]) / 1e9 / dt * 100 for p in pids]
    return {"window_s": dt, "per_node_pct": summary(pct), "nodes": len(pids)}


def rss_per_link(opts: Options, k: int, rounds: int) -> dict[str, Any]:
    env = child_env(opts.src)
    (port,) = free_ports(1)
    hub = Child(python_cmd("bench.meshnode", "hub", str(port), "", "--tick", "1.0", "--timeout", "30"),
                env=env, name="hub")
    swarm = Child(python_cmd("bench.swarm", f"127.0.0.1:{port}"), env=env, name="swarm")
    try:
        hub.expect("event", 30, "ready")

        def hub_rss(links: int) -> int:
            wait_for([hub], lambda: any(e.get("event") == "join" and e.get("n") == links for e in hub.events), 60)
            time.sleep(0.5)
            n_before = sum(1 for e in hub.events if e.get("event") == "rss")
            hub.send_line("rss")
            wait_for([hub], lambda: sum(1 for e in hub.events if e.get("event") == "rss") > n_before, 10)
            ev = [e for e in hub.events if e.get("event") == "rss"][-1]
            if ev["peers"] != links:
                raise RuntimeError(f"hub has {ev['peers']} peers, expected {links}")
            return int(ev["kib"])

        swarm.send_line("add 1")
        swarm.expect("nodes", 60, 1)
        base = hub_rss(1)
        per: list[float] = []
        samples = [{"links": 1, "rss_kib": base}]
        total = 1
        prev = base
        for _ in range(rounds):
            swarm.send_line(f"add {k}")
            total += k
            swarm.expect("nodes", 120, total)
            rss = hub_rss(total)
            samples.append({"links": total, "rss_kib": rss})
            per.append((rss - prev) / k)
            prev = rss
        return {"links_added_per_round": k, "per_link_kib": summary(per), "samples": samples,
                "overall_kib_per_link": (prev - base) / (total - 1)}
    finally:
        stop_all([swarm, hub])


# -- the benchmark -----------------------------------------------------------------------


def run(opts: Options) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "core", "method": __doc__, "erlang_figures_from_issue": ERLANG_FIGURES}
    opts.log("core: import time")
    out["import"] = import_time(opts)
    opts.log(f"core: import peerlink {out['import']['import_ms']['median']:.0f} ms "
             f"(bare interpreter {out['import']['bare_interpreter_ms']['median']:.0f} ms)")

    tick = 0.25 if opts.quick else 1.0
    out["mesh_tick_s"] = tick
    out["mesh_timeout_s"] = 4 * tick
    formation: dict[int, list[dict[str, Any]]] = {10: [], 30: []}
    plan = [(10, 2 if opts.quick else 5), (30, 1 if opts.quick else 3)]
    last: Mesh | None = None
    try:
        for n, rounds in plan:
            for r in range(rounds):
                mesh = Mesh(opts, n, tick)
                try:
                    f = mesh.wait_formed(60)
                finally:
                    if n == 10 and r == rounds - 1:
                        last = mesh
                    else:
                        mesh.close()
                formation[n].append(f)
                opts.log(f"core: mesh of {n} formed {f['from_last_ready_ms']:.0f} ms after the last ready "
                         f"({f['from_last_spawn_ms']:.0f} ms after the last spawn)")
                time.sleep(0.5)
        out["mesh"] = {str(n): {
            "from_last_ready_ms": summary([f["from_last_ready_ms"] for f in fs]),
            "from_last_spawn_ms": summary([f["from_last_spawn_ms"] for f in fs]),
            "ready_spread_ms": summary([f["ready_spread_ms"] for f in fs]),
        } for n, fs in formation.items()}

        assert last is not None
        mesh = last
        time.sleep(2.0)
        window = 3.0 if opts.quick else 10.0
        out["idle_cpu"] = idle_cpu(mesh, window)
        opts.log(f"core: idle CPU per node {out['idle_cpu']['per_node_pct']['median']:.3f} % of a core")

        def fail(kind: str, sig: int, count: int, timeout: float) -> list[dict[str, Any]]:
            res = []
            for _ in range(count):
                victim = mesh.live()[-1]
                r = mesh.leave_latency(victim, sig, timeout)
                if sig == signal.SIGSTOP:
                    victim.signal(signal.SIGKILL)
                    victim.signal(signal.SIGCONT)
                    victim.proc.wait(5)
                else:
                    victim.proc.wait(10)
                # let the survivors settle (the victim's leave everywhere, no re-dial noise)
                time.sleep(0.3 + (tick if sig == signal.SIGSTOP else 0))
                res.append(r)
                opts.log(f"core: {kind}: leave at {r['reported']}/{r['observers']} peers, "
                         f"median {r['latency_ms']['median']:.1f} ms, max {r['max_ms']:.1f} ms, {r['reasons']}")
            return res

        kills = fail("kill -9", signal.SIGKILL, 1 if opts.quick else 3, 10)
        stops = fail("SIGSTOP", signal.SIGSTOP, 1 if opts.quick else 2, 6 * tick + 5)
        terms = fail("SIGTERM", signal.SIGTERM, 1 if opts.quick else 3, 10)

        def agg(rs: list[dict[str, Any]]) -> dict[str, Any]:
            maxes = [r["max_ms"] for r in rs if r["max_ms"] is not None]
            meds = [r["latency_ms"]["median"] for r in rs if r["latency_ms"]["median"] is not None]
            return {"rounds": rs, "max_ms": summary(maxes), "median_ms": summary(meds),
                    "reasons": sorted({x for r in rs for x in r["reasons"]}),
                    "all_reported": all(r["complete"] for r in rs)}

        out["kill9"] = agg(kills)
        out["sigstop"] = agg(stops)
        out["sigterm"] = agg(terms)
    finally:
        if last is not None:
            last.close()

    opts.log("core: RSS per link")
    out["rss"] = rss_per_link(opts, 20 if opts.quick else 50, 2 if opts.quick else 3)
    opts.log(f"core: RSS per extra link {out['rss']['per_link_kib']['median']:.1f} KiB")

    m10 = out["mesh"]["10"]["from_last_ready_ms"]["median"]
    m30 = out["mesh"]["30"]["from_last_ready_ms"]["median"]
    idle = out["idle_cpu"]["per_node_pct"]["median"]
    rss = out["rss"]["per_link_kib"]["median"]
    k9 = out["kill9"]["max_ms"]["median"]
    term = out["sigterm"]["max_ms"]["median"]
    stop_all_lat = [r["latency_ms"] for r in out["sigstop"]["rounds"]]
    stop_min = min((s["min"] for s in stop_all_lat if s["min"] is not None), default=None)
    stop_max = max((s["max"] for s in stop_all_lat if s["max"] is not None), default=None)
    timeout_ms, tick_ms = 4 * tick * 1000, tick * 1000
    stop_ok = (stop_min is not None and stop_max is not None
               and stop_min >= timeout_ms and stop_max <= timeout_ms + tick_ms
               and out["sigstop"]["reasons"] == ["timeout"])
    imp = out["import"]["import_ms"]["median"]
    out["targets"] = [
        {"what": "full mesh of 10 processes, ms after the last is ready", "value": m10, "target": 100, "op": "<=",
         "verdict": verdict(m10, 100, higher_is_better=False), "erlang_issue": ERLANG_FIGURES["mesh10_ms"]},
        {"what": "full mesh of 30 processes, ms after the last is ready", "value": m30, "target": 500, "op": "<=",
         "verdict": verdict(m30, 500, higher_is_better=False), "erlang_issue": None},
        {"what": "idle CPU per node in a 10-node mesh, % of a core", "value": idle, "target": 0.1, "op": "<=",
         "verdict": verdict(idle, 0.1, higher_is_better=False), "erlang_issue": ERLANG_FIGURES["idle_cpu_pct"]},
        {"what": "RSS per extra link, KiB", "value": rss, "target": 64, "op": "<=",
         "verdict": verdict(rss, 64, higher_is_better=False), "erlang_issue": ERLANG_FIGURES["rss_per_link_kib"]},
        {"what": "kill -9 to leave at every peer (slowest peer), ms", "value": k9, "target": 20, "op": "<=",
         "verdict": verdict(k9, 20, higher_is_better=False), "erlang_issue": ERLANG_FIGURES["kill9_ms"]},
        {"what": f"SIGSTOP to leave(timeout), ms (timeout {timeout_ms:.0f}, tick {tick_ms:.0f})",
         "value": stop_max, "min": stop_min, "target": f"{timeout_ms:.0f}..{timeout_ms + tick_ms:.0f}",
         "op": "in", "verdict": "met" if stop_ok else "MISSED", "erlang_issue": ERLANG_FIGURES["sigstop_s"]},
        {"what": "graceful stop to leave(shutdown) at every peer, ms", "value": term, "target": 20, "op": "<=",
         "verdict": verdict(term, 20, higher_is_better=False), "erlang_issue": None},
        {"what": "python -c 'import peerlink', ms", "value": imp, "target": 150, "op": "<=",
         "verdict": verdict(imp, 150, higher_is_better=False), "erlang_issue": None},
    ]
    out["cpu_count"] = os.cpu_count()
    out["note"] = ("Erlang figures are the issue's, measured by its author on a 2-core machine; "
                   "this suite measures Erlang only for throughput and latency.")
    return out
