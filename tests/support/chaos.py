"""Chaos runs, sans I/O: seeded fault schedules and the checker of a finished run.

A chaos run (``support.chaosrun`` does the I/O) starts one ``peerlink node --json``
process per namespace host, applies a schedule of faults, waits for the full mesh after
the last heal, and records every process (its events, each with the time it was read)
and every fault (when it was in effect, which incarnation it hit). ``check_run`` then
states what peerlink promises about that run; every broken promise is a ``Violation``
that names its invariant and quotes the events involved:

* ``EVENT_STREAM``: per (peer, incarnation) joins and leaves alternate, never repeat,
  and a node never reports itself (``nodeproc.check_events``).
* ``UNEXPLAINED_LEAVE``: a leave between two processes whose path had no fault at that
  time (the schedule says which pairs had a fault in which window; see ``explain``).
* ``WRONG_REASON``: a leave the faults explain, with a reason none of them can cause
  (kill -9 -> connection_lost, SIGTERM -> shutdown, restart -> restarted or
  connection_lost, a silent fault -> timeout while it holds).
* ``MISSING_LEAVE``: a peer that died, or went silent for longer than ``timeout + tick``
  (plus ``slack``), was not reported gone (within the fault's window plus ``grace``).
* ``DEAD_INCARNATION``: after a process died, an observer left it twice or joined it again.
* ``FULL_MESH``: once the last fault healed, the live processes did not all see each
  other's current incarnation by the run's deadline.
* ``CRASH``: a process exited without being killed, with the wrong code, or printed a
  traceback.
* ``DETECTION_WINDOW`` (only with ``strict_timing``, as ``make chaos`` runs): a silent
  peer reported outside ``[timeout, timeout + tick]`` after it fell silent. Timing is
  never asserted in ``make test``: there the latencies are only figures.

Times are ``time.monotonic()`` seconds of the process that ran the schedule; an event's
time is when its line was read (a few ms after the node printed it).
"""

from __future__ import annotations

import enum
import json
import math
import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from support.nodeproc import check_events

__all__ = [
    "DEFAULT_WEIGHTS",
    "AppliedFault",
    "Detection",
    "Fault",
    "FaultKind",
    "Invariant",
    "ProcessRecord",
    "Report",
    "RunRecord",
    "Violation",
    "affected_side",
    "check_run",
    "explain",
    "format_schedule",
    "generate_schedule",
    "touches",
]

Event = dict[str, Any]


class FaultKind(enum.StrEnum):
    KILL = "kill"  # SIGKILL, down for `duration`, then restarted (new incarnation)
    TERM = "term"  # SIGTERM (goodbye), down for `duration`, then restarted
    RESTART = "restart"  # SIGKILL and restart at once, the network intact
    SILENT_RESTART = "silent_restart"  # issue 15: host isolated, SIGKILL, restart, reconnect
    STOP = "stop"  # SIGSTOP for `duration`, then SIGCONT
    ISOLATE = "isolate"  # the host drops all its traffic for `duration`
    PARTITION = "partition"  # the bridge drops host <-> other
    CUT = "cut"  # the bridge drops host -> other only
    LOSS = "loss"  # the host drops `amount` % of its packets each way
    DELAY = "delay"  # the host's packets leave `amount` seconds late


PROCESS_DEATHS = frozenset({FaultKind.KILL, FaultKind.TERM, FaultKind.RESTART,
                            FaultKind.SILENT_RESTART})
SILENT = frozenset({FaultKind.STOP, FaultKind.ISOLATE, FaultKind.PARTITION, FaultKind.CUT})
PAIR_KINDS = frozenset({FaultKind.PARTITION, FaultKind.CUT})

#: what an observer may report for a peer whose process died by each fault
DEATH_REASONS: dict[FaultKind, frozenset[str]] = {
    FaultKind.KILL: frozenset({"connection_lost"}),
    FaultKind.TERM: frozenset({"shutdown"}),
    FaultKind.RESTART: frozenset({"connection_lost", "restarted"}),
    FaultKind.SILENT_RESTART: frozenset({"connection_lost", "restarted"}),
}
SILENT_REASON = frozenset({"timeout"})  # while nothing crosses the path
SILENT_OR_RESET = frozenset({"timeout", "connection_lost"})  # after, or seen from a resumed side
#: a fault that took longer than this to apply has no known instant for detection figures
BEAT_SLACK = 0.05


