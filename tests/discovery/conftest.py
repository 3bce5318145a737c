"""Fixtures shared by the DNS strategy tests and the DNS node-process tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.dnsmasq import Dnsmasq, dnsmasq_unavailable_reason


@pytest.fixture
def make_dnsmasq(tmp_path: Path) -> Iterator[Callable[..., Dnsmasq]]:
    """``make_dnsmasq(hosts={name: [addr]}, srv={name: [(target, port)]}, **Dnsmasq
    options)`` -> a started dnsmasq; all are stopped at teardown."""
    if reason := dnsmasq_unavailable_reason():
        pytest.skip(reason)
    started: list[Dnsmasq] = []

    def make(hosts: dict[str, list[str]] | None = None,
             srv: dict[str, list[Any]] | None = None, **kwargs: Any) -> Dnsmasq:
        d = Dnsmasq(tmp_path / f"dns{len(started)}", **kwargs)
        if hosts is not None:
            d.set_hosts(hosts)
        for name, targets in (srv or {}).items():
            d.set_srv(name, targets)
        started.append(d)
        return d.start()

    try:
        yield make
    finally:
        for d in started:
            d.stop()
