"""The chaos checker (``support.chaos``) itself: fed event logs that keep or break each
invariant, it must pass the first and flag each of the others; and the schedule
generator is deterministic and never overlaps faults on one resource."""

from __future__ import annotations

import pytest
from support.chaos import (
    AppliedFault,
    Fault,
    FaultKind,
    Invariant,
    ProcessRecord,
    RunRecord,
    check_run,
    generate_schedule,
)

TICK, TIMEOUT = 0.2, 1.0
WALL = 10_000.0  # time.time() - time.monotonic() in these synthetic runs


class Run:
    """A synthetic run: hosts h1..hN start at t=0 and form the full mesh at t=0.5."""

    def __init__(self, hosts: int = 3) -> None:
        self.hosts = hosts
        self.procs: dict[int, ProcessRecord] = {}
        self.all: list[ProcessRecord] = []
        self.faults: list[AppliedFault] = []
        self.generation = {h: 0 for h in range(1, hosts + 1)}
        for h in range(1, hosts + 1):
            self._spawn(h, 0.0)
        for h in self.procs:
            for o in self.procs:
                if o != h:
                    self.join(0.5, h, o)

    def _spawn(self, host: int, t: float) -> ProcessRecord:
        inc = f"h{host}-{'abcdefgh'[self.generation[host]]}" + "0" * 8
        self.generation[host] += 1
        proc = ProcessRecord(host, f"h{host}", inc, t, None, None,
                             [(t + 0.1, {"event": "ready", "name": f"h{host}", "incarnation": inc})])
        self.procs[host] = proc
        self.all.append(proc)
        return proc

    def inc(self, host: int) -> str:
        return self.procs[host].incarnation

    def join(self, t: float, observer: int, peer: int, *, peer_inc: str | None = None) -> None:
        self.procs[observer].events.append((t, {
            "event": "join", "peer": f"h{peer}", "incarnation": peer_inc or self.inc(peer),
            "address": f"10.77.0.{peer}:4370", "metadata": {}}))

    def leave(self, t: float, observer: int, peer: int, reason: str, *,
              peer_inc: str | None = None) -> None:
        self.procs[observer].events.append((t, {
            "event": "leave", "peer": f"h{peer}", "incarnation": peer_inc or self.inc(peer),
            "reason": reason}))

    def fault(self, kind: FaultKind, host: int, start: float, end: float, *,
              other: int | None = None, amount: float = 0.0, wall: float = WALL) -> AppliedFault:
        f = AppliedFault(Fault(kind, start, end - start, host, other, amount), start, end,
                         start + wall)
        self.faults.append(f)
        return f

    def stop(self, host: int, start: float, end: float) -> None:
        self.fault(FaultKind.STOP, host, start, end).incarnation = self.inc(host)

    def death(self, kind: FaultKind, host: int, at: float, reasons: str | None, *,
              respawn: float = 0.3) -> str:
        """The process on ``host`` dies at ``at`` (every peer reports ``reasons`` 10 ms
        later unless None) and a new one starts ``respawn`` s later and rejoins all."""
        old = self.procs[host]
        f = self.fault(kind, host, at, at + respawn)
        f.incarnation, f.exit_code = old.incarnation, 0 if kind is FaultKind.TERM else -9
        old.ended, old.exit_code = at + 0.005, f.exit_code
        if reasons is not None:
            for o in self.procs:
                if o != host:
                    self.leave(at + 0.01, o, host, reasons)
        new = self._spawn(host, at + respawn)
        f.new_incarnation = new.incarnation
        for o in self.procs:
            if o != host:
                self.join(at + respawn + 0.2, o, host)
                self.join(at + respawn + 0.2, host, o)
        return old.incarnation

    def record(self, *, cutoff: float = 30.0, mesh_at: float | None = 20.0) -> RunRecord:
        for p in self.all:
            p.events.sort(key=lambda e: e[0])
        live = [p.incarnation for p in self.procs.values()]
        for p in self.procs.values():  # SIGTERMed after the cutoff, unless a test says otherwise
            if p.ended is None:
                p.ended, p.exit_code = cutoff + 1.0, 0
        return RunRecord(seed=0, tick=TICK, timeout=TIMEOUT, hosts=self.hosts, processes=self.all,
                         faults=self.faults, last_heal=max([f.end for f in self.faults], default=0.0),
                         mesh_at=mesh_at, cutoff=cutoff, terminated_at_end=live, mesh_deadline=30.0)

    def check(self, **kw: object) -> list[Invariant]:
        report = check_run(self.record(), **kw)  # type: ignore[arg-type]
        return [v.invariant for v in report.violations]


