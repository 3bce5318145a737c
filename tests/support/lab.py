"""Network namespaces as test hosts (TEST-ENV.md section 1, the verified up.sh recipe).

``Lab(n)`` creates ``{prefix}-sw`` (bridge ``br0``) and ``{prefix}-n1..n``; node ``i``
has ``eth0`` with ``10.77.0.i/24`` and ``fd77::i/64`` (nodad) and no default route. The
root namespace gets nothing. Processes run in a node with ``lab.exec_prefix(i)``::

    lab = Lab(3)
    try:
        node = await NodeProcess.start(args, prefix=lab.exec_prefix(1))
        lab.partition(1, 2)   # bridge drops n1 <-> n2; n3 still reaches both
        lab.heal()
        lab.isolate(3)        # n3 drops all non-loopback traffic; lab.unisolate(3)
    finally:
        lab.close()           # kills every process in the namespaces, deletes them

Never connect to 10.77.x / fd77:: from the test process itself: it runs outside the lab.

Prefixes are ``pl<pid>x<k>``: ``cleanup_stale()`` (run at session start) deletes only
namespaces whose owning pid is dead, so concurrent test runs on one machine are safe.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence

import pytest

__all__ = ["Lab", "cleanup_stale", "netns_unavailable_reason", "requires_netns"]

_PREFIX_RE = re.compile(r"^pl(\d+)x\d+-(?:sw|n\d+|probe)$")
_counter = itertools.count(1)

#: Mark a test (or ``pytestmark = requires_netns``) that needs a ``Lab``; the root
#: conftest skips it with the reason from ``netns_unavailable_reason()``.
requires_netns = pytest.mark.netns


def _run(*cmd: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, input=input, text=True, capture_output=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): "
                           f"{result.stderr.strip() or result.stdout.strip()}"
                           + (f"\n--- input ---\n{input}" if input else ""))
    return result


def new_prefix() -> str:
    """A short prefix unique to this process: ``pl<pid>x<k>``."""
    return f"pl{os.getpid()}x{next(_counter)}"


@functools.cache
def netns_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command (apt: {'iproute2' if tool == 'ip' else 'nftables'})"
    probe = f"{new_prefix()}-probe"
    added = _run("ip", "netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"'ip netns add' does not work here: {added.stderr.strip()}"
    try:
        nft = _run("ip", "netns", "exec", probe, "nft", "list", "ruleset", check=False)
        if nft.returncode != 0:
            return f"nft does not work in a namespace: {nft.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


def list_namespaces() -> list[str]:
    if shutil.which("ip") is None:
        return []
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_ns_processes(ns: str) -> None:
    pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGCONT)
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete lab namespaces left by test runs that are gone; returns their names."""
    if os.geteuid() != 0:
        return []
    removed = []
    for ns in list_namespaces():
        m = _PREFIX_RE.match(ns)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _kill_ns_processes(ns)
            _run("ip", "netns", "del", ns, check=False)
            removed.append(ns)
    return removed


