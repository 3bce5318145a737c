"""The `peerlink` command: start-up errors name the variable and exit 2; --json prints
only JSON lines; SIGTERM says goodbye and exits 0; the demo and doctor run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from peerlink.testing import free_port

PY = [sys.executable, "-m", "peerlink"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PEERLINK_")}
    full_env.update(env or {})
    return subprocess.run([*PY, *args], capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.mark.parametrize(("args", "env", "needle"), [
    (["node", "--cookie-file", "/nonexistent"], {"PEERLINK_CLUSTER": "c"}, "PEERLINK_COOKIE_FILE: cannot read '/nonexistent'"),
    (["node"], {"PEERLINK_COOKIE": "k"}, "PEERLINK_CLUSTER: not set"),
    (["node", "--cluster", "c", "--tick", "soon"], {"PEERLINK_COOKIE": "k"}, "PEERLINK_TICK='soon'"),
    (["node", "--cluster", "c", "--discovery", "dns:/x"], {"PEERLINK_COOKIE": "k"}, "PEERLINK_DISCOVERY"),
    (["node", "--cluster", "c"], {"PEERLINK_COOKIE": "k", "PEERLINK_LISTEN": "127.0.0.1:99999"}, "PEERLINK_LISTEN"),
])
def test_startup_errors_name_the_variable(args: list[str], env: dict[str, str], needle: str) -> None:
    out = run(*args, env=env)
    assert out.returncode == 2, out
    assert needle in out.stderr and out.stdout == ""


async def test_json_output_and_graceful_sigterm(tmp_path: Path) -> None:
    cookie = tmp_path / "cookie"
    cookie.write_text("k\n")
    pa, pb = free_port(), free_port()
    static = f"static://127.0.0.1:{pa},127.0.0.1:{pb}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERLINK_")}
    env["PEERLINK_LOG_LEVEL"] = "INFO"  # logs go to stderr, never stdout

    async def start(name: str, port: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *PY, "node", "--json", "--cluster", "c", "--cookie-file", str(cookie),
            "--listen", f"127.0.0.1:{port}", "--name", name, "--discovery", static,
            "--tick", "0.1", "--metadata", '{"v": 1}',
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)

    a, b = await start("a", pa), await start("b", pb)
    assert a.stdout is not None and b.stdout is not None
    try:
        async def events_until(proc_out: asyncio.StreamReader, kind: str) -> list[dict[str, object]]:
            got = []
            while True:
                line = await asyncio.wait_for(proc_out.readline(), 20)
                assert line, "stdout closed early"
                got.append(json.loads(line))  # every line is JSON
                if got[-1]["event"] == kind:
                    return got

        a_events = await events_until(a.stdout, "join")
        assert a_events[0] == {"event": "ready", "name": "a", "address": f"127.0.0.1:{pa}",
                               "incarnation": a_events[0]["incarnation"]}
        assert a_events[1]["peer"] == "b" and a_events[1]["metadata"] == {"v": 1}
        assert a_events[1]["address"] == f"127.0.0.1:{pb}"
        await events_until(b.stdout, "join")
        b.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(b.wait(), 20) == 0
        leave = await events_until(a.stdout, "leave")
        assert leave[-1]["peer"] == "b" and leave[-1]["reason"] == "shutdown"
        rest = (await asyncio.wait_for(b.stdout.read(), 5)).decode()
        assert all(json.loads(x) for x in rest.splitlines())
    finally:
        for proc in (a, b):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_demo_runs_to_the_end() -> None:
    out = run("demo", "--nodes", "3", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "kill -9" in out.stdout and "every peer saw leave (connection_lost)" in out.stdout
    assert "restart -> mesh again" in out.stdout and "exit codes [0]" in out.stdout


def test_doctor_explains_refused_and_wrong_cookie(tmp_path: Path) -> None:
    dead = free_port()
    out = run("doctor", "--cluster", "c", "--discovery", f"static://127.0.0.1:{dead}", "--wait", "2",
              env={"PEERLINK_COOKIE": "k"})
    assert out.returncode == 1
    assert f"127.0.0.1:{dead}" in out.stdout and "REFUSED" in out.stdout
