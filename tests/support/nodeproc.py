"""Real ``peerlink node --json`` OS processes for tests.

A ``NodeProcess`` runs one node (optionally inside a network namespace through an
``ip netns exec NS`` prefix), parses its stdout JSON lines into ``events`` and lets a
test await them with a deadline::

    p = await NodeProcess.start(node_args(cluster="c", cookie_file=f, listen=..., name="a",
                                          discovery=[static_url([...])]))
    ev = await p.wait_event("join", peer="b", timeout=5)
    mark = p.mark()
    other.kill()
    await p.wait_event("leave", peer="b", reason="connection_lost", after=mark)

``NodeFactory`` (the ``node_factory`` fixture) adds free loopback ports, a shared
cookie file, fast timings, ``start_mesh`` and clean-up. ``check_events`` states the
event invariants every run must keep (join/leave alternate per (name, incarnation),
a node never reports itself, ...); the fixture checks them at teardown.

Deadlines are multiplied by ``PEERLINK_TEST_TIME_FACTOR`` (default 1), and so are the
``tick``/``timeout`` the factory passes to nodes. ``PEERLINK_TEST_NODE_COMMAND``
replaces ``python -m peerlink node`` (shell words; used to self-test the harness with
``tests/support/fakenode.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CRASH_SIGNS",
    "LEAVE_REASONS",
    "NodeFactory",
    "NodeProcess",
    "assert_events_ok",
    "check_events",
    "format_hostport",
    "node_args",
    "node_command",
    "scaled",
    "static_url",
    "time_factor",
    "wait_mesh",
]

Event = dict[str, Any]

# what application node programs (support/presence_node.py) print besides membership
APP_EVENTS = frozenset({"diff", "view"})
LEAVE_REASONS = frozenset({"shutdown", "connection_lost", "timeout", "restarted", "protocol_error"})
#: stderr lines that mean an error escaped the code that should have handled it
CRASH_SIGNS = ("Traceback (most recent call last)", "Exception in callback",
               "exception was never retrieved", "Fatal error")

# Fast timings for tests (seconds, before the time factor).
DEFAULT_TICK = 0.2
DEFAULT_TIMEOUT = 1.0
DEFAULT_READY_TIMEOUT = 20.0


def time_factor() -> float:
    """``PEERLINK_TEST_TIME_FACTOR`` (default 1): scale for every test deadline."""
    raw = os.environ.get("PEERLINK_TEST_TIME_FACTOR", "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"PEERLINK_TEST_TIME_FACTOR must be a number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"PEERLINK_TEST_TIME_FACTOR must be > 0, got {raw!r}")
    return value


def scaled(seconds: float) -> float:
    """``seconds`` times the test time factor."""
    return seconds * time_factor()


def node_command() -> list[str]:
    """The program that runs a node, without its options."""
    override = os.environ.get("PEERLINK_TEST_NODE_COMMAND", "").strip()
    if override:
        return shlex.split(override)
    return [sys.executable, "-m", "peerlink", "node"]


def format_hostport(host: str, port: int) -> str:
    """``host:port``, with brackets for IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def static_url(addresses: Iterable[str]) -> str:
    """``static://a:1,b:2`` from ``host:port`` strings."""
    return "static://" + ",".join(addresses)


def _fmt_seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def node_args(
    *,
    cluster: str,
    cookie_file: str | os.PathLike[str],
    listen: str,
    name: str,
    discovery: Iterable[str] = (),
    advertise: str | None = None,
    tick: float | None = None,
    timeout: float | None = None,
    extra: Iterable[str] = (),
) -> list[str]:
    """Options for ``peerlink node`` (``--json`` is added by ``NodeProcess.start``).

    ``tick``/``timeout`` are passed as given (None: the node's defaults).
    """
    args = ["--cluster", cluster, "--cookie-file", os.fspath(cookie_file), "--listen", listen]
    args += ["--name", name]
    if advertise is not None:
        args += ["--advertise", advertise]
    for url in discovery:
        args += ["--discovery", url]
    if tick is not None:
        args += ["--tick", _fmt_seconds(tick)]
    if timeout is not None:
        args += ["--timeout", _fmt_seconds(timeout)]
    args += list(extra)
    return args


