"""Benchmark 6: a full mesh of N real ``peerlink node --json`` processes on one machine
(issue 14), N = 10, 30 and 100, default tick (1 s) and timeout (4 s).

Every node lists all N (static discovery) and all are spawned at once, as a cluster's
pods start. The parent reads every node's JSON lines and stamps each when it reads it
(``rx``, CLOCK_MONOTONIC; the parent runs at a higher priority so that its stamps lag
little behind the nodes). On a 2-core machine 100 processes load it fully while they
start, so each figure comes with the CPU seconds it took, the machine's busy fraction
and the load average.

- Formation: from the last ``ready`` (and from the first spawn) until every node has
  seen a join of every other; the CPU seconds all nodes spent meanwhile; TCP
  connections accepted from spawn to full mesh (``/proc/net/snmp`` of the private
  network namespace: a pair that dialled each other at once costs two) and the
  cluster's linking rate (pairs / time from first ready to full mesh). Any leave
  while nobody stops is a false event and is counted.
- Idle: after 2 s, each node's CPU over a window (``/proc/PID/task/*/schedstat``), per
  node and per link, and the TCP segments per tick (pings and their ACKs).
- RSS per link: (median VmRSS of the meshed nodes - VmRSS of a lone node started at
  the same time with no peers) / (N - 1), as the issue measured it.
- Rolling restart (last round of each N): every node in turn gets SIGTERM and is
  started again (same name and port, new incarnation); the next restart waits until the
  mesh is whole again. Per restart: time from SIGTERM to re-converged. At every
  observer each restart must give exactly one ``leave(shutdown)`` of the old
  incarnation and one ``join`` of the new: anything else is a spurious event.
- Baseline in the same run: ``bench.worker mesh-raw``, N raw asyncio processes with one
  TCP connection per pair that write peerlink's 6-byte PING frame on every connection
  each tick: what idle links cost Python, asyncio and the kernel at the least.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from peerlink.testing import free_ports

from .common import (
    Child,
    child_env,
    cpu_ns,
    machine_cpu,
    python_cmd,
    rss_kib,
    stop_all,
    summary,
    tcp_counters,
    verdict,
    wait_for,
)
from .options import Options

ISSUE_FIGURES = {  # issue 14's table: peerlink before this work, measured by the issue's author
    "20": {"formation_s": 0.28, "false_leaves": 0, "idle_pct": 0.20, "rss_per_link_kib": 120},
    "60": {"formation_s": 2.2, "false_leaves": 0, "idle_pct": 0.50},
    "100": {"formation_s": "7.0-10.3", "false_leaves": "125 and 1,849", "idle_pct": 0.70,
            "rss_per_link_kib": "121-124"},
}
TICK = 1.0  # the default


class Node:
    """One mesh member across its restarts: the processes that ran under its name."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.procs: list[Child] = []
        self.read = 0  # events of the current process already folded into ``up``
        self.up: dict[str, str] = {}  # peer -> incarnation, from the current process's events
        self.full_at: float | None = None  # stamp of the join that completed the mesh here
        self.false_leaves: list[dict[str, Any]] = []

    @property
    def proc(self) -> Child:
        return self.procs[-1]

    @property
    def incarnation(self) -> str | None:
        ev = self.proc.find("event", "ready")
        return None if ev is None else str(ev["incarnation"])

    def fold(self, n: int, stopping: set[str]) -> None:
        """Fold the current process's new events into ``up``; a leave of a peer that is
        not being stopped is a false event."""
        evs = self.proc.events
        for ev in evs[self.read:]:
            kind = ev.get("event")
            if kind == "join":
                self.up[ev["peer"]] = ev["incarnation"]
                if self.full_at is None and len(self.up) == n - 1:
                    self.full_at = float(ev["rx"])
            elif kind == "leave":
                if self.up.get(ev["peer"]) == ev["incarnation"]:
                    del self.up[ev["peer"]]
                if ev["peer"] not in stopping:
                    self.false_leaves.append(ev)
        self.read = len(evs)


