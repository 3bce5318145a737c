"""Inputs the atheris fuzz targets (``fuzz/run.py``) once crashed on, replayed through
the same checks (``support.fuzzing``): ``fuzz/regressions/<target>/<what it found>``.
Each must now pass: only documented errors, the same result for any split, no message
spanning frames, no tampered handshake without an error."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fuzzing import TARGETS

REGRESSIONS = Path(__file__).resolve().parent.parent / "fuzz" / "regressions"
CASES = sorted(path for path in REGRESSIONS.glob("*/*") if path.is_file())


def test_every_regression_folder_is_a_target() -> None:
    assert {path.parent.name for path in CASES} <= set(TARGETS)


@pytest.mark.parametrize("path", CASES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_fuzz_finding_stays_fixed(path: Path) -> None:
    TARGETS[path.parent.name](path.read_bytes())