def partitioned(run: Run, a: int, b: int, start: float, end: float, *, detect: float = 1.15) -> None:
    # in effect 50 ms after a heartbeat instant (wall clock)
    run.fault(FaultKind.PARTITION, a, start, end, other=b, wall=WALL + 0.05)
    run.leave(start + detect, a, b, "timeout")
    run.leave(start + detect, b, a, "timeout")
    run.join(end + 0.3, a, b)
    run.join(end + 0.3, b, a)


# ------------------------------------------------------------------ clean runs
def test_a_run_that_keeps_every_promise_has_no_violation() -> None:
    run = Run(4)
    run.death(FaultKind.KILL, 2, 2.0, "connection_lost")
    run.death(FaultKind.TERM, 3, 4.0, "shutdown")
    run.death(FaultKind.SILENT_RESTART, 1, 6.0, "restarted")
    partitioned(run, 1, 4, 8.0, 10.5)
    run.stop(2, 12.0, 12.4)  # shorter than timeout - tick: nobody may notice
    run.fault(FaultKind.LOSS, 3, 14.0, 16.0, amount=5)
    run.fault(FaultKind.DELAY, 4, 14.0, 16.0, amount=0.1)
    report = check_run(run.record(), strict_timing=True)
    assert report.violations == [], "\n".join(v.format() for v in report.violations)
    kinds = {(d.kind, d.side) for d in report.detections}
    assert kinds == {(FaultKind.KILL, "peer"), (FaultKind.TERM, "peer"),
                     (FaultKind.SILENT_RESTART, "peer"), (FaultKind.PARTITION, "silent")}
    assert report.faults["partition"] == 1 and report.mesh_after_heal == 20.0 - 16.0
    assert "spurious leaves (no fault on the path): 0" in report.figures()


# -------------------------------------------------------- each invariant broken
def test_a_leave_between_unaffected_peers_is_unexplained() -> None:
    run = Run(3)
    partitioned(run, 1, 2, 2.0, 4.5)
    run.leave(3.0, 3, 1, "timeout")  # h3's path to h1 had no fault
    run.join(3.5, 3, 1)
    assert run.check() == [Invariant.UNEXPLAINED_LEAVE]


def test_a_leave_after_a_fault_window_closed_is_unexplained() -> None:
    run = Run(2)
    partitioned(run, 1, 2, 2.0, 4.5)
    run.leave(9.0, 1, 2, "timeout")  # long after the heal plus grace
    run.join(9.5, 1, 2)
    assert run.check() == [Invariant.UNEXPLAINED_LEAVE]


def test_issue_15_new_incarnation_torn_down_after_a_silent_restart_is_flagged() -> None:
    run = Run(3)
    run.death(FaultKind.SILENT_RESTART, 1, 2.0, "restarted")
    # ~5 ms after the join the new node loses its fresh links, then joins again
    for peer in (2, 3):
        run.leave(2.51, 1, peer, "connection_lost")
        run.join(2.6, 1, peer)
    assert run.check() == [Invariant.UNEXPLAINED_LEAVE] * 2


@pytest.mark.parametrize(("kind", "reported"), [
    (FaultKind.KILL, "timeout"),
    (FaultKind.KILL, "shutdown"),
    (FaultKind.TERM, "connection_lost"),
    (FaultKind.RESTART, "timeout"),
    (FaultKind.SILENT_RESTART, "shutdown"),
])
def test_a_death_reported_with_a_reason_it_cannot_cause_is_flagged(kind: FaultKind, reported: str) -> None:
    run = Run(2)
    run.death(kind, 2, 2.0, reported)
    assert run.check() == [Invariant.WRONG_REASON]


def test_a_reset_while_a_partition_holds_is_the_wrong_reason() -> None:
    run = Run(2)
    run.fault(FaultKind.PARTITION, 1, 2.0, 4.5, other=2)
    run.leave(3.0, 1, 2, "connection_lost")  # nothing can cross: not a reset
    run.leave(3.15, 2, 1, "timeout")
    run.join(4.8, 1, 2)
    run.join(4.8, 2, 1)
    assert run.check() == [Invariant.WRONG_REASON]