@dataclass(frozen=True)
class Fault:
    """One planned fault: ``at`` seconds after the schedule starts, for ``duration``."""

    kind: FaultKind
    at: float
    duration: float
    host: int
    other: int | None = None  # partition: the other host; cut: drops host -> other
    amount: float = 0.0  # loss: percent; delay: seconds; silent restart: reconnect delay

    def hosts(self) -> tuple[int, ...]:
        return (self.host,) if self.other is None else (self.host, self.other)

    def resources(self) -> frozenset[tuple[Any, ...]]:
        """What two overlapping faults must not share (one nft table, one process)."""
        k = self.kind
        if k in PAIR_KINDS:
            assert self.other is not None
            return frozenset({("pair", min(self.host, self.other), max(self.host, self.other))})
        if k is FaultKind.SILENT_RESTART:
            return frozenset({("proc", self.host), ("isolate", self.host)})
        table = {FaultKind.ISOLATE: "isolate", FaultKind.LOSS: "loss", FaultKind.DELAY: "delay"}
        return frozenset({(table.get(k, "proc"), self.host)})

    @property
    def hold(self) -> float:
        """How long the schedule reserves the fault's resources: its duration, plus
        half a second for a restarted process to start."""
        return self.duration + (self.amount if self.kind is FaultKind.SILENT_RESTART else 0.0) + 0.5

    def describe(self) -> str:
        held = f" for {self.duration:.2f}s" if self.duration else ""
        if self.kind in (FaultKind.KILL, FaultKind.TERM):
            held = f", down {self.duration:.2f}s"
        where = {FaultKind.PARTITION: f"h{self.host}<->h{self.other}",
                 FaultKind.CUT: f"h{self.host}->h{self.other}"}.get(self.kind, f"h{self.host}")
        extra = {FaultKind.LOSS: f" {self.amount:.1f}%", FaultKind.DELAY: f" {self.amount * 1000:.0f}ms",
                 FaultKind.SILENT_RESTART: f" reconnect after {self.amount:.2f}s"}.get(self.kind, "")
        return f"{self.kind.value} {where}{extra}{held}"


#: relative weights of the fault kinds in a generated schedule
DEFAULT_WEIGHTS: dict[FaultKind, float] = {
    FaultKind.KILL: 1.0, FaultKind.TERM: 1.0, FaultKind.RESTART: 1.0,
    FaultKind.SILENT_RESTART: 2.0, FaultKind.STOP: 1.5, FaultKind.ISOLATE: 1.0,
    FaultKind.PARTITION: 1.5, FaultKind.CUT: 1.5, FaultKind.LOSS: 1.0, FaultKind.DELAY: 1.0,
}


def generate_schedule(seed: int, *, hosts: int, duration: float, tick: float, timeout: float,
                      weights: Mapping[FaultKind, float] | None = None,
                      max_concurrent: int = 2) -> list[Fault]:
    """A seeded list of faults starting within ``duration`` seconds, sorted by ``at``.

    At most ``max_concurrent`` faults hold at once and overlapping faults never share a
    resource (a process, a host's nft table, a pair). Silent faults last from well under
    the heartbeat timeout to well over it, so both "no leave" and "leave" are exercised.
    The same arguments always give the same schedule.
    """
    if hosts < 2:
        raise ValueError("a chaos schedule needs at least 2 hosts")
    rng = random.Random(seed)
    table = {k: w for k, w in (weights or DEFAULT_WEIGHTS).items() if w > 0}
    kinds = sorted(table)
    if not kinds:
        raise ValueError("no fault kind has a positive weight")
    silent_max = 2 * (timeout + tick) + 1.0
    faults: list[Fault] = []
    t = 2 * tick  # the mesh is up when the schedule starts
    while t < duration:
        kind = rng.choices(kinds, [table[k] for k in kinds])[0]
        fault = _draw(rng, kind, t, hosts, tick, timeout, silent_max)
        busy = [f for f in faults if f.at <= t < f.at + f.hold]
        taken = set().union(*(f.resources() for f in busy))
        if len(busy) >= max_concurrent or fault.resources() & taken:
            t = min(f.at + f.hold for f in busy) + 0.05  # retry when one ends
            continue
        faults.append(fault)
        t += rng.uniform(0.3, 2.0)
    return faults


