"""Network namespaces as test hosts (TEST-ENV.md section 1, the verified up.sh recipe).

``Lab(n)`` creates ``{prefix}-sw`` (bridge ``br0``) and ``{prefix}-n1..n``; node ``i``
has ``eth0`` with ``10.77.0.i/24`` and ``fd77::i/64`` (nodad) and no default route. The
root namespace gets nothing. Processes run in a node with ``lab.exec_prefix(i)``::

    lab = Lab(3)
    try:
        node = await NodeProcess.start(args, prefix=lab.exec_prefix(1))
        lab.partition(1, 2)   # bridge drops n1 <-> n2; n3 still reaches both
        lab.cut(1, 3)         # bridge drops n1 -> n3 only (one-way)
        lab.heal()            # all partitions and cuts
        lab.isolate(3)        # n3 drops all non-loopback traffic; lab.unisolate(3)
        lab.loss(2, 5)        # n2 drops 5 % of its packets each way; lab.unloss(2)
        lab.delay(2, 0.1)     # n2's egress waits 100 ms (NFQUEUE); lab.undelay(2)
    finally:
        lab.close()           # kills every process in the namespaces, deletes them

Never connect to 10.77.x / fd77:: from the test process itself: it runs outside the lab.

Fault methods may be called from worker threads (``asyncio.to_thread``): each one is a
single nft transaction, and the bridge table is rewritten under a lock.

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
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

__all__ = ["Lab", "cleanup_stale", "delay_unavailable_reason", "netns_unavailable_reason",
           "requires_netns"]

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


@functools.cache
def delay_unavailable_reason() -> str | None:
    """Why ``Lab.delay`` cannot work here (netem is not built into this kernel; the
    NFQUEUE delayer needs the ``netfilterqueue`` package), or None if it can."""
    try:
        import netfilterqueue  # noqa: F401
    except ImportError as exc:
        return (f"netfilterqueue is not installed ({exc}); make test installs it (pip extra"
                " 'delay', which builds against apt's libnetfilter-queue-dev)")
    if shutil.which("iptables") is None or shutil.which("ip6tables") is None:
        return "needs iptables and ip6tables for the NFQUEUE rule (apt: iptables)"
    return None


_DELAYER = Path(__file__).with_name("nfq_delay.py")
_DELAY_RULE = "ACTION OUTPUT -o eth0 -j NFQUEUE --queue-num 1 --queue-bypass"


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


def _die_with_parent() -> None:
    """SIGKILL the child when the test process dies (kept across ``ip netns exec``)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


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
        self._drops: set[tuple[int, int]] = set()  # (from, to): the bridge drops that way
        self._bridge_lock = threading.Lock()
        self._delayers: dict[int, subprocess.Popen[str]] = {}
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
        self._check_pair(i, j)
        self._set_drops(add={(i, j), (j, i)})

    def cut(self, src: int, dst: int) -> None:
        """One-way partition: the bridge drops frames from ``src`` to ``dst`` only (so
        ``dst`` hears nothing from ``src``, and ``src`` gets no ACK for what it sends)."""
        self._check_pair(src, dst)
        self._set_drops(add={(src, dst)})

    def heal(self, i: int | None = None, j: int | None = None) -> None:
        """Remove the partition and cuts between ``i`` and ``j`` (both ways), or all."""
        if i is None or j is None:
            self._set_drops(clear=True)
        else:
            self._set_drops(remove={(i, j), (j, i)})

    def _check_pair(self, i: int, j: int) -> None:
        self._check(i)
        self._check(j)
        if i == j:
            raise ValueError("cannot partition a node from itself")

    def _set_drops(self, *, add: set[tuple[int, int]] = frozenset(),  # type: ignore[assignment]
                   remove: set[tuple[int, int]] = frozenset(),  # type: ignore[assignment]
                   clear: bool = False) -> None:
        with self._bridge_lock:
            if clear:
                self._drops.clear()
            self._drops |= add
            self._drops -= remove
            # One atomic nft transaction: (re)declare, delete, recreate. nft -f gotchas:
            # each rule ends with a newline, each closing brace is on its own line, and
            # a chain must not be named "fwd".
            lines = ["table bridge peerlink_part", "delete table bridge peerlink_part"]
            if self._drops:
                lines += [
                    "table bridge peerlink_part {",
                    "  chain forward_drop {",
                    "    type filter hook forward priority 0; policy accept;",
                ]
                lines += [f'    iifname "p{a}" oifname "p{b}" drop' for a, b in sorted(self._drops)]
                lines += ["  }", "}"]
            _run("ip", "netns", "exec", self.switch, "nft", "-f", "-",
                 input="\n".join(lines) + "\n")

    def nft(self, i: int, script: str) -> None:
        """Apply an ``nft -f`` script in node ``i`` (one transaction). Tip: start it with
        ``table inet T`` + ``delete table inet T`` to replace a table idempotently."""
        self.run(i, "nft", "-f", "-", input=script if script.endswith("\n") else script + "\n")

    def _node_table(self, i: int, table: str, input_rule: str | None,
                    output_rule: str | None) -> None:
        """Replace (or with no rules, delete) the ``inet`` table ``table`` in node ``i``:
        one filter chain on input and one on output, loopback always accepted."""
        lines = [f"table inet {table}", f"delete table inet {table}"]
        if input_rule or output_rule:
            lines.append(f"table inet {table} {{")
            for hook, rule, iface in (("input", input_rule, "iifname"),
                                      ("output", output_rule, "oifname")):
                if rule:
                    lines += [f"  chain {hook}_filter {{",
                              f"    type filter hook {hook} priority 0; policy accept;",
                              f'    {iface} "lo" accept',
                              f"    {rule}",
                              "  }"]
            lines.append("}")
        self.nft(i, "\n".join(lines))

    def isolate(self, i: int) -> None:
        """Node ``i`` silently drops everything in and out except loopback (a host
        that vanished without a FIN)."""
        self._node_table(i, "peerlink_isolate", "drop", "drop")

    def unisolate(self, i: int) -> None:
        self._node_table(i, "peerlink_isolate", None, None)

    def loss(self, i: int, percent: float) -> None:
        """Node ``i`` drops ``percent`` % of its packets at random, each way (nft
        ``numgen random``; resolution 0.1 %). Replaces an earlier loss on ``i``."""
        if not 0 <= percent <= 100:
            raise ValueError(f"0 <= percent <= 100, got {percent}")
        per_mille = round(percent * 10)
        rule = None if per_mille == 0 else "drop" if per_mille >= 1000 else \
            f"numgen random mod 1000 < {per_mille} drop"
        self._node_table(i, "peerlink_loss", rule, rule)

    def unloss(self, i: int) -> None:
        self._node_table(i, "peerlink_loss", None, None)

    def delay(self, i: int, seconds: float) -> None:
        """Every packet node ``i`` sends on eth0 waits ``seconds`` (netem is not in this
        kernel: an nft ``queue`` rule hands the packets to a delayer process in the
        namespace, TEST-ENV.md's NFQUEUE recipe). ``bypass``: if the delayer dies, the
        packets pass undelayed instead of being dropped. See
        ``delay_unavailable_reason()``."""
        if reason := delay_unavailable_reason():
            raise RuntimeError(reason)
        if seconds <= 0:
            raise ValueError(f"delay must be > 0 s, got {seconds}")
        self.undelay(i)
        proc = subprocess.Popen([*self.exec_prefix(i), sys.executable, str(_DELAYER), str(seconds)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                preexec_fn=_die_with_parent)
        self._delayers[i] = proc
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # "ready" once bound to the queue
        if line != "ready":
            self.undelay(i)
            raise RuntimeError(f"the NFQUEUE delayer in {self.ns(i)} did not start: {line!r}")
        # queue number 1 is per namespace: the delayer in node i sees only node i's
        # packets. iptables, not nft: this kernel has the xt NFQUEUE target (nft's
        # compat layer) but not nft's own queue expression.
        for tool in ("iptables", "ip6tables"):
            self.run(i, tool, *_DELAY_RULE.replace("ACTION", "-A").split())

    def undelay(self, i: int) -> None:
        """Remove node ``i``'s delay. Packets already queued still leave after their
        delay (the delayer is stopped only after that), so none is dropped."""
        proc = self._delayers.pop(i, None)
        if proc is None:
            return
        for tool in ("iptables", "ip6tables"):
            self.run(i, tool, *_DELAY_RULE.replace("ACTION", "-D").split(), check=False)
        try:
            assert proc.stdin is not None
            proc.stdin.close()  # the delayer exits once every queued packet has left
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

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
        for proc in self._delayers.values():
            proc.kill()
            proc.wait()
        self._delayers.clear()
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