def test_a_one_way_cut_allows_a_reset_only_on_the_sending_side() -> None:
    run = Run(2)
    run.fault(FaultKind.CUT, 1, 2.0, 4.5, other=2)  # h2 hears nothing from h1
    run.leave(3.15, 2, 1, "timeout")
    run.leave(3.2, 1, 2, "connection_lost")  # h2's reset reaches h1
    run.join(4.8, 1, 2)
    run.join(4.8, 2, 1)
    assert run.check() == []
    run.procs[2].events[-2] = (3.15, {**run.procs[2].events[-2][1], "reason": "connection_lost"})
    assert run.check() == [Invariant.WRONG_REASON]


def test_a_short_sigstop_must_go_unnoticed_and_a_long_one_noticed() -> None:
    short = Run(2)
    short.stop(2, 2.0, 2.5)  # 0.5 s < timeout - tick
    short.leave(3.0, 1, 2, "timeout")
    short.join(3.2, 1, 2)
    assert short.check() == [Invariant.UNEXPLAINED_LEAVE]

    long = Run(2)
    long.stop(2, 2.0, 4.5)
    long.leave(3.15, 1, 2, "timeout")  # the stopped node itself reports nothing
    assert sorted(long.check()) == [Invariant.FULL_MESH, Invariant.MISSING_LEAVE]


def test_a_small_delay_explains_no_leave_and_loss_does() -> None:
    delayed = Run(2)
    delayed.fault(FaultKind.DELAY, 1, 2.0, 5.0, amount=0.1)
    delayed.leave(3.0, 2, 1, "timeout")
    delayed.join(3.5, 2, 1)
    assert delayed.check() == [Invariant.UNEXPLAINED_LEAVE]

    lossy = Run(2)
    lossy.fault(FaultKind.LOSS, 1, 2.0, 5.0, amount=5)
    lossy.leave(3.0, 2, 1, "timeout")
    lossy.join(3.5, 2, 1)
    report = check_run(lossy.record())
    assert report.violations == [] and report.soft_leaves == 1


def test_a_dead_peer_nobody_reports_gone_is_flagged() -> None:
    run = Run(3)
    old = run.death(FaultKind.KILL, 2, 2.0, None)
    run.leave(2.01, 1, 2, "connection_lost", peer_inc=old)  # h3 never reports it
    # h3 also joins the new incarnation while the old one is still up
    assert sorted(run.check()) == [Invariant.EVENT_STREAM, Invariant.MISSING_LEAVE]


def test_a_long_partition_nobody_reports_is_flagged_a_short_one_need_not_be() -> None:
    run = Run(2)
    run.fault(FaultKind.PARTITION, 1, 2.0, 4.5, other=2)
    assert run.check() == [Invariant.MISSING_LEAVE] * 2
    short = Run(2)
    short.fault(FaultKind.PARTITION, 1, 2.0, 2.8, other=2)
    assert short.check() == []


def test_leaving_or_joining_a_dead_incarnation_again_is_flagged() -> None:
    run = Run(2)
    old = run.death(FaultKind.KILL, 2, 2.0, "connection_lost")
    run.join(2.05, 1, 2, peer_inc=old)
    run.leave(2.1, 1, 2, "connection_lost", peer_inc=old)
    problems = run.check()
    assert problems.count(Invariant.DEAD_INCARNATION) == 2  # the join and the second leave


def test_a_repeated_event_breaks_the_stream() -> None:
    run = Run(2)
    run.join(1.0, 1, 2)  # a second join of the same incarnation, no leave between
    assert run.check() == [Invariant.EVENT_STREAM]


def test_a_mesh_not_back_after_the_last_heal_is_flagged() -> None:
    run = Run(3)
    run.fault(FaultKind.PARTITION, 1, 2.0, 4.5, other=3)
    run.leave(3.15, 1, 3, "timeout")
    run.leave(3.15, 3, 1, "timeout")  # and they never join again
    report = check_run(run.record(mesh_at=None))
    assert [v.invariant for v in report.violations] == [Invariant.FULL_MESH] * 2
    assert "missing ['h3/h3-a0000']" in report.violations[0].message


def test_crashes_unexpected_exits_and_tracebacks_are_flagged() -> None:
    run = Run(3)
    run.death(FaultKind.TERM, 2, 2.0, "shutdown")
    run.all[1].exit_code = 1  # SIGTERM must give exit code 0
    run.procs[3].ended, run.procs[3].exit_code = 5.0, 1  # died though nothing killed it
    run.procs[1].crash_lines = ["Traceback (most recent call last):"]
    assert run.check().count(Invariant.CRASH) == 3


