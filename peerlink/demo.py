"""``peerlink demo``: N node processes on 127.0.0.1 form a mesh; one is killed with
SIGKILL, the others report it gone; it restarts and rejoins with a new incarnation;
then all stop cleanly. Prints a live membership table and the time of each step."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .testing import free_ports

__all__ = ["run_demo"]

CLUSTER = "demo"
STEP_TIMEOUT = 30.0


class DemoNode:
    def __init__(self, name: str, port: int, discovery: str, cookie_file: str) -> None:
        self.name = name
        self.port = port
        self.discovery = discovery
        self.cookie_file = cookie_file
        self.proc: asyncio.subprocess.Process | None = None
        self.incarnation = ""
        self.sees: dict[str, str] = {}  # peer -> incarnation
        self.events: list[dict[str, Any]] = []
        self.reader: asyncio.Task[None] | None = None

    async def start(self, on_event: Callable[[], None]) -> None:
        self.sees.clear()
        self.incarnation = ""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "peerlink", "node", "--json", "--cluster", CLUSTER,
            "--cookie-file", self.cookie_file, "--listen", f"127.0.0.1:{self.port}",
            "--name", self.name, "--discovery", self.discovery,
            "--tick", "0.1", "--timeout", "0.5", "--reconnect-max", "0.5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        self.reader = asyncio.get_running_loop().create_task(self._read(self.proc, on_event))

    async def _read(self, proc: asyncio.subprocess.Process, on_event: Callable[[], None]) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            ev = json.loads(line)
            ev["t"] = time.monotonic()
            self.events.append(ev)
            if ev["event"] == "ready":
                self.incarnation = ev["incarnation"]
            elif ev["event"] == "join":
                self.sees[ev["peer"]] = ev["incarnation"]
            elif ev["event"] == "leave" and self.sees.get(ev["peer"]) == ev["incarnation"]:
                del self.sees[ev["peer"]]
            on_event()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Demo:
    def __init__(self, n: int) -> None:
        self.n = n
        self.tty = sys.stdout.isatty()
        self.drawn = 0
        self.changed = asyncio.Event()
        self.tmp = tempfile.TemporaryDirectory(prefix="peerlink-demo-")
        cookie = os.path.join(self.tmp.name, "cookie")
        with open(cookie, "w") as f:
            f.write(os.urandom(16).hex() + "\n")
        os.chmod(cookie, 0o600)
        ports = free_ports(n)
        discovery = "static://" + ",".join(f"127.0.0.1:{p}" for p in ports)
        self.nodes = [DemoNode(f"node-{i + 1}", ports[i], discovery, cookie) for i in range(n)]

    def _on_event(self) -> None:
        self.changed.set()
        if self.tty:
            self.draw()

    def table(self) -> list[str]:
        names = [n.name for n in self.nodes]
        width = max(len(x) for x in names) + 2
        head = " " * width + "".join(x.rjust(width) for x in names) + "   incarnation"
        rows = [head]
        for node in self.nodes:
            cells = []
            for other in self.nodes:
                if other is node:
                    cells.append("self" if node.alive else "DEAD")
                elif not node.alive:
                    cells.append("-")
                else:
                    cells.append("linked" if other.name in node.sees else ".")
            status = node.incarnation if node.alive else "(killed)"
            rows.append(node.name.ljust(width) + "".join(c.rjust(width) for c in cells) + "   " + status)
        return rows

    def draw(self) -> None:
        lines = self.table()
        if self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        self.drawn = len(lines)

    def say(self, text: str) -> None:
        self.drawn = 0
        print(text, flush=True)

    async def until(self, cond: Callable[[], bool], what: str) -> float:
        t0 = time.monotonic()
        async with asyncio.timeout(STEP_TIMEOUT):
            while not cond():
                self.changed.clear()
                await self.changed.wait()
        return (time.monotonic() - t0) * 1000

    def full_mesh(self) -> bool:
        live = [n for n in self.nodes if n.alive and n.incarnation]
        if len(live) != self.n:
            return False
        return all(
            all(o.name in n.sees and n.sees[o.name] == o.incarnation for o in live if o is not n) for n in live
        )

    async def run(self) -> int:
        self.say(f"peerlink demo: {self.n} node processes on 127.0.0.1, static discovery, "
                 f"tick 0.1 s, timeout 0.5 s\n")
        timings: list[tuple[str, float]] = []
        try:
            t0 = time.monotonic()
            for node in self.nodes:
                await node.start(self._on_event)
            self.say("1. starting all nodes; waiting for the full mesh")
            ms = await self.until(self.full_mesh, "mesh")
            timings.append((f"full mesh of {self.n} processes (from first spawn)", (time.monotonic() - t0) * 1000))
            self.step_done()

            victim = self.nodes[self.n // 2]
            old_inc = victim.incarnation
            self.say(f"\n2. kill -9 {victim.name} (pid {victim.proc.pid if victim.proc else '?'})")
            assert victim.proc is not None
            victim.proc.send_signal(signal.SIGKILL)
            await victim.proc.wait()
            others = [n for n in self.nodes if n is not victim]
            ms = await self.until(lambda: all(victim.name not in n.sees for n in others), "leave")
            reasons = sorted({ev["reason"] for n in others for ev in n.events
                              if ev["event"] == "leave" and ev["peer"] == victim.name})
            timings.append((f"kill -9 -> every peer saw leave ({', '.join(reasons)})", ms))
            self.step_done()

            self.say(f"\n3. restart {victim.name}")
            t1 = time.monotonic()
            await victim.start(self._on_event)
            ms = await self.until(self.full_mesh, "rejoin")
            ms = (time.monotonic() - t1) * 1000
            timings.append((f"restart -> mesh again (incarnation {old_inc} -> {victim.incarnation})", ms))
            self.step_done()

            self.say("\n4. stopping every node with SIGTERM (each says goodbye)")
            t2 = time.monotonic()
            codes = await self.stop_all()
            timings.append((f"graceful stop of all (exit codes {sorted(set(codes))})", (time.monotonic() - t2) * 1000))
        except TimeoutError:
            self.say(f"\nstep did not complete within {STEP_TIMEOUT:g} s:")
            self.draw_static()
            await self.stop_all()
            return 1
        finally:
            for node in self.nodes:
                if node.alive and node.proc is not None:
                    node.proc.kill()
            self.tmp.cleanup()
        self.say("\ntimings")
        for what, ms in timings:
            self.say(f"  {ms:8.1f} ms  {what}")
        return 0

    def step_done(self) -> None:
        if not self.tty:
            self.draw_static()
        self.drawn = 0

    def draw_static(self) -> None:
        print("\n".join(self.table()), flush=True)

    async def stop_all(self) -> list[int]:
        procs = [n.proc for n in self.nodes if n.alive and n.proc is not None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        return [await p.wait() for p in procs]


async def run_demo(n: int = 5) -> int:
    if n < 2:
        print("peerlink demo: --nodes must be at least 2", file=sys.stderr)
        return 2
    return await Demo(n).run()
