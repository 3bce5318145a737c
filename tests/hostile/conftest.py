"""Fixtures of the hostile-client suite (issue 11): ``make_arena`` starts a target node
process with two healthy peers calling it (``support.arena``); at teardown every
process is stopped and their join/leave streams are checked."""

from __future__ import annotations

import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from support.arena import Arena, start_arena
from support.nodeproc import NodeFactory


@pytest.fixture(scope="session", autouse=True)
def _enough_descriptors() -> None:
    # floods open a thousand connections from this process
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@pytest.fixture
async def make_arena(node_factory: NodeFactory) -> AsyncIterator[Callable[..., Awaitable[Arena]]]:
    arenas: list[Arena] = []

    async def make(**options: Any) -> Arena:
        arena = await start_arena(node_factory, **options)
        arenas.append(arena)
        return arena

    try:
        yield make
    finally:
        for arena in arenas:
            await arena.aclose()
    for arena in arenas:
        arena.check_events()
