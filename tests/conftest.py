"""Root fixtures: node processes on loopback, a cookie file, network-namespace labs.

Test helpers live in ``tests/support`` (``from support.nodeproc import ...``,
``from support.lab import Lab, requires_netns``): pytest puts ``tests/`` on sys.path
because this conftest's folder has no ``__init__.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from support.lab import Lab, cleanup_stale, netns_unavailable_reason
from support.nodeproc import NodeFactory


def pytest_sessionstart(session: pytest.Session) -> None:
    # Namespaces left behind by earlier runs that died (only those of dead pids).
    cleanup_stale()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    netns_items = [item for item in items if item.get_closest_marker("netns")]
    if netns_items and (reason := netns_unavailable_reason()):
        skip = pytest.mark.skip(reason=f"network namespaces unavailable: {reason}")
        for item in netns_items:
            item.add_marker(skip)


@pytest.fixture
def cookie_file(tmp_path: Path) -> Path:
    """A cookie file the way a Kubernetes Secret volume presents it (one trailing newline)."""
    path = tmp_path / "cookie"
    path.write_text(secrets.token_hex(16) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
async def node_factory(tmp_path: Path, cookie_file: Path) -> AsyncIterator[NodeFactory]:
    """Starts ``peerlink node --json`` processes (see ``support.nodeproc``); at teardown
    kills them all, then fails if any node's events broke the invariants."""
    factory = NodeFactory(tmp_path / "nodes", cookie_file=cookie_file, cluster="test")
    try:
        yield factory
    finally:
        await factory.aclose()
    factory.check()


@pytest.fixture
def lab() -> Iterator[Callable[[int], Lab]]:
    """``lab(n)`` creates a ``Lab`` of n namespaces; all are closed at teardown."""
    if reason := netns_unavailable_reason():
        pytest.skip(f"network namespaces unavailable: {reason}")
    labs: list[Lab] = []

    def make(n: int) -> Lab:
        created = Lab(n)
        labs.append(created)
        return created

    try:
        yield make
    finally:
        for created in labs:
            created.close()