def _draw(rng: random.Random, kind: FaultKind, at: float, hosts: int, tick: float,
          timeout: float, silent_max: float) -> Fault:
    host = rng.randint(1, hosts)
    if kind in PAIR_KINDS:
        other = rng.choice([h for h in range(1, hosts + 1) if h != host])
        return Fault(kind, round(at, 3), round(rng.uniform(0.2, silent_max), 3), host, other)
    if kind in SILENT:
        return Fault(kind, round(at, 3), round(rng.uniform(0.2, silent_max), 3), host)
    if kind in (FaultKind.KILL, FaultKind.TERM):
        return Fault(kind, round(at, 3), round(rng.uniform(0.0, 1.5), 3), host)
    if kind is FaultKind.RESTART:
        return Fault(kind, round(at, 3), 0.0, host)
    if kind is FaultKind.SILENT_RESTART:
        return Fault(kind, round(at, 3), 0.0, host, amount=round(rng.uniform(0.15, 0.4), 3))
    if kind is FaultKind.LOSS:
        return Fault(kind, round(at, 3), round(rng.uniform(1.0, 5.0), 3), host,
                     amount=round(rng.uniform(1.0, 10.0), 1))
    # a delay well under the heartbeat timeout: no peer may be reported gone for it
    return Fault(kind, round(at, 3), round(rng.uniform(1.0, 5.0), 3), host,
                 amount=round(rng.uniform(0.02, 0.3 * timeout), 3))


# ---------------------------------------------------------------- run records
@dataclass
class ProcessRecord:
    """One node process of a run (a restart is a new record, with a new incarnation)."""

    host: int
    name: str
    incarnation: str
    started: float
    ended: float | None  # when its stdout closed; None: still running at the end
    exit_code: int | None
    events: list[tuple[float, Event]]
    crash_lines: list[str] = field(default_factory=list)

    def alive(self, t: float) -> bool:
        return self.started <= t and (self.ended is None or self.ended > t)


@dataclass
class AppliedFault:
    """A fault as it was applied: from ``start`` (the signal sent, or the nft command
    issued: it took effect by ``start + settle``), to ``end``, just before the heal
    (process deaths: when the new process was spawned)."""

    fault: Fault
    start: float
    end: float
    start_wall: float  # time.time() at ``start``: heartbeats are aligned to the wall clock
    settle: float = 0.0  # it took effect within [start, start + settle] (an nft command)
    incarnation: str | None = None  # the process it stopped, killed or terminated
    new_incarnation: str | None = None  # the process a restart started
    exit_code: int | None = None  # of the killed or terminated process


@dataclass
class RunRecord:
    seed: int
    tick: float
    timeout: float
    hosts: int
    processes: list[ProcessRecord]
    faults: list[AppliedFault]
    last_heal: float
    mesh_at: float | None  # when the full mesh was back after the last heal (None: never)
    cutoff: float  # events read later belong to the final shutdown and are not checked
    terminated_at_end: list[str] = field(default_factory=list)  # incarnations SIGTERMed at the end
    mesh_deadline: float = 0.0
    errors: list[str] = field(default_factory=list)  # faults the runner could not complete

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        raw = json.loads(text)
        raw["processes"] = [ProcessRecord(**{**p, "events": [tuple(e) for e in p["events"]]})
                            for p in raw["processes"]]
        raw["faults"] = [AppliedFault(**{**f, "fault": Fault(**{**f["fault"],
                                                                 "kind": FaultKind(f["fault"]["kind"])})})
                         for f in raw["faults"]]
        return cls(**raw)


# ------------------------------------------------------------------- checking
class Invariant(enum.StrEnum):
    EVENT_STREAM = "event_stream"
    UNEXPLAINED_LEAVE = "unexplained_leave"
    WRONG_REASON = "wrong_reason"
    MISSING_LEAVE = "missing_leave"
    DEAD_INCARNATION = "dead_incarnation"
    FULL_MESH = "full_mesh"
    CRASH = "crash"
    DETECTION_WINDOW = "detection_window"