class Mesh:
    """N ``peerlink node --json`` processes with a static list of all of them."""

    def __init__(self, opts: Options, n: int, workdir: Path) -> None:
        self.n = n
        self.env = child_env(opts.src)
        self.workdir = workdir
        self.cookie = workdir / "cookie"
        self.cookie.write_text("peerlink-bench-scale\n")
        ports = free_ports(n + 1)
        self.url = "static://" + ",".join(f"127.0.0.1:{p}" for p in ports[:n])
        self.nodes = [Node(f"n{i:03d}", p) for i, p in enumerate(ports[:n])]
        self.lone_port = ports[n]
        self.stopping: set[str] = set()

    def spawn(self, node: Node, discovery: bool = True) -> Child:
        args = ["--cluster", "scale", "--cookie-file", str(self.cookie), "--listen",
                f"127.0.0.1:{node.port}", "--name", node.name, "--json"]
        if discovery:
            args += ["--discovery", self.url]
        child = Child(python_cmd("peerlink", "node", *args), env=self.env, name=node.name,
                      stderr_path=str(self.workdir / f"{node.name}.stderr"))
        node.procs.append(child)
        node.read, node.up, node.full_at = 0, {}, None
        return child

    def children(self) -> list[Child]:
        return [node.proc for node in self.nodes]

    def pids(self) -> list[int]:
        return [c.pid for c in self.children() if c.proc.poll() is None]

    def fold(self) -> None:
        for node in self.nodes:
            node.fold(self.n, self.stopping)

    def wait(self, cond: Any, timeout: float, what: str) -> None:
        def check() -> bool:
            self.fold()
            return bool(cond())

        if not wait_for(self.children(), check, timeout):
            lagging = [n.name for n in self.nodes if len(n.up) < self.n - 1][:10]
            raise RuntimeError(f"mesh of {self.n}: {what} not within {timeout:g} s (lagging: {lagging})")

    def all_ready(self) -> bool:
        return all(n.incarnation is not None for n in self.nodes)

    def formed(self) -> bool:
        return all(n.full_at is not None for n in self.nodes)

    def ready_stamps(self) -> list[float]:
        return [float(n.proc.expect("event", 1, "ready")["rx"]) for n in self.nodes]

    def cpu_by_pid(self) -> dict[int, float]:
        out = {}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                out[pid] = cpu_ns(pid) / 1e9
        return out

    def close(self) -> None:
        stop_all([p for node in self.nodes for p in node.procs])


class Snap:
    """CPU and TCP counters at one instant."""

    def __init__(self, mesh: Mesh | None) -> None:
        self.t = time.monotonic()
        self.by_pid = mesh.cpu_by_pid() if mesh is not None else {}
        self.cpu = sum(self.by_pid.values())
        self.tcp = tcp_counters()
        self.busy, self.total = machine_cpu()

    def since(self, before: Snap) -> dict[str, Any]:
        dt = self.t - before.t
        return {
            "wall_s": dt,
            "nodes_cpu_s": self.cpu - before.cpu,
            "machine_busy_fraction": (self.busy - before.busy) / max(1e-9, self.total - before.total),
            "tcp_accepted": self.tcp["PassiveOpens"] - before.tcp["PassiveOpens"],
            "tcp_dialled": self.tcp["ActiveOpens"] - before.tcp["ActiveOpens"],
            "tcp_segments_out": self.tcp["OutSegs"] - before.tcp["OutSegs"],
        }


def _idle(pids: list[int], window: float) -> tuple[list[float], dict[str, Any]]:
    """Each process's CPU over ``window`` seconds, as % of a core, and the TCP counters."""
    a = {p: cpu_ns(p) for p in pids}
    s0 = Snap(None)
    time.sleep(window)
    b = {p: cpu_ns(p) for p in pids}
    s1 = Snap(None)
    dt = s1.t - s0.t
    return [(b[p] - a[p]) / 1e9 / dt * 100 for p in pids], s1.since(s0)


