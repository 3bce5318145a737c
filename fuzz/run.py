"""Coverage-guided fuzzing of peerlink's sans-I/O core with atheris (libFuzzer).

    python fuzz/run.py TARGET [libFuzzer options and corpus directories]
    make fuzz                      # every target for FUZZ_SECONDS (default 60) each

Targets (the checks are ``tests/support/fuzzing.py``, shared with the hypothesis
properties and the regression tests):

  decoder_preauth   FrameDecoder before authentication: any bytes, any split
  decoder_auth      FrameDecoder after authentication (small max_items: the counting
                    decode of large frames is reached quickly)
  handshake         Handshake, either side, at any point, fed any bytes
  tamper            a valid handshake with one byte changed must fail, documented

A crash is a ``Finding`` (the contract broke) or any other exception escaping; libFuzzer
saves the input under ``-artifact_prefix`` (``fuzz/crashes/TARGET/``). Triaged crashes
are kept as ``fuzz/regressions/TARGET/<name>`` and replayed by
``tests/test_fuzz_regressions.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

with atheris.instrument_imports(include=["peerlink"]):
    from support import fuzzing  # its imports of peerlink are instrumented

TARGETS = fuzzing.TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