@dataclass
class Violation:
    invariant: Invariant
    message: str
    excerpt: list[str] = field(default_factory=list)  # events around it, by time

    def format(self) -> str:
        return "\n".join([f"[{self.invariant.value}] {self.message}", *("    " + e for e in self.excerpt)])


@dataclass
class Detection:
    """An observer reporting a faulty peer gone: the figures of one required leave."""

    kind: FaultKind
    reason: str
    latency: float  # from the fault taking effect
    since_silent: float | None  # silent faults: from the last heartbeat instant before it
    side: str  # "silent" (hears nothing), "sender" (a cut's sending side), "resumed", "peer"


@dataclass
class Report:
    violations: list[Violation]
    detections: list[Detection]
    faults: Counter[str]
    events: Counter[str]
    reasons: dict[str, Counter[str]]  # fault kind -> reasons of the leaves it explained
    soft_leaves: int  # leaves explained only by loss or delay
    mesh_after_heal: float | None
    window: tuple[float, float]  # [timeout, timeout + tick]
    tolerance: float  # a detection this far outside the window still counts as inside

    @property
    def ok(self) -> bool:
        return not self.violations

    def figures(self) -> str:
        """The run's figures as a small text table."""
        out = [f"faults applied: {sum(self.faults.values())} "
               + ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items())),
               f"events: {sum(self.events.values())} "
               + ", ".join(f"{k} {n}" for k, n in sorted(self.events.items())),
               "detection latency (s) of required leaves, from the fault taking effect; 'silent':"
               " from the last heartbeat instant before it, 'outside': silent latencies outside"
               f" [timeout, timeout + tick] = [{self.window[0]:g}, {self.window[1]:g}]"
               f" +- {self.tolerance:g}",
               f"  {'kind':<16}{'side':<9}{'n':>4}{'median':>9}{'max':>8}"
               f"{'silent med':>12}{'silent max':>12}{'outside':>9}  reasons"]
        groups: dict[tuple[str, str], list[Detection]] = defaultdict(list)
        for d in self.detections:
            groups[(d.kind.value, d.side)].append(d)
        for (kind, side), ds in sorted(groups.items()):
            lat = [d.latency for d in ds]
            sil = [d.since_silent for d in ds if d.since_silent is not None]
            low, high = self.window[0] - self.tolerance, self.window[1] + self.tolerance
            outside = sum(1 for s in sil if not low <= s <= high)
            reasons = Counter(d.reason for d in ds)
            out.append(f"  {kind:<16}{side:<9}{len(ds):>4}{statistics.median(lat):>9.3f}{max(lat):>8.3f}"
                       + (f"{statistics.median(sil):>12.3f}{max(sil):>12.3f}{outside:>9}" if sil
                          else f"{'-':>12}{'-':>12}{'-':>9}")
                       + "  " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())))
        out.append("leave reasons per explaining fault kind: " + "; ".join(
            f"{k}: " + ", ".join(f"{r} {n}" for r, n in sorted(c.items()))
            for k, c in sorted(self.reasons.items())))
        out.append(f"leaves explained only by loss/delay: {self.soft_leaves}")
        spurious = sum(1 for v in self.violations if v.invariant is Invariant.UNEXPLAINED_LEAVE)
        out.append(f"spurious leaves (no fault on the path): {spurious}")
        out.append("time to full mesh after the last heal: "
                   + (f"{self.mesh_after_heal:.3f} s" if self.mesh_after_heal is not None else "NOT REACHED"))
        by_kind = Counter(v.invariant.value for v in self.violations)
        out.append(f"violations: {len(self.violations)} "
                   + ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())))
        return "\n".join(out)


