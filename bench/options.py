"""Options shared by every benchmark."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


@dataclass
class Options:
    quick: bool = False
    rounds: int = 5
    scale: float = 1.0  # multiplies message counts and durations
    src: str | None = None  # an alternative peerlink source tree (put first on PYTHONPATH)
    tag: str = ""  # suffix of the results files (for runs with --src)
    compare_src: str | None = None  # A/B: also measure peerlink from this tree, interleaved
    pin: bool = False
    uvloop: bool = False
    erlang: bool = False
    erlang_note: str = ""
    sizes: list[int] | None = None  # scale: mesh sizes (default 10, 30, 100)
    started: float = field(default_factory=time.monotonic)

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)

    def name(self, bench: str) -> str:
        return f"{bench}-{self.tag}" if self.tag else bench
