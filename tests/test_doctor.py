"""``peerlink doctor`` never says OK wrongly: a duplicate name is a conflict with its
fix, a stalled handshake says what is known (connected, waiting, for how long), and the
command exits without a traceback. Real ``peerlink node`` and ``peerlink doctor``
processes on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

from support.nodeproc import NodeFactory


async def doctor(*args: str, cookie_file: Path | None = None, cluster: str = "test") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERLINK_")}
    argv = [sys.executable, "-m", "peerlink", "doctor", "--cluster", cluster, *args]
    if cookie_file is not None:
        argv += ["--cookie-file", str(cookie_file)]
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_name_conflict_is_shown_with_its_fix(node_factory: NodeFactory) -> None:
    """Today's bug: doctor --name X against a running X printed 'OK linked to X'."""
    x = await node_factory.start("x")
    code, out, err = await doctor("--name", "x", "--discovery", f"static://{x.address}", "--wait", "2",
                                  cookie_file=node_factory.cookie_file)
    assert code == 1, out + err
    line = next(line for line in out.splitlines() if line.startswith(x.address))
    assert "OK" not in line and "NAME_CONFLICT" in line, out
    assert "PEERLINK_NAME" in out  # the fix: give each node a unique name
    assert "Traceback" not in err
    code, out, _ = await doctor("--name", "x", "--discovery", f"static://{x.address}", "--wait", "2",
                                "--json", cookie_file=node_factory.cookie_file)
    (cand,) = json.loads(out)["candidates"]
    assert cand["state"] == "name_conflict" and cand["peer"] == "x"


async def doctor_against_a_stalled_port() -> tuple[str, int, str, str]:
    """A port that accepts TCP (the kernel completes it from the backlog) but never
    speaks a word; doctor's wait ends long before its handshake timeout."""
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(8)
        address = f"127.0.0.1:{stalled.getsockname()[1]}"
        code, out, err = await doctor("--discovery", f"static://{address}", "--wait", "1.5",
                                      "--handshake-timeout", "30")
    return address, code, out, err


async def test_stalled_handshake_says_connected_waiting_and_how_long() -> None:
    """Today's bug: such a candidate showed as a bare 'DIALLING'."""
    address, code, out, _ = await doctor_against_a_stalled_port()
    assert code == 1
    lines = out.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(address))
    assert "DIALLING" in lines[i] and "connected, waiting for the handshake for 1." in lines[i], out
    assert "has not completed a peerlink handshake" in lines[i + 1]


async def test_exit_while_a_handshake_is_pending_prints_no_traceback() -> None:
    """Today's bug: closing the node cancelled the dial awaiting ``link.opened``, and
    ``Membership.link_closed`` then raised CancelledError from ``opened.exception()``."""
    _, code, _, err = await doctor_against_a_stalled_port()
    assert code == 1
    assert "Traceback" not in err and "CancelledError" not in err, err