def form(opts: Options, mesh: Mesh) -> dict[str, Any]:
    """Spawn all nodes (and the lone one) at once; measure formation, idle, RSS."""
    n = mesh.n
    pairs = n * (n - 1) // 2
    lone = Node("lone", mesh.lone_port)
    s_spawn = Snap(None)
    for node in mesh.nodes:
        mesh.spawn(node)
    mesh.spawn(lone, discovery=False)
    try:
        mesh.wait(mesh.all_ready, 60 + n, "all ready")
        s_ready = Snap(mesh)
        mesh.wait(mesh.formed, 120 + n, "full mesh")
        s_full = Snap(mesh)
        ready = mesh.ready_stamps()
        t_full = max(float(node.full_at or 0) for node in mesh.nodes)
        startup = s_ready.since(s_spawn)
        formation = s_full.since(s_ready)
        out: dict[str, Any] = {
            "n": n,
            "ready_spread_s": max(ready) - min(ready),
            "from_last_ready_s": t_full - max(ready),
            "from_first_ready_s": t_full - min(ready),
            "from_spawn_s": t_full - s_spawn.t,
            "startup_cpu_s": startup["nodes_cpu_s"] + 0.0,
            "startup_machine_busy": startup["machine_busy_fraction"],
            "formation_cpu_s": formation["nodes_cpu_s"],
            "formation_cpu_ms_per_node": summary([(s_full.by_pid.get(p, c) - c) * 1000
                                                  for p, c in s_ready.by_pid.items()]),
            "formation_machine_busy": formation["machine_busy_fraction"],
            "tcp_accepted_spawn_to_mesh": s_full.tcp["PassiveOpens"] - s_spawn.tcp["PassiveOpens"],
            "connections_per_pair": (s_full.tcp["PassiveOpens"] - s_spawn.tcp["PassiveOpens"]) / pairs,
            "pairs_per_s": pairs / max(1e-9, t_full - min(ready)),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        }
        time.sleep(2.0)  # settle: late duplicates retired, dial backoffs gone quiet
        mesh.fold()
        window = 3.0 if opts.quick else 10.0
        pids = mesh.pids()
        per_node, tcp = _idle(pids, window)
        med = statistics.median(per_node)
        ticks = tcp["wall_s"] / TICK
        out["idle"] = {
            "window_s": tcp["wall_s"], "per_node_pct": summary(per_node),
            "per_link_pct": med / max(1, n - 1),
            "tcp_segments_per_tick": tcp["tcp_segments_out"] / ticks,
            "tcp_segments_per_tick_per_link": tcp["tcp_segments_out"] / ticks / max(1, pairs),
            "machine_busy_fraction": tcp["machine_busy_fraction"],
        }
        rss = [rss_kib(p) for p in pids]
        lone_rss = rss_kib(lone.proc.pid)
        out["rss"] = {"meshed_median_kib": statistics.median(rss), "lone_kib": lone_rss,
                      "per_link_kib": (statistics.median(rss) - lone_rss) / max(1, n - 1)}
        out["false_leaves"] = sum(len(node.false_leaves) for node in mesh.nodes)
        out["false_leave_reasons"] = sorted({str(e.get("reason")) for node in mesh.nodes
                                             for e in node.false_leaves})
        return out
    finally:
        stop_all(lone.procs)