def check_run(run: RunRecord, *, slack: float = 0.5, strict_timing: bool = False,
              window_tolerance: float = 0.1) -> Report:
    """Every violated invariant of a finished run, and its figures (see the module doc).

    ``slack`` (seconds) widens every window the checker derives from the schedule: a
    silent fault must last ``timeout + tick + slack`` before a leave is required, and
    leaves are explained until ``timeout + tick + slack`` after a fault healed.
    ``strict_timing`` adds a ``DETECTION_WINDOW`` violation for each silent peer
    reported outside ``[timeout, timeout + tick]`` (± ``window_tolerance``) after it
    fell silent.
    """
    return _Checker(run, slack, strict_timing, window_tolerance).check()


class _Checker:
    def __init__(self, run: RunRecord, slack: float, strict_timing: bool, tolerance: float) -> None:
        self.run = run
        self.slack = slack
        self.strict = strict_timing
        self.tolerance = tolerance
        self.grace = run.timeout + run.tick + slack
        self.by_inc = {p.incarnation: p for p in run.processes}
        self.events = {p.incarnation: [(t, ev) for t, ev in p.events if t <= run.cutoff]
                       for p in run.processes}
        self.t0 = min((p.started for p in run.processes), default=0.0)
        self.violations: list[Violation] = []
        self.detections: list[Detection] = []
        self.reasons: dict[str, Counter[str]] = defaultdict(Counter)
        self.soft_leaves = 0

    def check(self) -> Report:
        for proc in self.run.processes:
            self._stream(proc)
            self._leaves(proc)
            self._dead_incarnations(proc)
        for fault in self.run.faults:
            self._required(fault)
        self._full_mesh()
        self._exits()
        run = self.run
        events: Counter[str] = Counter(ev.get("event", "?") for evs in self.events.values()
                                       for _, ev in evs)
        return Report(
            violations=self.violations,
            detections=self.detections,
            faults=Counter(f.fault.kind.value for f in run.faults),
            events=events,
            reasons=dict(self.reasons),
            soft_leaves=self.soft_leaves,
            mesh_after_heal=None if run.mesh_at is None else run.mesh_at - run.last_heal,
            window=(run.timeout, run.timeout + run.tick),
            tolerance=self.tolerance,
        )

    # -- helpers -------------------------------------------------------------------
    def _who(self, inc: str) -> str:
        p = self.by_inc.get(inc)
        return f"{p.name}/{inc[:8]}" if p else f"?/{inc[:8]}"

    def _excerpt(self, observer: ProcessRecord, around: float, peer: str | None = None,
                 span: float = 3.0) -> list[str]:
        """The observer's events about ``peer`` (all if None) and the faults near ``around``."""
        rows: list[tuple[float, str]] = []
        for t, ev in self.events[observer.incarnation]:
            if abs(t - around) <= span and (peer is None or ev.get("incarnation") == peer
                                            or ev.get("peer") == (self.by_inc[peer].name
                                                                  if peer in self.by_inc else None)):
                rows.append((t, f"{self._who(observer.incarnation)} saw "
                                f"{ev.get('event')} {ev.get('peer', '')}/"
                                f"{str(ev.get('incarnation', ''))[:8]} {ev.get('reason', '')}".rstrip()))
        for f in self.run.faults:
            if f.start - span <= around <= f.end + span:
                rows.append((f.start, f"FAULT {f.fault.describe()} (in effect {f.start - self.t0:.3f}s"
                                      f" - {f.end - self.t0:.3f}s)"))
        return [f"{t - self.t0:8.3f}s {text}" for t, text in sorted(rows)]

    def _up_at(self, observer: ProcessRecord, t: float) -> dict[str, str]:
        """Peer name -> incarnation the observer had joined at ``t`` (by read time)."""
        up: dict[str, str] = {}
        for when, ev in self.events[observer.incarnation]:
            if when > t:
                break
            if ev.get("event") == "join":
                up[ev["peer"]] = ev["incarnation"]
            elif ev.get("event") == "leave" and up.get(ev.get("peer", "")) == ev.get("incarnation"):
                del up[ev["peer"]]
        return up

    def _flag(self, invariant: Invariant, message: str, excerpt: Iterable[str] = ()) -> None:
        self.violations.append(Violation(invariant, message, list(excerpt)))

    # -- per-process invariants ------------------------------------------------------
    def _stream(self, proc: ProcessRecord) -> None:
        evs = [ev for _, ev in self.events[proc.incarnation]]
        for problem in check_events(evs):
            self._flag(Invariant.EVENT_STREAM, f"{self._who(proc.incarnation)}: {problem}")

    def _leaves(self, observer: ProcessRecord) -> None:
        for t, ev in self.events[observer.incarnation]:
            if ev.get("event") != "leave":
                continue
            inc, reason = str(ev.get("incarnation")), str(ev.get("reason"))
            peer = self.by_inc.get(inc)
            if peer is None:
                continue  # an incarnation no process of the run had: EVENT_STREAM's job
            allowed: set[str] = set()
            kinds: set[FaultKind] = set()
            for f in self.run.faults:
                reasons = explain(f, observer, peer, t, tick=self.run.tick,
                                  timeout=self.run.timeout, grace=self.grace)
                if reasons is not None:
                    kinds.add(f.fault.kind)
                    allowed |= reasons
                    if reason in reasons:
                        self.reasons[f.fault.kind.value][reason] += 1
            where = f"{self._who(observer.incarnation)} reported leave({self._who(inc)}, {reason})" \
                    f" at {t - self.t0:.3f}s"
            if not kinds:
                self._flag(Invariant.UNEXPLAINED_LEAVE, f"{where}: no fault on that path then",
                           self._excerpt(observer, t, inc))
            elif reason not in allowed:
                self._flag(Invariant.WRONG_REASON,
                           f"{where}: the faults then ({', '.join(sorted(kinds))}) give"
                           f" {sorted(allowed)}", self._excerpt(observer, t, inc))
            elif kinds <= {FaultKind.LOSS, FaultKind.DELAY}:
                self.soft_leaves += 1

    def _dead_incarnations(self, observer: ProcessRecord) -> None:
        """After a process died: at most one leave of it per observer, no join after it."""
        deaths = {f.incarnation: f for f in self.run.faults
                  if f.fault.kind in PROCESS_DEATHS and f.incarnation}
        seen_leave: dict[str, float] = {}
        for t, ev in self.events[observer.incarnation]:
            inc = str(ev.get("incarnation"))
            death = deaths.get(inc)
            if death is None or t < death.start:
                continue
            if ev.get("event") == "leave":
                if inc in seen_leave:
                    self._flag(Invariant.DEAD_INCARNATION,
                               f"{self._who(observer.incarnation)} left {self._who(inc)} again after"
                               f" its process died ({death.fault.describe()})",
                               self._excerpt(observer, t, inc))
                seen_leave[inc] = t
            elif ev.get("event") == "join" and inc in seen_leave:
                self._flag(Invariant.DEAD_INCARNATION,
                           f"{self._who(observer.incarnation)} joined {self._who(inc)} after its"
                           f" process died and was reported gone ({death.fault.describe()})",
                           self._excerpt(observer, t, inc))

    # -- per-fault invariants ---------------------------------------------------------
    def _required(self, f: AppliedFault) -> None:
        """Who must report whom gone, by when: process deaths at every observer that
        had the incarnation up (any time before the cutoff); silent faults that held
        longer than timeout + tick + slack within the fault's window plus grace."""
        run = self.run
        kind = f.fault.kind
        long_silence = f.end - f.start >= run.timeout + run.tick + self.slack
        if kind in PROCESS_DEATHS:
            deadline, lived = run.cutoff, f.start + self.grace
        elif kind in SILENT and long_silence:
            deadline = lived = f.end + self.grace
        else:
            return
        for observer in run.processes:
            # an observer that died meanwhile owes nothing; one that lived through the
            # window owes the leave (a death's leave may come at any time until the end)
            if not (observer.alive(f.start) and observer.alive(min(lived, run.cutoff))):
                continue
            for peer_inc in self._up_at(observer, f.start).values():
                peer = self.by_inc.get(peer_inc)
                if peer is None:
                    continue
                side = affected_side(f, observer, peer)
                if side is None:
                    continue
                leave = next(((t, ev) for t, ev in self.events[observer.incarnation]
                              if f.start <= t <= deadline and ev.get("event") == "leave"
                              and ev.get("incarnation") == peer_inc), None)
                if leave is None:
                    self._flag(Invariant.MISSING_LEAVE,
                               f"{self._who(observer.incarnation)} never reported"
                               f" {self._who(peer_inc)} gone after {f.fault.describe()}"
                               + ("" if kind in PROCESS_DEATHS else
                                  f" (looked until {deadline - self.t0:.3f}s)"),
                               self._excerpt(observer, f.start, peer_inc, span=f.end - f.start + 4))
                    continue
                self._detected(f, leave[0], str(leave[1].get("reason")), side, observer, peer_inc)

    def _detected(self, f: AppliedFault, t: float, reason: str, side: str,
                  observer: ProcessRecord, peer_inc: str) -> None:
        run = self.run
        since_silent = None
        if f.fault.kind in SILENT and side == "silent" and reason == "timeout" \
                and f.settle <= BEAT_SLACK and self._alone_on_path(f, observer, peer_inc, t):
            # idle links ping at wall-clock multiples of tick: the last ping that got
            # through left at the last such instant before the fault took effect. It
            # took effect within [start, start + settle]: an instant inside that span
            # may or may not have got its ping through, so either instant counts
            low, high = run.timeout - self.tolerance, run.timeout + run.tick + self.tolerance
            at = f.start_wall + (t - f.start)
            beats = [math.floor(w / run.tick) * run.tick
                     for w in (f.start_wall, f.start_wall + f.settle)]
            since_silent = next((at - b for b in reversed(beats) if low <= at - b <= high),
                                at - beats[0])
            if self.strict and not low <= since_silent <= high:
                self._flag(Invariant.DETECTION_WINDOW,
                           f"{self._who(observer.incarnation)} reported {self._who(peer_inc)} gone"
                           f" {since_silent:.3f}s after the last heartbeat got through, outside"
                           f" [{run.timeout:g}, {run.timeout + run.tick:g}] ({f.fault.describe()})",
                           self._excerpt(observer, t, peer_inc, span=f.end - f.start + 2))
        self.detections.append(Detection(f.fault.kind, reason, t - f.start, since_silent, side))

    def _alone_on_path(self, f: AppliedFault, observer: ProcessRecord, peer_inc: str,
                       t: float) -> bool:
        """No other fault touched what ``observer`` hears from the peer between ``f``
        taking effect (less a grace, for one that was still being noticed) and the leave
        at ``t``: only then does the leave time tell how fast ``f`` was detected (an
        observer that was itself stopped, or a partition that began earlier, would
        shift it; so would a delayed or lost ping)."""
        peer = self.by_inc[peer_inc]
        return not any(g is not f and g.start <= t and g.end + self.grace >= f.start
                       and touches(g, observer, peer) for g in self.run.faults)

    def _full_mesh(self) -> None:
        run = self.run
        live = [p for p in run.processes if p.alive(run.cutoff)]
        expect = {p.incarnation: {q.name: q.incarnation for q in live if q is not p} for p in live}
        for p in live:
            up = self._up_at(p, run.cutoff)
            if up != expect[p.incarnation]:
                missing = sorted(f"{n}/{i[:8]}" for n, i in expect[p.incarnation].items() if up.get(n) != i)
                extra = sorted(f"{n}/{i[:8]}" for n, i in up.items() if expect[p.incarnation].get(n) != i)
                self._flag(Invariant.FULL_MESH,
                           f"{self._who(p.incarnation)} at the end (mesh deadline"
                           f" {run.mesh_deadline:g}s after the last heal): missing {missing},"
                           f" stale {extra}", self._excerpt(p, run.cutoff, span=run.mesh_deadline + 2))
        if run.mesh_at is None and not any(v.invariant is Invariant.FULL_MESH for v in self.violations):
            self._flag(Invariant.FULL_MESH, "the runner did not see the full mesh by its deadline")

    def _exits(self) -> None:
        for error in self.run.errors:
            self._flag(Invariant.CRASH, f"a fault could not complete: {error[:1500]}")
        expected: dict[str, set[int]] = {}
        for f in self.run.faults:
            if f.incarnation and f.fault.kind in PROCESS_DEATHS:
                expected[f.incarnation] = {0} if f.fault.kind is FaultKind.TERM else {-9}
        for inc in self.run.terminated_at_end:
            expected[inc] = {0}
        for p in self.run.processes:
            want = expected.get(p.incarnation)
            if want is None:
                if p.ended is not None and p.ended <= self.run.cutoff:
                    self._flag(Invariant.CRASH, f"{self._who(p.incarnation)} exited with code"
                                                f" {p.exit_code} though nothing stopped it")
            elif p.exit_code not in want:
                self._flag(Invariant.CRASH, f"{self._who(p.incarnation)} exited with code"
                                            f" {p.exit_code}, expected {sorted(want)}")
            for line in p.crash_lines[:5]:
                self._flag(Invariant.CRASH, f"{self._who(p.incarnation)} stderr: {line[:300]}")


