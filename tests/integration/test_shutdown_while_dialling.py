"""Found by the chaos suite (make chaos SEED=3): a node told to stop (SIGTERM) while its
re-dial of a hung peer waits for the handshake printed an asyncio traceback.

The peer is SIGSTOPped: the node times it out and dials it again; the kernel of the
stopped process still completes the TCP handshake, so the dial then waits on the
peerlink handshake. Shutdown cancels the dial task, and with it the link's ``opened``
future it awaits; when the link then closes, ``Membership.link_closed`` calls
``link.opened.exception()`` on a cancelled future, which raises ``CancelledError`` out
of ``connection_lost`` ("Exception in callback ... _call_connection_lost").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from support.nodeproc import NodeFactory, scaled


def established_to(port: int) -> bool:
    """A TCP connection to 127.0.0.1:``port`` is established (this network namespace)."""
    target = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(row.split()[2] == target and row.split()[3] == "01" for row in list(table)[1:])


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {scaled(timeout):g} s"
        await asyncio.sleep(0.02)  # polling a kernel table: there is no event to await


async def test_sigterm_while_a_dial_waits_for_a_stopped_peer_exits_cleanly(
    node_factory: NodeFactory,
) -> None:
    a, b = await node_factory.start_mesh(["a", "b"])
    mark = a.mark()
    b.stop()
    await a.wait_event("leave", peer="b", reason="timeout", after=mark)
    b_port = int(b.address.rsplit(":", 1)[1])
    # a dials b again: the stopped process's kernel accepts, the handshake hangs
    await wait_until(lambda: established_to(b_port), 5.0, "re-dial of the stopped peer")
    assert await a.terminate() == 0
    assert a.crash_signs() == [], a.stderr_tail()
    b.cont()
