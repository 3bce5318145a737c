"""Drive the Distributed Erlang baseline (``bench/erl/peerbench.erl``).

Two ``erl -name x@127.0.0.1`` nodes on loopback (epmd and the distribution listener
bound to 127.0.0.1), default schedulers, no pinning: Erlang as shipped. Skipped with a
reason when ``erl``/``erlc`` are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from typing import Any

from .common import ROOT

ERL_SRC = ROOT / "erl" / "peerbench.erl"
COOKIE = "peerlink_bench"


def available() -> str | None:
    """None if Erlang can run, else why not."""
    for tool in ("erl", "erlc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install erlang-base)"
    return None


def _listening(port: int) -> bool:
    """Is something accepting on 127.0.0.1:port? (A bind test would fail on TIME_WAIT
    connections left by an epmd that just exited.)"""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ErlangPair:
    """epmd (if none runs), node b serving, and a way to run node a commands."""

    def __init__(self, flags: tuple[str, ...] = ()) -> None:
        self.flags = flags  # emulator flags for both nodes, e.g. ("+S", "1")
        self.tmp = tempfile.TemporaryDirectory(prefix="peerlink-bench-erl-")
        self.ebin = self.tmp.name
        self.env = dict(os.environ, ERL_EPMD_ADDRESS="127.0.0.1", ERL_CRASH_DUMP_SECONDS="0",
                        ERL_CRASH_DUMP="/dev/null")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.b = f"b{os.getpid()}x{len(flags)}{abs(hash(flags)) % 10_000}@127.0.0.1"
        self.runs = 0

    def _erl(self, name: str, *args: str) -> list[str]:
        return ["erl", *self.flags, "-name", name, "-setcookie", COOKIE, "-noshell", "-pa", self.ebin,
                "-kernel", "inet_dist_use_interface", "{127,0,0,1}", *args]

    def start(self) -> None:
        subprocess.run(["erlc", "-o", self.ebin, str(ERL_SRC)], check=True, env=self.env,
                       capture_output=True)
        if not _listening(4369):  # else an epmd runs already (ours or the machine's): use it
            self.procs.append(subprocess.Popen(["epmd", "-address", "127.0.0.1"], env=self.env,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            # wait until it listens: an erl that finds no epmd starts a daemon of its own
            deadline = time.monotonic() + 10
            while not _listening(4369) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.procs.append(subprocess.Popen(
            self._erl(self.b, "-eval", "peerbench:serve()"), env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.ebin))
        time.sleep(1.0)

    def run(self, fn: str, *args: Any, timeout: float = 120.0) -> dict[str, Any]:
        self.runs += 1
        a = f"a{os.getpid()}x{abs(hash(self.flags)) % 10_000}x{self.runs}@127.0.0.1"
        out = subprocess.run(self._erl(a, "-run", "peerbench", fn, self.b, *map(str, args)),
                             env=self.env, capture_output=True, text=True, timeout=timeout,
                             cwd=self.ebin)
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                result: dict[str, Any] = json.loads(line)
                return result
        raise RuntimeError(f"erlang {fn} {args}: {out.stdout[-500:]} {out.stderr[-500:]}")

    def stop(self) -> None:
        if os.environ.get("PEERLINK_BENCH_NETNS"):
            # our private network namespace: any epmd here is one of ours (erl may have
            # started a daemon itself); ask it to exit rather than leave it behind
            subprocess.run(["epmd", "-kill"], env=self.env, capture_output=True, timeout=10, check=False)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self.procs.clear()
        self.tmp.cleanup()


def start_pairs(flag_sets: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], ErlangPair]:
    """One running node pair per distinct set of erl flags (stop them with stop_pairs)."""
    pairs: dict[tuple[str, ...], ErlangPair] = {}
    try:
        for flags in flag_sets:
            if flags not in pairs:
                pairs[flags] = ErlangPair(flags)
                pairs[flags].start()
    except BaseException:
        stop_pairs(pairs)
        raise
    return pairs


def stop_pairs(pairs: dict[tuple[str, ...], ErlangPair]) -> None:
    for pair in pairs.values():
        pair.stop()