def _arg_value(args: Sequence[str], option: str) -> str | None:
    for i, a in enumerate(args):
        if a == option and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(option + "="):
            return a.split("=", 1)[1]
    return None


def _clean_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    # Every CLI option also reads a PEERLINK_* variable: never leak the caller's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERLINK_")}
    env["PEERLINK_LOG_LEVEL"] = "info"  # membership changes and refusals, for failure reports
    if extra:
        env.update(extra)
    return env


class NodeProcess:
    """One ``peerlink node --json`` process and the events it printed."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str, log_path: Path,
                 argv: list[str], args: list[str], prefix: list[str]) -> None:
        self.proc = proc
        self.name = name
        self.log_path = log_path
        self.argv = argv  # the full command line
        self.args = args  # the node options (without --json)
        self.prefix = prefix
        self.events: list[Event] = []
        self.times: list[float] = []  # time.monotonic() when each event was read
        self.started_at = time.monotonic()
        self.exited_at: float | None = None  # when the reader saw stdout close
        self.bad_lines: list[str] = []  # stdout lines that are not JSON objects
        self.stdout_closed = False
        self._cond = asyncio.Condition()
        self._reader = asyncio.create_task(self._read_stdout(), name=f"stdout-{name}")

    # ----------------------------------------------------------------- start
    @classmethod
    async def start(
        cls,
        args: Sequence[str],
        *,
        prefix: Sequence[str] = (),
        log_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        wait_ready: bool = True,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        command: Sequence[str] | None = None,
    ) -> NodeProcess:
        """Start ``*prefix, python -m peerlink node, *args, --json``.

        ``prefix`` is ``[]`` or ``lab.exec_prefix(i)``; ``command`` replaces
        ``python -m peerlink node`` (another program with the same options and JSON
        events, e.g. ``tests/support/peer_app.py``). stderr goes to
        ``log_dir/<name>-<n>.stderr`` (a temp dir if not given). With ``wait_ready`` it
        returns after the ``ready`` event (failing with stderr if it does not come).
        """
        name = name or _arg_value(args, "--name") or "node"
        directory = Path(log_dir) if log_dir is not None else Path(_default_log_dir())
        directory.mkdir(parents=True, exist_ok=True)
        log_path = directory / f"{name}-{next(_log_counter)}.stderr"
        argv = [*prefix, *(command or node_command()), *args, "--json"]
        err = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=_clean_env(env),
                preexec_fn=_die_with_parent,
            )
        finally:
            os.close(err)
        node = cls(proc, name, log_path, argv, list(args), list(prefix))
        if wait_ready:
            try:
                await node.wait_event("ready", timeout=ready_timeout)
            except BaseException:
                await node.close()
                raise
        return node

    # ------------------------------------------------------------ properties
    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def ready(self) -> Event:
        """The ``ready`` event (fails if the node has not printed it)."""
        for ev in self.events:
            if ev.get("event") == "ready":
                return ev
        raise AssertionError(self._describe(f"node {self.name!r} has not printed 'ready'"))

    @property
    def address(self) -> str:
        return str(self.ready["address"])

    @property
    def incarnation(self) -> Any:
        return self.ready["incarnation"]

    def mark(self) -> int:
        """Index to pass as ``after=`` to wait only for events printed from now on."""
        return len(self.events)

    def find(self, kind: str, peer: str | None = None, *, reason: str | None = None,
             after: int = 0, incarnation: Any = None) -> list[Event]:
        """All events so far that match (``None`` matches anything)."""
        return [ev for ev in self.events[after:] if _matches(ev, kind, peer, reason, incarnation)]

    def peers_up(self) -> dict[str, Any]:
        """Peer name -> incarnation for every peer whose last event was a join."""
        up: dict[str, Any] = {}
        for ev in self.events:
            if ev.get("event") == "join":
                up[ev["peer"]] = ev.get("incarnation")
            elif ev.get("event") == "leave" and up.get(ev.get("peer", "")) == ev.get("incarnation"):
                del up[ev["peer"]]
        return up

    # ----------------------------------------------------------------- waits
    async def wait_event(
        self,
        kind: str,
        peer: str | None = None,
        *,
        timeout: float = 10.0,
        reason: str | None = None,
        after: int = 0,
        incarnation: Any = None,
    ) -> Event:
        """The first event at index >= ``after`` that matches; waits up to
        ``timeout`` (scaled) seconds and fails with recent events and stderr if none
        comes or the process ends first."""
        limit = scaled(timeout)
        deadline = time.monotonic() + limit
        found: list[Event] = []

        def check() -> bool:
            for ev in self.events[after:]:
                if _matches(ev, kind, peer, reason, incarnation):
                    found.append(ev)
                    return True
            return self.stdout_closed

        async with self._cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cond.wait_for(check), max(0.0, deadline - time.monotonic()))
        if found:
            return found[0]
        what = _describe_match(kind, peer, reason, incarnation)
        if self.stdout_closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 2.0)
            problem = f"node {self.name!r} ended (stdout closed) before {what} (after event #{after})"
        else:
            problem = f"node {self.name!r}: no {what} within {limit:.1f}s (after event #{after})"
        raise AssertionError(self._describe(problem))

    async def wait_until(self, predicate: Callable[[list[Event]], bool], what: str, *,
                         timeout: float = 10.0) -> None:
        """Wait until ``predicate(events)`` holds (re-checked after each new line);
        fails after ``timeout`` (scaled) seconds with recent events and stderr."""
        limit = scaled(timeout)

        def check() -> bool:
            return predicate(self.events) or self.stdout_closed

        async with self._cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cond.wait_for(check), limit)
        if not predicate(self.events):
            raise AssertionError(self._describe(f"node {self.name!r}: no {what} within {limit:.1f}s"))

    async def wait_peers(self, expected: Mapping[str, Any], *, timeout: float = 10.0) -> None:
        """Wait until ``peers_up()`` is exactly ``expected`` (name -> incarnation); fails
        like ``wait_event`` after ``timeout`` (scaled) seconds."""
        limit = scaled(timeout)
        wanted = dict(expected)
        async with self._cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._cond.wait_for(lambda: self.peers_up() == wanted or self.stdout_closed), limit)
        if self.peers_up() != wanted:
            raise AssertionError(self._describe(
                f"node {self.name!r}: peers are {self.peers_up()} after {limit:.1f}s, expected {wanted}"))

    async def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the process to end; returns its exit code (negative: signal)."""
        limit = scaled(timeout)
        try:
            return await asyncio.wait_for(self.proc.wait(), limit)
        except TimeoutError:
            raise AssertionError(
                self._describe(f"node {self.name!r} did not exit within {limit:.1f}s")
            ) from None

    # --------------------------------------------------------------- signals
    def signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (a crash: the kernel closes its sockets)."""
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGSTOP (a hung process: the kernel still ACKs, heartbeats stop)."""
        self.signal(signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT."""
        self.signal(signal.SIGCONT)

    async def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code. Kills and fails if it hangs."""
        self.signal(signal.SIGTERM)
        try:
            return await self.wait_exit(timeout)
        except AssertionError:
            self.kill()
            raise

    async def close(self) -> None:
        """Make sure the process is gone (SIGKILL) and the reader finished."""
        if self.proc.returncode is None:
            self.signal(signal.SIGCONT)
            self.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10.0)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._reader, 5.0)

    # ---------------------------------------------------------- diagnostics
    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"
        return "\n".join(text.splitlines()[-lines:])

    def crash_signs(self) -> list[str]:
        """stderr lines that show an unhandled error: a traceback, an exception asyncio
        caught in a callback, a task exception nobody retrieved."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return [f"<cannot read {self.log_path}: {e}>"]
        return [line for line in text.splitlines() if any(sign in line for sign in CRASH_SIGNS)]

    def _describe(self, problem: str, recent: int = 25) -> str:
        state = "running" if self.proc.returncode is None else f"exit code {self.proc.returncode}"
        out = [problem, f"  process: pid {self.pid}, {state}", f"  argv: {shlex.join(self.argv)}"]
        first = max(0, len(self.events) - recent)
        out.append(f"  events ({len(self.events)} total, from #{first}):")
        out += [f"    #{i} {json.dumps(ev, sort_keys=True)}"
                for i, ev in enumerate(self.events[first:], first)]
        if self.bad_lines:
            out.append(f"  non-JSON stdout lines: {self.bad_lines[-5]!r}")
        out.append(f"  stderr tail ({self.log_path}):")
        out += ["    " + line for line in self.stderr_tail().splitlines()]
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"<NodeProcess {self.name} pid={self.pid} rc={self.proc.returncode}>"

    # ---------------------------------------------------------------- reader
    async def _read_stdout(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        try:
            while True:
                try:
                    line = await stream.readline()
                except ValueError:  # a line over the stream limit
                    self.bad_lines.append("<line too long>")
                    continue
                if not line:
                    break
                text = line.decode(errors="replace").strip()
                if not text:
                    continue
                try:
                    ev = json.loads(text)
                except ValueError:
                    ev = None
                async with self._cond:
                    if isinstance(ev, dict):
                        self.events.append(ev)
                        self.times.append(time.monotonic())
                    else:
                        self.bad_lines.append(text)
                    self._cond.notify_all()
        finally:
            self.stdout_closed = True
            self.exited_at = time.monotonic()
            with contextlib.suppress(RuntimeError):
                async with self._cond:
                    self._cond.notify_all()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the test process dies (even by SIGKILL),
    so no node outlives a killed pytest. ``ip netns exec`` keeps this across its exec."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


_log_counter = itertools.count(1)
_default_dir: str | None = None


def _default_log_dir() -> str:
    global _default_dir
    if _default_dir is None:
        import tempfile

        _default_dir = tempfile.mkdtemp(prefix="peerlink-nodes-")
    return _default_dir


def _matches(ev: Event, kind: str, peer: str | None, reason: str | None, incarnation: Any) -> bool:
    return (
        ev.get("event") == kind
        and (peer is None or ev.get("peer") == peer)
        and (reason is None or ev.get("reason") == reason)
        and (incarnation is None or ev.get("incarnation") == incarnation)
    )


def _describe_match(kind: str, peer: str | None, reason: str | None, incarnation: Any) -> str:
    parts = [f"peer={peer!r}"] if peer is not None else []
    if reason is not None:
        parts.append(f"reason={reason!r}")
    if incarnation is not None:
        parts.append(f"incarnation={incarnation!r}")
    return f"{kind}({', '.join(parts)})"


# ------------------------------------------------------------------ invariants
def check_events(events: Sequence[Event], *, bad_lines: Sequence[str] = ()) -> list[str]:
    """Problems with one node's event stream (empty list: all good).

    - stdout holds only JSON objects; the first is ``ready``, and there is one;
    - join has peer, address, incarnation, metadata (dict); leave has peer,
      incarnation and a known reason;
    - the node never reports itself (its name or its incarnation);
    - per (peer, incarnation): join, leave, join, ... (never two in a row, never a
      leave first);
    - per peer name, at most one incarnation is up at a time (a restart gives
      ``leave`` of the old incarnation before ``join`` of the new one).
    """
    problems = [f"non-JSON stdout line: {line!r}" for line in bad_lines]
    if not events:
        return problems
    if events[0].get("event") != "ready":
        problems.append(f"first event is not ready: {events[0]}")
    readies = [i for i, ev in enumerate(events) if ev.get("event") == "ready"]
    if len(readies) != 1:
        problems.append(f"expected exactly one ready event, got {len(readies)} at {readies}")
    me = events[readies[0]] if readies else {}
    up: dict[str, Any] = {}  # peer name -> incarnation that is joined
    last: dict[tuple[str, str], str] = {}  # (peer, incarnation) -> last kind
    for i, ev in enumerate(events):
        kind = ev.get("event")
        if kind == "ready":
            continue
        if kind in APP_EVENTS:
            continue
        if kind not in ("join", "leave"):
            problems.append(f"#{i}: unknown event kind: {ev}")
            continue
        peer, inc = ev.get("peer"), ev.get("incarnation")
        if not isinstance(peer, str) or not peer or inc is None:
            problems.append(f"#{i}: {kind} without peer or incarnation: {ev}")
            continue
        if kind == "join":
            if not isinstance(ev.get("address"), str) or not isinstance(ev.get("metadata"), dict):
                problems.append(f"#{i}: join without address (str) or metadata (dict): {ev}")
        elif ev.get("reason") not in LEAVE_REASONS:
            problems.append(f"#{i}: leave with unknown reason: {ev}")
        if peer == me.get("name") or inc == me.get("incarnation"):
            problems.append(f"#{i}: node reports itself: {ev}")
        key = (peer, json.dumps(inc))
        if last.get(key) == kind or (kind == "leave" and key not in last):
            problems.append(f"#{i}: {kind} of {peer!r} incarnation {inc!r} does not alternate"
                            f" (previous for this pair: {last.get(key)}): {ev}")
        last[key] = kind
        if kind == "join":
            if peer in up and up[peer] != inc:
                problems.append(f"#{i}: join of {peer!r} incarnation {inc!r} while incarnation"
                                f" {up[peer]!r} is still up (no leave first)")
            up[peer] = inc
        elif up.get(peer) == inc:
            del up[peer]
    return problems


def assert_events_ok(*nodes: NodeProcess) -> None:
    """Fail with every invariant violation of the given nodes' event streams."""
    report = []
    for node in nodes:
        problems = check_events(node.events, bad_lines=node.bad_lines)
        if problems:
            report.append(node._describe(f"node {node.name!r} broke event invariants:\n  - "
                                         + "\n  - ".join(problems), recent=60))
    if report:
        raise AssertionError("\n\n".join(report))


