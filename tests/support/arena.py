"""An arena for the hostile-client suite: a target node process, two healthy peers that
keep calling it, and an ``Observer`` of the target.

The healthy peers are ``tests/support/peer_app.py`` processes (real ``peerlink.Node``
instances in their own OS processes, so nothing the attacking test process does can
stall them); each calls the target every 20 ms and prints its progress. The target is
``peerlink node --json`` (or ``peer_app.py`` where an attack needs its handlers).

    arena = await make_arena()             # the fixture in tests/hostile/conftest.py
    ...attack arena.address...
    await arena.assert_unharmed(rss=BUDGET.preauth_rss)

``assert_unharmed`` checks, since the last ``mark()``: the target still runs; both
healthy peers got more calls answered after the attack, none failed, neither saw a
leave and the target saw neither leave; the target printed no traceback, wrote at most
the log budget, and its peak RSS rose by at most the budget.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hostile import BUDGET, Client, Observer, source_address
from .nodeproc import NodeFactory, NodeProcess, check_events, scaled, static_url

__all__ = ["HEALTHY", "PEER_APP", "STEADY_CALLS", "TICK", "TIMEOUT", "Arena", "last_progress", "start_arena"]

PEER_APP = [sys.executable, str(Path(__file__).with_name("peer_app.py"))]
HEALTHY = ("h1", "h2")
# Heartbeats of the arena (before the time factor): a target whose event loop stalls
# for over TIMEOUT is reported gone by its healthy peers, which the tests then see.
TICK = 0.25
TIMEOUT = 1.5
# extra options of the target: a long handshake timeout, so that the budget (caps,
# frame limits) and not the timeout is what ends each attack; quick re-dials
TARGET_OPTIONS = ("--handshake-timeout", "30", "--reconnect-max", "0.2")


@dataclass
class Arena:
    factory: NodeFactory
    target: NodeProcess
    healthy: list[NodeProcess]
    observer: Observer
    cookie: bytes
    cluster: str
    _event_marks: dict[str, int] = field(default_factory=dict)
    _progress_marks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """Where the target listens (``host:port``)."""
        return self.target.address

    @property
    def processes(self) -> list[NodeProcess]:
        return [self.target, *self.healthy]

    def mark(self) -> None:
        """Measure from here: memory peak, stderr, events and progress."""
        self.observer.mark()
        for proc in self.processes:
            self._event_marks[proc.name] = proc.mark()
        for app in self.healthy:
            self._progress_marks[app.name] = last_progress(app)

    async def settle(self, calls: int = 5) -> None:
        """Wait until both healthy peers linked and got ``calls`` calls answered, then
        ``mark()``."""
        for app in self.healthy:
            await self.target.wait_event("join", peer=app.name, timeout=20)
            await wait_progress(app, calls, timeout=20)
        self.mark()

    async def hostile_peer(self, name: str = "mallory", *, mark: bool = True, source: str | None = None,
                           **connect: Any) -> Client:
        """A connection that completed the handshake with the cookie (the target saw
        it join) and pings every tick; with ``mark`` the arena is marked after it (its
        join is no part of the attack). ``connect`` goes to ``Client.connect``."""
        client = await Client.connect(self.address, source=source or source_address(900), **connect)
        await client.authenticate(cluster=self.cluster, cookie=self.cookie, name=name, keepalive=TICK)
        await self.target.wait_event("join", peer=name)
        if mark:
            self.mark()
        return client

    def new_events(self, proc: NodeProcess, kind: str) -> list[dict[str, Any]]:
        start = self._event_marks.get(proc.name, 0)
        return [ev for ev in proc.events[start:] if ev.get("event") == kind]

    def log(self) -> str:
        """What the target wrote to stderr since ``mark()``."""
        return self.observer.log_since_mark()

    async def assert_unharmed(self, *, rss: int = BUDGET.preauth_rss,
                              log_bytes: int = BUDGET.log_bytes, calls: int = 5) -> None:
        """Everything a user cares about held since ``mark()`` (see the module doc);
        fails with every problem found, not just the first."""
        problems: list[str] = []
        if self.target.returncode is not None:
            problems.append(f"the target exited with code {self.target.returncode}")
        for app in self.healthy:
            before = last_progress(app)
            try:
                await wait_progress(app, before["answered"] + calls, timeout=15)
            except AssertionError:
                problems.append(f"{app.name}: its calls to the target stopped being answered "
                                f"(answered {last_progress(app)['answered']}, was {before['answered']})")
            failed = last_progress(app)["failed"] - self._progress_marks[app.name]["failed"]
            if failed:
                problems.append(f"{app.name}: {failed} call(s) to the target failed: "
                                f"{self.new_events(app, 'call_failed')[:3]}")
            for ev in self.new_events(app, "leave"):
                problems.append(f"{app.name} saw a leave: {ev}")
        for ev in self.new_events(self.target, "leave"):
            if ev.get("peer") in HEALTHY:
                problems.append(f"the target saw a healthy peer leave: {ev}")
        log = self.log()
        tracebacks = self.observer.tracebacks(log)
        if tracebacks:
            problems.append(f"the target printed {len(tracebacks)} traceback(s)/escaped exception(s), "
                            f"first: {tracebacks[0][:300]!r}")
        size = self.observer.log_bytes_since_mark()
        if size > log_bytes:
            problems.append(f"the target wrote {size:,} bytes of log (budget {log_bytes:,}); "
                            f"first lines: {log[:600]!r}")
        growth = self.observer.peak_growth()
        # shown with the test's output: the figures behind the verdict
        print(f"arena: target peak RSS +{growth / 2**20:.1f} MiB, log +{size:,} B, "
              f"tracebacks {len(tracebacks)}")
        if growth > rss:
            problems.append(f"the target's peak RSS grew by {growth / 2**20:.1f} MiB "
                            f"(budget {rss / 2**20:.0f} MiB)")
        if problems:
            raise AssertionError("the attack harmed the target or its healthy peers:\n  - "
                                 + "\n  - ".join(problems)
                                 + f"\n  target stderr: {self.target.log_path}")

    def assert_refusal_logged(self, host: str) -> None:
        """The target logged (WARNING or above) why it refused ``host``."""
        lines = [line for line in self.log().splitlines() if host in line]
        if not any(level in line for line in lines for level in ("WARNING", "ERROR")):
            raise AssertionError(f"no WARNING about {host} in the target's log since the mark; "
                                 f"lines about it: {lines[:5]!r}; log head: {self.log()[:800]!r}")

    def check_events(self) -> None:
        """Join/leave invariants of every process (progress lines aside)."""
        problems = []
        for proc in self.processes:
            events = [ev for ev in proc.events if ev.get("event") in ("ready", "join", "leave")]
            problems += [f"{proc.name}: {p}" for p in check_events(events)]
        assert not problems, "\n".join(problems)

    async def aclose(self) -> None:
        await asyncio.gather(*(proc.close() for proc in self.processes), return_exceptions=True)


def last_progress(app: NodeProcess) -> dict[str, Any]:
    for ev in reversed(app.events):
        if ev.get("event") == "progress":
            return ev
    return {"answered": 0, "failed": 0}


async def wait_progress(app: NodeProcess, answered: int, timeout: float) -> dict[str, Any]:
    """Wait until ``app`` has had ``answered`` calls answered in total."""
    deadline = time.monotonic() + scaled(timeout)
    after = 0
    while True:
        left = max(0.0, deadline - time.monotonic()) / scaled(1.0)
        ev = await app.wait_event("progress", timeout=left, after=after)
        if ev["answered"] >= answered:
            return ev
        after = len(app.events)  # progress lines only come after this one


# how the healthy peers call the target: one call at a time, 50 a second each
STEADY_CALLS = ("--interval", "0.02")


async def start_arena(factory: NodeFactory, *, target_app: bool = False,
                      target_options: tuple[str, ...] = TARGET_OPTIONS,
                      discovery: tuple[str, ...] = (), listen: str | None = None,
                      prefix: tuple[str, ...] = (), calls: tuple[str, ...] = STEADY_CALLS) -> Arena:
    """Start the target (``peer_app.py`` with ``target_app``) and two healthy peers that
    dial it and call it (``calls``: more ``peer_app.py`` options, e.g. ``--window``);
    returns once they are linked and calls flow (and marked)."""
    listen = listen or factory.address()
    args = factory.args("target", listen=listen, discovery=discovery, tick=TICK, timeout=TIMEOUT,
                        extra=target_options)
    if target_app:
        target = await NodeProcess.start(args, log_dir=factory.workdir, name="target",
                                         command=PEER_APP, prefix=prefix)
    else:
        target = await NodeProcess.start(args, log_dir=factory.workdir, name="target", prefix=prefix)
    healthy: list[NodeProcess] = []
    arena = Arena(factory, target, healthy, Observer(target.pid, target.log_path),
                  cookie=factory.cookie_file.read_bytes().removesuffix(b"\n"),
                  cluster=factory.cluster)
    try:
        healthy += await asyncio.gather(*(
            NodeProcess.start(
                factory.args(name, listen=factory.address(), discovery=[static_url([target.address])],
                             tick=TICK, timeout=TIMEOUT, extra=("--call", "target", *calls)),
                log_dir=factory.workdir, name=name, command=PEER_APP)
            for name in HEALTHY
        ))
        await arena.settle()
    except BaseException:
        await arena.aclose()
        raise
    return arena
