"""Run a chaos schedule (``support.chaos``) against real node processes in a ``Lab``.

``run_chaos`` starts ``peerlink node --json`` on every host of the lab, waits for the
mesh, applies every fault of the schedule at its time (each fault holds the locks of
the resources it uses, so a fault that would overlap one on the same process or nft
table waits for it), waits - with a deadline - for the full mesh after the last heal,
watches a quiet tail, stops every node with SIGTERM and returns a ``RunRecord`` for
``chaos.check_run``.

``python -m support.chaosrun --seed N --duration S`` (run from ``tests/``, as root, in
a fresh network namespace: ``make chaos SEED=N DURATION=S``) runs one schedule and
prints the schedule, the figures and every violation with its events; it exits 1 if
there was a violation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from support.chaos import (
    DEFAULT_WEIGHTS,
    AppliedFault,
    Fault,
    FaultKind,
    ProcessRecord,
    RunRecord,
    check_run,
    format_schedule,
    generate_schedule,
)
from support.lab import Lab, delay_unavailable_reason, netns_unavailable_reason
from support.nodeproc import NodeFactory, NodeProcess, scaled, wait_mesh

__all__ = ["available_weights", "run_chaos"]

PORT = 4370


def available_weights(weights: dict[FaultKind, float] | None = None,
                      log: Callable[[str], None] = print) -> dict[FaultKind, float]:
    """``weights`` (default: all kinds) without the kinds this machine cannot apply."""
    out = dict(weights or DEFAULT_WEIGHTS)
    if out.get(FaultKind.DELAY) and (reason := delay_unavailable_reason()):
        log(f"delay faults skipped: {reason}")
        out.pop(FaultKind.DELAY)
    return out


class _Runner:
    def __init__(self, lab: Lab, factory: NodeFactory, nodes: Sequence[NodeProcess],
                 log: Callable[[str], None]) -> None:
        self.lab = lab
        self.factory = factory
        self.current = dict(enumerate(nodes, 1))  # host -> its running process
        self.host_of: dict[NodeProcess, int] = {n: h for h, n in self.current.items()}
        self.locks: defaultdict[tuple[Any, ...], asyncio.Lock] = defaultdict(asyncio.Lock)
        self.applied: list[AppliedFault] = []
        self.errors: list[str] = []
        self.log = log
        self.t0 = time.monotonic()

    async def run(self, schedule: Sequence[Fault]) -> None:
        self.t0 = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            for fault in schedule:
                tg.create_task(self._one(fault))

    async def _one(self, fault: Fault) -> None:
        await asyncio.sleep(max(0.0, self.t0 + fault.at - time.monotonic()))
        async with contextlib.AsyncExitStack() as stack:
            for resource in sorted(fault.resources()):
                await stack.enter_async_context(self.locks[resource])
            self.log(f"{time.monotonic() - self.t0:7.2f}s  {fault.describe()}")
            try:
                applied = await getattr(self, f"_{fault.kind.value}")(fault)
            except AssertionError as exc:  # a node that did not exit, restart or get ready
                self.errors.append(f"{fault.describe()}: {exc}")
                self.log(f"fault failed: {self.errors[-1][:2000]}")
                return
        self.applied.append(applied)

    # -- helpers -------------------------------------------------------------------
    async def _apply(self, fault: Fault, apply: Callable[[], None] | None = None,
                     **kw: Any) -> AppliedFault:
        """Apply ``fault`` (a lab method, run in a worker thread; None: the caller already
        signalled the process) and record when: an nft command can take a while on a
        loaded machine, and the fault takes effect somewhere during it."""
        record = AppliedFault(fault, start=time.monotonic(), end=0.0, start_wall=time.time(), **kw)
        if apply is not None:
            await asyncio.to_thread(apply)
            record.settle = time.monotonic() - record.start
        return record

    async def _respawn(self, host: int, old: NodeProcess) -> NodeProcess:
        new = await self.factory.restart(old, wait_ready=False)
        self.host_of[new] = host
        self.current[host] = new
        return new

    async def _network(self, fault: Fault, apply: Callable[[], None],
                       heal: Callable[[], None]) -> AppliedFault:
        applied = await self._apply(fault, apply)
        await asyncio.sleep(fault.duration)  # the schedule: how long the fault holds
        applied.end = time.monotonic()
        await asyncio.to_thread(heal)
        return applied

    # -- process faults ------------------------------------------------------------
    async def _death(self, fault: Fault, sig: signal.Signals, down: float) -> AppliedFault:
        old = self.current[fault.host]
        old.signal(sig)
        applied = await self._apply(fault, incarnation=old.incarnation)
        applied.exit_code = await old.wait_exit(timeout=15)
        await asyncio.sleep(down)
        new = await self._respawn(fault.host, old)
        applied.end = time.monotonic()
        await new.wait_event("ready")
        applied.new_incarnation = new.incarnation
        return applied

    async def _kill(self, fault: Fault) -> AppliedFault:
        return await self._death(fault, signal.SIGKILL, fault.duration)

    async def _term(self, fault: Fault) -> AppliedFault:
        return await self._death(fault, signal.SIGTERM, fault.duration)

    async def _restart(self, fault: Fault) -> AppliedFault:
        return await self._death(fault, signal.SIGKILL, 0.0)

    async def _silent_restart(self, fault: Fault) -> AppliedFault:
        host = fault.host
        old = self.current[host]
        applied = await self._apply(fault, lambda: self.lab.isolate(host),
                                    incarnation=old.incarnation)
        old.kill()
        applied.exit_code = await old.wait_exit(timeout=15)
        new = await self._respawn(host, old)
        await asyncio.sleep(fault.amount)  # reconnect before the peers' heartbeats notice
        applied.end = time.monotonic()
        await asyncio.to_thread(self.lab.unisolate, host)
        await new.wait_event("ready")
        applied.new_incarnation = new.incarnation
        return applied

    async def _stop(self, fault: Fault) -> AppliedFault:
        node = self.current[fault.host]
        node.stop()
        applied = await self._apply(fault, incarnation=node.incarnation)
        await asyncio.sleep(fault.duration)
        applied.end = time.monotonic()
        node.cont()
        return applied

    # -- network faults ------------------------------------------------------------
    async def _isolate(self, fault: Fault) -> AppliedFault:
        h = fault.host
        return await self._network(fault, lambda: self.lab.isolate(h), lambda: self.lab.unisolate(h))

    async def _partition(self, fault: Fault) -> AppliedFault:
        a, b = fault.host, fault.other
        assert b is not None
        return await self._network(fault, lambda: self.lab.partition(a, b), lambda: self.lab.heal(a, b))

    async def _cut(self, fault: Fault) -> AppliedFault:
        a, b = fault.host, fault.other
        assert b is not None
        return await self._network(fault, lambda: self.lab.cut(a, b), lambda: self.lab.heal(a, b))

    async def _loss(self, fault: Fault) -> AppliedFault:
        h = fault.host
        return await self._network(fault, lambda: self.lab.loss(h, fault.amount),
                                   lambda: self.lab.unloss(h))

    async def _delay(self, fault: Fault) -> AppliedFault:
        h = fault.host
        return await self._network(fault, lambda: self.lab.delay(h, fault.amount),
                                   lambda: self.lab.undelay(h))

    # -- the end -------------------------------------------------------------------
    def expected_mesh(self) -> dict[NodeProcess, dict[str, Any]]:
        live = list(self.current.values())
        return {n: {o.name: o.incarnation for o in live if o is not n} for n in live}


async def run_chaos(lab: Lab, factory: NodeFactory, schedule: Sequence[Fault], *, seed: int,
                    mesh_deadline: float = 30.0, quiet: float | None = None,
                    log: Callable[[str], None] = lambda line: None) -> RunRecord:
    """Apply ``schedule`` to one node per host of ``lab`` (started by ``factory``,
    whose tick and timeout the nodes use) and record the run.

    After the last fault healed, waits up to ``mesh_deadline`` seconds for the full
    mesh, then watches ``quiet`` more seconds (default twice timeout + tick) so that a
    late spurious leave shows up, then stops every node with SIGTERM.
    """
    tick, timeout = scaled(factory.tick), scaled(factory.timeout)  # what the nodes run with
    quiet = 2 * (timeout + tick) if quiet is None else quiet
    nodes = await factory.start_hosts(lab, port=PORT)
    await wait_mesh(nodes, timeout=30)
    runner = _Runner(lab, factory, nodes, log)
    try:
        await runner.run(schedule)
    finally:
        # whatever happened, leave no node stopped and no network fault behind
        for node in runner.current.values():
            node.cont()
    last_heal = max((f.end for f in runner.applied), default=time.monotonic())
    mesh_at: float | None = None
    try:
        await asyncio.gather(*(node.wait_peers(peers, timeout=mesh_deadline)
                               for node, peers in runner.expected_mesh().items()))
        mesh_at = time.monotonic()
        log(f"full mesh {mesh_at - last_heal:.3f}s after the last heal")
    except AssertionError as exc:
        log(f"no full mesh within {mesh_deadline:g}s after the last heal: {str(exc)[:2000]}")
    await asyncio.sleep(quiet)  # the schedule's quiet tail: a late spurious leave shows here
    cutoff = time.monotonic()
    live = list(runner.current.values())
    await asyncio.gather(*(node.terminate(timeout=15) for node in live), return_exceptions=True)
    await factory.aclose()
    return RunRecord(
        seed=seed, tick=tick, timeout=timeout, hosts=lab.n,
        processes=[_record(node, runner.host_of[node]) for node in factory.nodes],
        faults=sorted(runner.applied, key=lambda f: f.start),
        last_heal=last_heal, mesh_at=mesh_at, cutoff=cutoff,
        terminated_at_end=[_incarnation(n) for n in live], mesh_deadline=mesh_deadline,
        errors=runner.errors,
    )


def _incarnation(node: NodeProcess) -> str:
    try:
        return str(node.incarnation)
    except AssertionError:  # it never printed ready
        return f"never-ready-{node.pid}"


def _record(node: NodeProcess, host: int) -> ProcessRecord:
    return ProcessRecord(
        host=host, name=node.name, incarnation=_incarnation(node), started=node.started_at,
        ended=node.exited_at, exit_code=node.returncode,
        events=list(zip(node.times, node.events, strict=True)), crash_lines=node.crash_signs(),
    )


# ------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults")
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--tick", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--kinds", help="comma-separated fault kinds (default: all)")
    parser.add_argument("--no-strict", action="store_true",
                        help="do not count detections outside [timeout, timeout + tick] as violations")
    parser.add_argument("--out", default=None, help="write the run record (JSON) here")
    parser.add_argument("--show", type=int, default=30, help="violations to print in full")
    parser.add_argument("--check", metavar="RECORD", help="only check a saved run record")
    args = parser.parse_args(argv)
    if args.check:
        return _report(RunRecord.from_json(Path(args.check).read_text()), args, Path(args.check))
    if reason := netns_unavailable_reason():
        print(f"chaos: network namespaces unavailable: {reason}", file=sys.stderr)
        return 2
    weights = None
    if args.kinds:
        weights = {FaultKind(k.strip()): DEFAULT_WEIGHTS[FaultKind(k.strip())] for k in args.kinds.split(",")}
    weights = available_weights(weights)
    schedule = generate_schedule(args.seed, hosts=args.hosts, duration=args.duration,
                                 tick=args.tick, timeout=args.timeout, weights=weights)
    print(f"seed {args.seed}: {len(schedule)} faults over {args.duration:g}s on {args.hosts} hosts,"
          f" tick {args.tick:g}s, timeout {args.timeout:g}s\n{format_schedule(schedule)}", flush=True)
    record = asyncio.run(_main_run(args, schedule))
    out = Path(args.out or Path(tempfile.gettempdir()) / "peerlink-chaos" / f"seed-{args.seed}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(record.to_json())
    return _report(record, args, out)


def _report(record: RunRecord, args: argparse.Namespace, out: Path) -> int:
    report = check_run(record, strict_timing=not args.no_strict)
    print("\n" + report.figures())
    for v in report.violations[:args.show]:
        print("\n" + v.format())
    if len(report.violations) > args.show:
        print(f"\n... and {len(report.violations) - args.show} more (the record: {out})")
    print(f"\nrun record: {out}")
    return 0 if report.ok else 1


async def _main_run(args: argparse.Namespace, schedule: Sequence[Fault]) -> RunRecord:
    work = Path(tempfile.mkdtemp(prefix="peerlink-chaos-"))
    cookie = work / "cookie"
    cookie.write_text(secrets.token_hex(16) + "\n")
    factory = NodeFactory(work / "nodes", cookie_file=cookie, cluster="chaos",
                          tick=args.tick, timeout=args.timeout)
    with Lab(args.hosts) as lab:
        try:
            return await run_chaos(lab, factory, schedule, seed=args.seed,
                                   log=lambda line: print(line, flush=True))
        finally:
            await factory.aclose()


if __name__ == "__main__":
    sys.exit(main())