def rolling_restart(mesh: Mesh) -> dict[str, Any]:
    """Restart every node in turn; check the events every observer saw."""
    n = mesh.n
    marks = {node.name: (len(node.procs), node.read) for node in mesh.nodes}
    restarts: list[dict[str, Any]] = []
    s0 = Snap(mesh)
    gone_cpu = 0.0  # CPU of the processes stopped meanwhile, read just before SIGTERM
    for node in mesh.nodes:
        old_inc = node.incarnation
        mesh.stopping = {node.name}
        with contextlib.suppress(OSError):
            gone_cpu += cpu_ns(node.proc.pid) / 1e9
        t0 = time.monotonic()
        node.proc.signal(signal.SIGTERM)
        node.proc.proc.wait(30)
        mesh.spawn(node)

        def back(node: Node = node) -> bool:
            inc = node.incarnation
            return inc is not None and node.full_at is not None and all(
                other.up.get(node.name) == inc for other in mesh.nodes if other is not node)

        mesh.wait(back, 60, f"re-converged after restarting {node.name}")
        restarts.append({"node": node.name, "old": old_inc, "new": node.incarnation,
                         "reconverge_s": time.monotonic() - t0})
    mesh.stopping = set()
    mesh.fold()
    s1 = Snap(mesh)
    # what each observer saw about each restarted peer, from the start of the rolling
    # restart; a restarted process's own first N-1 joins are its formation, not storm
    expected = {(r["node"], r["old"], "leave", "shutdown") for r in restarts} | {
        (r["node"], r["new"], "join", "") for r in restarts}
    per_observer: list[int] = []
    spurious = 0
    examples: list[str] = []
    for node in mesh.nodes:
        first_proc, first_read = marks[node.name]
        seen: dict[tuple[str, str, str, str], int] = {}
        for k, proc in enumerate(node.procs[first_proc - 1:]):
            evs = proc.events[first_read:] if k == 0 else proc.events
            initial = 0
            for ev in evs:
                if ev.get("event") not in ("join", "leave"):
                    continue
                if k > 0 and ev["event"] == "join" and initial < n - 1:
                    initial += 1  # the restarted process forming its own links
                    continue
                key = (ev["peer"], ev["incarnation"], ev["event"], str(ev.get("reason", "")))
                seen[key] = seen.get(key, 0) + 1
        per_observer.append(sum(seen.values()) / max(1, len(restarts) - 1))
        want = {k for k in expected if k[0] != node.name}
        bad = sum(c - 1 for k, c in seen.items() if k in want and c > 1)
        bad += sum(c for k, c in seen.items() if k not in want)
        missing = sum(1 for k in want if k not in seen)
        spurious += bad
        if (bad or missing) and len(examples) < 5:
            examples.append(f"{node.name}: unexpected {[k for k in seen if k not in want][:3]}, "
                            f"{missing} missing")
    re = [r["reconverge_s"] for r in restarts]
    return {
        "restarts": len(restarts), "reconverge_s": summary(re), "total_s": s1.t - s0.t,
        "cpu_s": s1.cpu + gone_cpu - s0.cpu,
        "events_per_observer_per_restart": statistics.median(per_observer),
        "events_per_observer_per_restart_range": [min(per_observer), max(per_observer)],
        "spurious_events": spurious, "examples": examples,
        "tcp_accepted": s1.tcp["PassiveOpens"] - s0.tcp["PassiveOpens"],
    }


def raw_baseline(opts: Options, n: int) -> dict[str, Any]:
    """The same mesh of raw asyncio processes (``bench.worker mesh-raw``): idle CPU and
    RSS per link at the least."""
    env = child_env(opts.src)
    ports = free_ports(n + 1)
    kids = []
    for port in ports[:n]:
        peers = ",".join(str(p) for p in ports[:n] if p != port)
        kids.append(Child(python_cmd("bench.worker", "mesh-raw", "--port", str(port), "--peers", peers,
                                     "--tick", str(TICK)), env=env, name=f"raw{port}"))
    lone = Child(python_cmd("bench.worker", "mesh-raw", "--port", str(ports[n]), "--peers", ""),
                 env=env, name="raw-lone")
    try:
        if not wait_for([*kids, lone], lambda: all(k.find("event", "linked") for k in [*kids, lone]), 60 + n):
            raise RuntimeError(f"raw mesh of {n} did not link")
        time.sleep(2.0)
        pids = [k.pid for k in kids]
        per_node, tcp = _idle(pids, 3.0 if opts.quick else 10.0)
        rss = statistics.median(rss_kib(p) for p in pids)
        lone_rss = rss_kib(lone.pid)
        ticks = tcp["wall_s"] / TICK
        return {"n": n, "idle_per_node_pct": summary(per_node),
                "idle_per_link_pct": statistics.median(per_node) / max(1, n - 1),
                "tcp_segments_per_tick": tcp["tcp_segments_out"] / ticks,
                "rss_per_link_kib": (rss - lone_rss) / max(1, n - 1),
                "machine_busy_fraction": tcp["machine_busy_fraction"]}
    finally:
        stop_all([*kids, lone])


def _priority() -> str:
    try:
        os.nice(-10)  # stamp lines as they come, ahead of the nodes (needs root)
        return "nice -10"
    except OSError:
        return "default (not root)"