class Lab:
    """``n`` hosts on one bridge, each in its own network namespace."""

    def __init__(self, n: int, prefix: str | None = None) -> None:
        if not 1 <= n <= 250:
            raise ValueError(f"1 <= n <= 250, got {n}")
        self.n = n
        self.prefix = prefix or new_prefix()
        self.created: list[str] = []
        self._partitions: set[tuple[int, int]] = set()
        try:
            self._up()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------- addresses
    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def ns(self, i: int) -> str:
        self._check(i)
        return f"{self.prefix}-n{i}"

    def ip4(self, i: int) -> str:
        self._check(i)
        return f"10.77.0.{i}"

    def ip6(self, i: int) -> str:
        self._check(i)
        return f"fd77::{i}"

    def addresses(self, port: int, indexes: Sequence[int] | None = None, *,
                  v6: bool = False) -> list[str]:
        """``host:port`` of the given nodes (all by default), IPv4 or IPv6."""
        idx = indexes or range(1, self.n + 1)
        return [f"[{self.ip6(i)}]:{port}" if v6 else f"{self.ip4(i)}:{port}" for i in idx]

    def exec_prefix(self, i: int) -> list[str]:
        """Prefix for a command line that runs in node ``i`` (``ip netns exec`` execs,
        so the process's pid is the command's own)."""
        return ["ip", "netns", "exec", self.ns(i)]

    def run(self, i: int, *cmd: str, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a short command in node ``i`` and return its result."""
        return _run(*self.exec_prefix(i), *cmd, input=input, check=check)

    def _check(self, i: int) -> None:
        if not 1 <= i <= self.n:
            raise ValueError(f"node index must be 1..{self.n}, got {i}")

    # --------------------------------------------------------------- set-up
    def _add_ns(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self.created.append(ns)

    def _up(self) -> None:
        sw = self.switch
        self._add_ns(sw)
        _run("ip", "-n", sw, "link", "add", "br0", "type", "bridge",
             "mcast_snooping", "0", "stp_state", "0", "forward_delay", "0")
        _run("ip", "-n", sw, "link", "set", "br0", "up")
        _run("ip", "-n", sw, "link", "set", "lo", "up")
        for i in range(1, self.n + 1):
            ns = self.ns(i)
            self._add_ns(ns)
            # both veth ends are created directly in their namespaces
            _run("ip", "link", "add", "eth0", "netns", ns, "type", "veth",
                 "peer", "name", f"p{i}", "netns", sw)
            _run("ip", "-n", sw, "link", "set", f"p{i}", "master", "br0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.ip4(i)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "addr", "add", f"{self.ip6(i)}/64", "dev", "eth0", "nodad")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")

    # ------------------------------------------------------- fault injection
    def partition(self, i: int, j: int) -> None:
        """The bridge drops all frames between nodes ``i`` and ``j`` (both ways);
        other pairs are unaffected. Partitions accumulate until ``heal()``."""
        self._check(i)
        self._check(j)
        if i == j:
            raise ValueError("cannot partition a node from itself")
        self._partitions.add((min(i, j), max(i, j)))
        self._apply_partitions()

    def heal(self, i: int | None = None, j: int | None = None) -> None:
        """Remove the partition between ``i`` and ``j``, or all of them."""
        if i is None or j is None:
            self._partitions.clear()
        else:
            self._partitions.discard((min(i, j), max(i, j)))
        self._apply_partitions()

    def _apply_partitions(self) -> None:
        # One atomic nft transaction: (re)declare, delete, recreate. nft -f gotchas:
        # each rule ends with a newline, each closing brace is on its own line, and a
        # chain must not be named "fwd".
        lines = ["table bridge peerlink_part", "delete table bridge peerlink_part"]
        if self._partitions:
            lines += [
                "table bridge peerlink_part {",
                "  chain forward_drop {",
                "    type filter hook forward priority 0; policy accept;",
            ]
            for a, b in sorted(self._partitions):
                lines.append(f'    iifname "p{a}" oifname "p{b}" drop')
                lines.append(f'    iifname "p{b}" oifname "p{a}" drop')
            lines += ["  }", "}"]
        _run("ip", "netns", "exec", self.switch, "nft", "-f", "-", input="\n".join(lines) + "\n")

    def nft(self, i: int, script: str) -> None:
        """Apply an ``nft -f`` script in node ``i`` (one transaction). Tip: start it with
        ``table inet T`` + ``delete table inet T`` to replace a table idempotently."""
        self.run(i, "nft", "-f", "-", input=script if script.endswith("\n") else script + "\n")

    def isolate(self, i: int) -> None:
        """Node ``i`` silently drops everything in and out except loopback (a host
        that vanished without a FIN)."""
        script = "\n".join([
            "table inet peerlink_isolate",
            "delete table inet peerlink_isolate",
            "table inet peerlink_isolate {",
            "  chain input_drop {",
            "    type filter hook input priority 0; policy accept;",
            '    iifname "lo" accept',
            "    drop",
            "  }",
            "  chain output_drop {",
            "    type filter hook output priority 0; policy accept;",
            '    oifname "lo" accept',
            "    drop",
            "  }",
            "}",
        ])
        self.nft(i, script)

    def unisolate(self, i: int) -> None:
        self.nft(i, "table inet peerlink_isolate\ndelete table inet peerlink_isolate")

    def set_link(self, i: int, up: bool) -> None:
        """Pull (``up=False``) or plug node ``i``'s cable at the bridge."""
        self._check(i)
        _run("ip", "-n", self.switch, "link", "set", f"p{i}", "up" if up else "down")

    # ----------------------------------------------------------------- close
    def pids(self) -> dict[str, list[int]]:
        """Namespace -> pids of the processes running in it."""
        return {ns: [int(p) for p in _run("ip", "netns", "pids", ns, check=False).stdout.split()]
                for ns in self.created}

    def close(self) -> None:
        """Kill every process in the lab's namespaces (by pid), then delete them.
        Safe to call twice."""
        for ns in self.created:
            _kill_ns_processes(ns)
        for ns in reversed(self.created):
            _run("ip", "netns", "del", ns, check=False)
        self.created.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lab {self.prefix} n={self.n}>"