async def wait_mesh(nodes: Sequence[NodeProcess], *, timeout: float = 15.0,
                    after: Mapping[str, int] | None = None) -> None:
    """Wait until every node has seen a join of every other node (by name).

    ``after`` maps node name -> event index to look from (default 0). All waits share
    one deadline of ``timeout`` (scaled) seconds.
    """
    deadline = time.monotonic() + scaled(timeout)

    async def one(node: NodeProcess, other: NodeProcess) -> None:
        remaining = max(0.0, deadline - time.monotonic()) / time_factor()
        start = (after or {}).get(node.name, 0)
        await node.wait_event("join", peer=other.name, timeout=remaining, after=start)

    await asyncio.gather(*(one(n, o) for n in nodes for o in nodes if o is not n))


# ------------------------------------------------------------------- factory
class NodeFactory:
    """Starts nodes with shared defaults and kills them all at ``aclose()``.

    Loopback nodes get ``127.0.0.1:<free port>``; nodes in a namespace pass
    ``listen=`` and ``prefix=lab.exec_prefix(i)``.
    """

    def __init__(self, workdir: str | os.PathLike[str], *, cookie_file: str | os.PathLike[str],
                 cluster: str = "test", tick: float = DEFAULT_TICK,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.workdir = Path(workdir)
        self.cookie_file = Path(cookie_file)
        self.cluster = cluster
        self.tick = tick
        self.timeout = timeout
        self.nodes: list[NodeProcess] = []
        self._ports: set[int] = set()
        self._next_port = random.randrange(20000, 30000)

    def free_port(self, host: str = "127.0.0.1") -> int:
        """A TCP port that is free now, below the ephemeral range (so a node's
        outgoing connections cannot take it) and never handed out twice."""
        for _ in range(2000):
            port = self._next_port
            self._next_port = 20000 if port >= 32000 else port + 1
            if port in self._ports:
                continue
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            self._ports.add(port)
            return port
        raise RuntimeError("no free TCP port found")

    def address(self, host: str = "127.0.0.1") -> str:
        """``host:<free port>``."""
        return format_hostport(host, self.free_port(host))

    def args(self, name: str, *, listen: str, discovery: Iterable[str] = (),
             advertise: str | None = None, cookie_file: str | os.PathLike[str] | None = None,
             cluster: str | None = None, tick: float | None = None, timeout: float | None = None,
             extra: Iterable[str] = ()) -> list[str]:
        """``node_args`` with this factory's defaults (timings scaled)."""
        return node_args(
            cluster=cluster if cluster is not None else self.cluster,
            cookie_file=cookie_file if cookie_file is not None else self.cookie_file,
            listen=listen, name=name, discovery=discovery, advertise=advertise,
            tick=scaled(tick if tick is not None else self.tick),
            timeout=scaled(timeout if timeout is not None else self.timeout),
            extra=extra,
        )

    async def start(
        self,
        name: str,
        *,
        listen: str | None = None,
        discovery: Iterable[str] = (),
        advertise: str | None = None,
        cookie_file: str | os.PathLike[str] | None = None,
        cluster: str | None = None,
        tick: float | None = None,
        timeout: float | None = None,
        extra: Iterable[str] = (),
        prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        wait_ready: bool = True,
        command: Sequence[str] | None = None,
    ) -> NodeProcess:
        """Start one node (``listen`` defaults to ``127.0.0.1:<free port>``)."""
        args = self.args(name, listen=listen or self.address(), discovery=discovery,
                         advertise=advertise, cookie_file=cookie_file, cluster=cluster,
                         tick=tick, timeout=timeout, extra=extra)
        node = await NodeProcess.start(args, prefix=prefix, log_dir=self.workdir, env=env,
                                       name=name, wait_ready=wait_ready, command=command)
        self.nodes.append(node)
        return node

    async def start_mesh(self, names: Sequence[str], *, wait: bool = True,
                         **kwargs: Any) -> list[NodeProcess]:
        """Start nodes on loopback, each with one static list of all of them (itself
        included), concurrently; with ``wait`` also wait for the full mesh."""
        addresses = [self.address() for _ in names]
        url = static_url(addresses)
        extra_discovery = list(kwargs.pop("discovery", ()))
        nodes = await asyncio.gather(*(
            self.start(name, listen=addr, discovery=[url, *extra_discovery], **kwargs)
            for name, addr in zip(names, addresses, strict=True)
        ))
        if wait:
            await wait_mesh(nodes, timeout=15.0 + 2.0 * len(nodes))
        return list(nodes)

    async def start_hosts(self, lab: Any, *, port: int = 4370, v6: bool = False,
                          names: Sequence[str] | None = None, **kwargs: Any) -> list[NodeProcess]:
        """One node per host of ``lab`` (a ``support.lab.Lab``), named ``h1..hN`` by
        default, each listening on ``port`` and listing all of them (itself included)
        as static discovery; started concurrently."""
        addresses = lab.addresses(port, v6=v6)
        url = static_url(addresses)
        names = list(names) if names is not None else [f"h{i}" for i in range(1, lab.n + 1)]
        return list(await asyncio.gather(*(
            self.start(name, listen=address, discovery=[url], prefix=lab.exec_prefix(i), **kwargs)
            for i, (name, address) in enumerate(zip(names, addresses, strict=True), 1)
        )))

    async def restart(self, node: NodeProcess, **kwargs: Any) -> NodeProcess:
        """Start a new process with the same program, options and prefix as ``node``
        (which must have ended); ``kwargs`` go to ``NodeProcess.start``."""
        assert node.returncode is not None, f"{node!r} is still running"
        kwargs.setdefault("prefix", node.prefix)
        # argv is prefix + program + options + "--json"
        kwargs.setdefault("command", node.argv[len(node.prefix):len(node.argv) - len(node.args) - 1])
        new = await NodeProcess.start(node.args, log_dir=self.workdir, name=node.name, **kwargs)
        self.nodes.append(new)
        return new

    def check(self) -> None:
        """Fail if any node started here broke the event invariants."""
        assert_events_ok(*self.nodes)

    async def aclose(self) -> None:
        await asyncio.gather(*(n.close() for n in self.nodes), return_exceptions=True)