def run(opts: Options) -> dict[str, Any]:
    sizes = opts.sizes or ([10, 30] if opts.quick else [10, 30, 100])
    rounds = {n: 1 if opts.quick else 3 if n <= 30 else 2 for n in sizes}
    out: dict[str, Any] = {"benchmark": "scale", "method": __doc__, "tick_s": TICK,
                           "timeout_s": 4 * TICK, "parent_priority": _priority(),
                           "issue_figures": ISSUE_FIGURES, "sizes": {}}
    for n in sizes:
        runs: list[dict[str, Any]] = []
        restart: dict[str, Any] | None = None
        for r in range(rounds[n]):
            with tempfile.TemporaryDirectory(prefix=f"peerlink-scale-{n}-") as tmp:
                mesh = Mesh(opts, n, Path(tmp))
                try:
                    f = form(opts, mesh)
                    runs.append(f)
                    opts.log(f"scale: N={n} round {r + 1}: full mesh {f['from_last_ready_s']:.2f} s after the "
                             f"last ready ({f['from_spawn_s']:.1f} s after spawn), formation "
                             f"{f['formation_cpu_s']:.1f} CPU-s, {f['connections_per_pair']:.2f} "
                             f"connections/pair, idle {f['idle']['per_node_pct']['median']:.3f} %/node, "
                             f"RSS {f['rss']['per_link_kib']:.1f} KiB/link, false leaves {f['false_leaves']}")
                    if r == rounds[n] - 1:
                        restart = rolling_restart(mesh)
                        opts.log(f"scale: N={n} rolling restart: re-converged in "
                                 f"{restart['reconverge_s']['median']:.2f} s median, "
                                 f"{restart['events_per_observer_per_restart']:.2f} events per observer "
                                 f"per restart, spurious {restart['spurious_events']}")
                finally:
                    mesh.close()
            time.sleep(1.0)
        raw = raw_baseline(opts, n)
        opts.log(f"scale: N={n} raw baseline: idle {raw['idle_per_node_pct']['median']:.3f} %/node, "
                 f"RSS {raw['rss_per_link_kib']:.1f} KiB/link")
        out["sizes"][str(n)] = {
            "rounds": runs, "rolling_restart": restart, "raw": raw,
            "from_last_ready_s": summary([f["from_last_ready_s"] for f in runs]),
            "from_spawn_s": summary([f["from_spawn_s"] for f in runs]),
            "formation_cpu_s": summary([f["formation_cpu_s"] for f in runs]),
            "startup_cpu_s": summary([f["startup_cpu_s"] for f in runs]),
            "connections_per_pair": summary([f["connections_per_pair"] for f in runs]),
            "pairs_per_s": summary([f["pairs_per_s"] for f in runs]),
            "idle_per_node_pct": summary([f["idle"]["per_node_pct"]["median"] for f in runs]),
            "idle_per_link_pct": summary([f["idle"]["per_link_pct"] for f in runs]),
            "tcp_segments_per_tick_per_link": summary([f["idle"]["tcp_segments_per_tick_per_link"]
                                                       for f in runs]),
            "rss_per_link_kib": summary([f["rss"]["per_link_kib"] for f in runs]),
            "false_leaves": sum(f["false_leaves"] for f in runs),
        }
    big = out["sizes"].get("100") or out["sizes"][str(sizes[-1])]
    nbig = 100 if "100" in out["sizes"] else sizes[-1]
    formation = big["from_last_ready_s"]["median"]
    idle = big["idle_per_node_pct"]["median"]
    rss = big["rss_per_link_kib"]["median"]
    rr = big["rolling_restart"] or {}
    out["targets"] = [
        {"what": f"{nbig} processes: all ready -> full mesh, s", "value": formation, "target": 2.0,
         "op": "<=", "verdict": verdict(formation, 2.0, higher_is_better=False)},
        {"what": f"{nbig} processes: false leaves while forming (all rounds)", "value": big["false_leaves"],
         "target": 0, "op": "==", "verdict": "met" if big["false_leaves"] == 0 else "MISSED"},
        {"what": f"idle CPU per node at {nbig} nodes, % of a core (tick 1 s)", "value": idle, "target": 0.5,
         "op": "<=", "verdict": verdict(idle, 0.5, higher_is_better=False)},
        {"what": f"RSS per link at {nbig} nodes, KiB", "value": rss, "target": 64, "op": "<=",
         "verdict": verdict(rss, 64, higher_is_better=False)},
        {"what": f"rolling restart of {nbig}: events per observer per restart (1 leave + 1 join)",
         "value": rr.get("events_per_observer_per_restart"), "target": 2, "op": "==",
         "verdict": "met" if rr and rr["spurious_events"] == 0
         and rr["events_per_observer_per_restart"] == 2 else "MISSED"},
    ]
    return out