def affected_side(f: AppliedFault, observer: ProcessRecord, peer: ProcessRecord) -> str | None:
    """How fault ``f`` touches what ``observer`` hears from ``peer`` (None: not at all):
    "peer" (the peer process died), "silent" (nothing arrives), "sender" (a cut's
    sending side: nothing it sends arrives), "resumed" (the observer was stopped)."""
    k = f.fault
    if k.kind in PROCESS_DEATHS:
        return "peer" if f.incarnation == peer.incarnation else None
    if k.kind is FaultKind.STOP:
        if f.incarnation == peer.incarnation:
            return "silent"
        return "resumed" if f.incarnation == observer.incarnation else None
    if k.kind is FaultKind.ISOLATE:
        return "silent" if k.host in (observer.host, peer.host) else None
    if k.kind is FaultKind.PARTITION:
        return "silent" if {observer.host, peer.host} == {k.host, k.other} else None
    if k.kind is FaultKind.CUT:
        if (peer.host, observer.host) == (k.host, k.other):
            return "silent"
        return "sender" if (observer.host, peer.host) == (k.host, k.other) else None
    return None


def touches(f: AppliedFault, observer: ProcessRecord, peer: ProcessRecord) -> bool:
    """Whether fault ``f`` changes in any way what ``observer`` hears from ``peer``
    (loss and delay too: a late or retransmitted ping moves a detection by a tick)."""
    if f.fault.kind in (FaultKind.LOSS, FaultKind.DELAY):
        return f.fault.host in (observer.host, peer.host)
    return affected_side(f, observer, peer) is not None


