"""Shared helpers for the benchmarks: statistics, machine facts, child processes that
talk JSON lines, results files. Runs in the orchestrating process only (the workers
import nothing from here but ``pin`` and ``emit``)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
REPO = ROOT.parent


# -- statistics --------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in 0..1) of ``values``."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median and spread of per-round values."""
    vals = [float(v) for v in values]
    if not vals:
        return {"rounds": [], "median": None, "min": None, "max": None, "q1": None, "q3": None}
    return {
        "rounds": vals,
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "q1": quantile(vals, 0.25),
        "q3": quantile(vals, 0.75),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# -- machine ---------------------------------------------------------------------------


def machine_info(loop: str = "asyncio") -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    versions: dict[str, str] = {}
    for mod in ("msgpack", "uvloop"):
        try:
            m = __import__(mod)
            v = getattr(m, "__version__", None) or ".".join(map(str, getattr(m, "version", ())))
            versions[mod] = str(v)
        except ImportError:
            versions[mod] = "not installed"
    erl = erlang_version()
    load = os.getloadavg()
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_mib": mem_kib // 1024 if mem_kib else None,
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "loop": loop,
        "packages": versions,
        "erlang_otp": erl,
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg_at_start": [round(x, 2) for x in load],
        "network_namespace": bool(os.environ.get("PEERLINK_BENCH_NETNS")),
    }


def erlang_version() -> str | None:
    import shutil

    if shutil.which("erl") is None:
        return None
    try:
        out = subprocess.run(
            ["erl", "-noshell", "-eval",
             'io:format("~s/~s", [erlang:system_info(otp_release), erlang:system_info(version)]), halt().'],
            capture_output=True, text=True, timeout=30,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# -- processes ---------------------------------------------------------------------------


def python_cmd(module: str, *args: str, optimize: bool = False) -> list[str]:
    return [sys.executable, *(["-O"] if optimize else []), "-m", module, *args]


# peerlink once asserted ``isinstance(transport, asyncio.Transport)``, which uvloop's
# transports are not, and ran on uvloop with ``python -O``; link.py casts now.
UVLOOP_NEEDS_O = False


def child_env(extra_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO)]
    if extra_path:
        paths.insert(0, extra_path)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


@dataclass
class Child:
    """A child process whose stdout is JSON lines; lines are parsed into ``events``."""

    argv: list[str]
    env: dict[str, str] | None = None
    name: str = ""
    stderr_path: str | None = None  # stderr to this file (appended) instead of a pipe
    proc: subprocess.Popen[bytes] = field(init=False)
    events: list[dict[str, Any]] = field(default_factory=list)
    spawned_at: float = 0.0
    _buf: bytes = b""

    def __post_init__(self) -> None:
        self.spawned_at = time.monotonic()
        err: Any = subprocess.PIPE
        if self.stderr_path is not None:
            err = open(self.stderr_path, "ab")  # noqa: SIM115 - the child holds it
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                # not the repository: ``python -m`` puts the working directory first on
                # sys.path, which would shadow a --src tree given through PYTHONPATH
                env=self.env, cwd=tempfile.gettempdir(),
            )
        finally:
            if self.stderr_path is not None:
                err.close()
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> bool:
        """Read what is available; False at EOF."""
        assert self.proc.stdout is not None
        try:
            data = self.proc.stdout.read()
        except BlockingIOError:
            return True
        if not data:
            return False
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        now = time.monotonic()  # the parent's stamp: when the line was read
        for line in lines:
            if line.strip():
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    ev = {"event": "text", "text": line.decode(errors="replace")}
                if isinstance(ev, dict):
                    ev.setdefault("rx", now)
                self.events.append(ev)
        return True

    def find(self, key: str, value: Any = None) -> dict[str, Any] | None:
        for ev in self.events:
            if key in ev and (value is None or ev[key] == value):
                return ev
        return None

    def expect(self, key: str, timeout: float, value: Any = None) -> dict[str, Any]:
        """Wait for a JSON line holding ``key`` (equal to ``value`` if given)."""
        found = wait_for([self], lambda: self.find(key, value) is not None, timeout)
        ev = self.find(key, value)
        if not found or ev is None:
            raise RuntimeError(f"{self.name or self.argv[:4]}: no {key!r} within {timeout:g} s; "
                               f"exit={self.proc.poll()} stderr={self.stderr_tail()!r}")
        return ev

    def send_line(self, text: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write(text.encode() + b"\n")
            self.proc.stdin.flush()

    def stderr_tail(self, n: int = 2000) -> str:
        if self.stderr_path is not None:
            with contextlib.suppress(OSError), open(self.stderr_path, "rb") as f:
                return f.read().decode(errors="replace")[-n:]
            return ""
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stderr is not None
        with contextlib.suppress(Exception):
            return self.proc.stderr.read().decode(errors="replace")[-n:]
        return ""

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        """End this child: close stdin, SIGTERM, then SIGKILL."""
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)
        for f in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            with contextlib.suppress(Exception):
                if f is not None:
                    f.close()


def wait_for(children: Iterable[Child], cond: Callable[[], bool], timeout: float) -> bool:
    """Pump the children's stdout until ``cond()`` or ``timeout``."""
    kids = list(children)
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    for c in kids:
        if c.proc.stdout is not None and not c.proc.stdout.closed:
            sel.register(c.proc.stdout, selectors.EVENT_READ, c)
    try:
        while True:
            for c in kids:
                c._read()
            if cond():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not sel.get_map():
                time.sleep(min(left, 0.01))
                continue
            for key, _ in sel.select(min(left, 0.5)):
                child: Child = key.data
                if not child._read():
                    sel.unregister(key.fileobj)
    finally:
        sel.close()


def stop_all(children: Iterable[Child]) -> None:
    kids = list(children)
    for c in kids:
        if c.proc.poll() is None:
            c.signal(signal.SIGCONT)
            c.signal(signal.SIGTERM)
    for c in kids:
        c.stop(timeout=5.0)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` in ns (schedstat; /proc/PID/stat ticks as a
    fallback)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        if total:
            return total
    except (OSError, ValueError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def tcp_counters() -> dict[str, int]:
    """The kernel's TCP counters of this network namespace (``/proc/net/snmp``): opens,
    segments in and out..."""
    rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
            if line.startswith("Tcp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=True)}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / hz, sum(fields) / hz


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- output ------------------------------------------------------------------------------


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def fmt_num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if unit in ("msgs/s", "calls/s"):
        return f"{x / 1e6:.3f} M" if x >= 1e5 else f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (also readable on a terminal)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def verdict(value: float | None, target: float, *, higher_is_better: bool) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "MISSED"