def test_detection_outside_the_window_is_flagged_only_when_strict() -> None:
    run = Run(2)
    partitioned(run, 1, 2, 2.0, 4.5, detect=2.0)
    assert run.check() == []
    assert run.check(strict_timing=True) == [Invariant.DETECTION_WINDOW] * 2
    report = check_run(run.record())
    (silent,) = {round(d.since_silent or 0, 3) for d in report.detections}
    assert silent == 2.05


def test_detection_time_is_not_judged_when_another_fault_shares_the_path() -> None:
    run = Run(2)
    run.stop(1, 1.5, 3.0)  # the observer h1 is itself stopped: it reports late, at resume
    partitioned(run, 1, 2, 2.0, 4.5, detect=2.0)
    report = check_run(run.record(), strict_timing=True)
    assert Invariant.DETECTION_WINDOW not in [v.invariant for v in report.violations]
    assert all(d.since_silent is None for d in report.detections if d.kind is FaultKind.PARTITION)


def test_detection_time_is_not_judged_when_a_delay_shares_the_path() -> None:
    run = Run(2)
    run.fault(FaultKind.DELAY, 2, 1.0, 2.3, amount=0.15)  # the last ping arrived 150 ms late
    partitioned(run, 1, 2, 2.0, 4.5, detect=1.4)
    assert run.check(strict_timing=True) == []


def test_a_heartbeat_instant_while_the_fault_was_being_applied_may_have_got_through() -> None:
    run = Run(2)
    # issued 10 ms before an instant, in effect within 30 ms: that instant's ping may
    # have got through, so a detection 1.21 s after it (1.41 s after the one before) is fine
    run.fault(FaultKind.ISOLATE, 2, 2.0, 4.5, wall=WALL + 0.19).settle = 0.03
    for a, b in ((1, 2), (2, 1)):
        run.leave(3.22, a, b, "timeout")
        run.join(4.8, a, b)
    assert run.check(strict_timing=True) == []
    run.faults[0].settle = 0.005  # in effect before the instant: its ping was lost
    assert run.check(strict_timing=True) == [Invariant.DETECTION_WINDOW] * 2


def test_a_fault_slow_to_apply_gives_no_detection_figure() -> None:
    run = Run(2)
    partitioned(run, 1, 2, 2.0, 4.5, detect=2.0)
    run.faults[-1].settle = 0.8  # the nft command took 0.8 s: when did it take effect?
    report = check_run(run.record(), strict_timing=True)
    assert report.violations == []
    assert [d.since_silent for d in report.detections] == [None, None]


def test_run_records_survive_json() -> None:
    run = Run(2)
    run.death(FaultKind.RESTART, 1, 2.0, "restarted")
    record = run.record()
    again = RunRecord.from_json(record.to_json())
    assert again == record
    assert check_run(again).violations == []


# ----------------------------------------------------------------- schedules
def test_schedules_are_seeded_and_never_share_a_resource() -> None:
    make = lambda seed: generate_schedule(seed, hosts=5, duration=300, tick=TICK, timeout=TIMEOUT)  # noqa: E731
    first = make(7)
    assert first == make(7) and first != make(8)
    assert {f.kind for f in first} == set(FaultKind)
    for i, f in enumerate(first):
        assert 0 < f.at < 300 and all(1 <= h <= 5 for h in f.hosts())
        assert f.other != f.host
        overlapping = [g for g in first[:i] if g.at <= f.at < g.at + g.hold]
        assert len(overlapping) < 2
        assert not any(g.resources() & f.resources() for g in overlapping), (f, overlapping)
    silent = [f.duration for f in first if f.kind in (FaultKind.STOP, FaultKind.PARTITION)]
    assert min(silent) < TIMEOUT - TICK and max(silent) > TIMEOUT + TICK + 0.5


def test_a_schedule_can_hold_only_the_kinds_asked_for() -> None:
    only = generate_schedule(1, hosts=5, duration=60, tick=TICK, timeout=TIMEOUT,
                             weights={FaultKind.SILENT_RESTART: 1})
    assert only and {f.kind for f in only} == {FaultKind.SILENT_RESTART}
    with pytest.raises(ValueError):
        generate_schedule(1, hosts=1, duration=60, tick=TICK, timeout=TIMEOUT)