def explain(f: AppliedFault, observer: ProcessRecord, peer: ProcessRecord, t: float, *,
            tick: float, timeout: float, grace: float) -> frozenset[str] | None:
    """The leave reasons fault ``f`` can cause when ``observer`` reports ``peer`` gone
    at time ``t``, or None if ``f`` has nothing to do with that leave.

    A process death explains only leaves of the incarnation it killed. A silent fault
    explains leaves on its path from when it took effect until ``grace`` after it
    healed: while nothing crosses, only ``timeout``; afterwards also
    ``connection_lost`` (the far side timed out first and its reset arrives now). A
    SIGSTOP shorter than ``timeout - tick`` explains nothing: the peers must not notice
    it. Loss explains timeouts and resets on its host's paths; a delay shorter than
    ``timeout - 2 tick`` explains nothing.
    """
    k = f.fault
    if k.kind in PROCESS_DEATHS:
        if f.incarnation != peer.incarnation or t < f.start:
            return None
        reasons = DEATH_REASONS[k.kind]
        if k.kind is FaultKind.SILENT_RESTART and f.end - f.start >= timeout - tick:
            reasons = reasons | SILENT_REASON  # isolated long enough to time out first
        return reasons
    if not f.start <= t <= f.end + grace:
        return None
    if k.kind in SILENT:
        side = affected_side(f, observer, peer)
        if side is None or (k.kind is FaultKind.STOP and f.end - f.start < timeout - tick):
            return None
        if side in ("sender", "resumed") or t > f.end:
            return SILENT_OR_RESET
        return SILENT_REASON
    if k.host not in (observer.host, peer.host):
        return None
    if k.kind is FaultKind.DELAY and k.amount < timeout - 2 * tick:
        return None
    return SILENT_OR_RESET


def format_schedule(faults: Sequence[Fault]) -> str:
    """One line per fault: when it is planned and what it does."""
    return "\n".join(f"  {f.at:7.2f}s  {f.describe()}" for f in faults)
