"""A short seeded chaos run in ``make test`` (issue 11): real node processes on 5
namespace hosts, every fault kind of ``support.chaos`` (kill -9, SIGTERM, restarts
including the silent restart of issue 15, SIGSTOP, isolation, partitions, one-way
cuts, loss, delay), and every invariant of ``chaos.check_run``. Detection latencies
are printed as figures, not asserted (``make chaos`` runs longer schedules and checks
the [timeout, timeout + tick] window strictly)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.chaos import check_run, format_schedule, generate_schedule
from support.chaosrun import available_weights, run_chaos
from support.lab import Lab, requires_netns
from support.nodeproc import NodeFactory

pytestmark = [requires_netns, pytest.mark.slow]

SEED = 11
DURATION = 35.0  # seconds of faults; the run takes about 15 s more


@pytest.mark.timeout(240)
async def test_seeded_chaos_run_keeps_every_invariant(
    lab: Callable[[int], Lab], tmp_path: Path, cookie_file: Path,
) -> None:
    net = lab(5)
    factory = NodeFactory(tmp_path / "nodes", cookie_file=cookie_file, cluster="chaos")
    lines: list[str] = []
    schedule = generate_schedule(SEED, hosts=net.n, duration=DURATION, tick=factory.tick,
                                 timeout=factory.timeout, weights=available_weights(log=lines.append))
    try:
        record = await run_chaos(net, factory, schedule, seed=SEED, log=lines.append)
    finally:
        await factory.aclose()
    (tmp_path / "run.json").write_text(record.to_json())
    report = check_run(record)
    summary = "\n".join([f"seed {SEED}, schedule:", format_schedule(schedule), "run:", *lines,
                         report.figures(), f"run record: {tmp_path / 'run.json'}"])
    print(summary)
    assert report.ok, "\n\n".join([summary, *(v.format() for v in report.violations)])
    assert len(record.faults) == len(schedule)
