"""The public API: __all__ is sorted and complete; lazily imported strategies resolve."""

from __future__ import annotations

import subprocess
import sys

import peerlink


def test_all_is_sorted_and_resolves() -> None:
    names = peerlink.__all__
    assert len(set(names)) == len(names)
    assert names == sorted(names, key=lambda s: (not s.isupper(), s))  # isort style, as ruff keeps it
    for name in peerlink.__all__:
        assert getattr(peerlink, name) is not None, name


def test_import_does_not_pull_heavy_dependencies() -> None:
    code = ("import sys, peerlink; heavy = [m for m in ('kubernetes', 'zeroconf', 'dns.asyncresolver', 'aiohttp')"
            " if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_py_typed_ships() -> None:
    from importlib.resources import files

    assert files("peerlink").joinpath("py.typed").is_file()
