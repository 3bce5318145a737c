"""Docs that cannot rot: every fenced code block in README.md and docs/*.md is run.

How each kind of block is run:

=============  ===============================================================================
``python``     A program (it calls ``asyncio.run``) runs as its own process and must exit 0;
               a fragment runs with top-level ``await`` beside a running node ``node``
               (cluster "chat", cookie "s3cret") linked to a peer ``b`` that answers the
               topics ``topic`` and ``echo``, with ``message`` defined.
``sh``         Each command: ``peerlink ...`` is parsed by the real argument parser, and
``console``    ``peerlink status`` runs against ``node``'s admin endpoint; ``curl`` runs
               against it too; ``make X`` runs as ``make -n X`` (the target exists and
               expands); ``kubectl kustomize DIR`` / ``kubectl apply -k DIR`` render DIR;
               ``docker build -f F`` needs F. In ``console`` blocks only ``$ `` lines are
               commands, the rest is output.
``json``       Parses (the whole block, or each line); ``peerlink node --json`` events have
               exactly the keys the CLI prints.
``text``       A file tree: every ``*.py`` and folder it names exists in ``peerlink/``.
=============  ===============================================================================

Addresses and paths a reader would have are replaced by the test's own: ``10.0.0.5:4370``
is the running node, other ``HOST:4370``/``HOST:4371`` addresses in programs get free
ports, ``127.0.0.1:4371`` in commands is the running node's admin endpoint,
``/etc/peerlink/cookie`` a temporary cookie file and ``/etc/peerlink/tls/`` a folder
with ``ca.crt``, ``tls.crt`` and ``tls.key`` from a test CA. A block in a language this file does
not know fails the test: teach it here.
"""

from __future__ import annotations

import ast
import asyncio
import re
import shlex
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import peerlink
from peerlink.cli import build_parser
from peerlink.events import PeerJoined, PeerLeft, event_dict
from peerlink.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
ADDRESS = re.compile(r"\b(?:\d{1,3}(?:\.\d{1,3}){3}|localhost):437[01]\b")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            out.append(Block(path, text.count("\n", 0, m.start()) + 1, m[1], m[2]))
    return out


BLOCKS = blocks()


def test_the_docs_have_code_blocks() -> None:
    assert {b.path.name for b in BLOCKS} >= {"README.md", "operations.md", "coming-from-libcluster.md"}


@dataclass
class Harness:
    node: peerlink.Node
    peer: peerlink.Node
    admin: str
    cookie_file: Path
    tls_dir: Path

    def paths(self, text: str) -> str:
        """The files a reader has under /etc/peerlink, as the test made them."""
        return (text.replace("/etc/peerlink/tls/", f"{self.tls_dir}/")
                .replace("/etc/peerlink/cookie", str(self.cookie_file)))


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    import trustme

    cookie_file = tmp_path / "cookie"
    cookie_file.write_text("s3cret\n")
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tls_dir / "ca.crt"))
    cert.private_key_pem.write_to_path(str(tls_dir / "tls.key"))
    for pem in cert.cert_chain_pems:
        pem.write_to_path(str(tls_dir / "tls.crt"), append=True)
    port, peer_port, admin = free_port(), free_port(), free_port()
    node = peerlink.Node(peerlink.Config.local(cluster="chat", cookie="s3cret", name="docs-node",
                                               listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}",
                                               discovery=[peerlink.Static([f"127.0.0.1:{peer_port}"])]))
    peer = peerlink.Node(peerlink.Config.local(cluster="chat", cookie="s3cret", name="b",
                                               listen=f"127.0.0.1:{peer_port}"))

    @peer.handler("topic")
    @peer.handler("echo")
    def echo(message: Any, sender: peerlink.Peer) -> Any:
        return message

    async with peer, node:
        await node.wait_for_peers(1, timeout=10)
        yield Harness(node, peer, f"127.0.0.1:{admin}", cookie_file, tls_dir)


def substitute_program(code: str, h: Harness) -> str:
    code = h.paths(code).replace("10.0.0.5:4370", h.node.address_str)
    ports: dict[str, str] = {}
    return ADDRESS.sub(lambda m: ports.setdefault(m[0], f"127.0.0.1:{free_port()}"), code)


def substitute_command(command: str, h: Harness) -> str:
    return h.paths(command.replace("127.0.0.1:4371", h.admin).replace("localhost:4371", h.admin))


async def run_python(block: Block, h: Harness) -> None:
    if "asyncio.run(" in block.code:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", substitute_program(block.code, h),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, f"{block} exited {proc.returncode}:\n{out.decode()}\n{err.decode()}"
        return
    code = compile(h.paths(block.code), str(block), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {"peerlink": peerlink, "asyncio": asyncio, "node": h.node,
                                 "message": {"hello": "world"}}
    result = eval(code, namespace)
    if asyncio.iscoroutine(result):
        await asyncio.wait_for(result, 30)


def commands(block: Block) -> list[str]:
    lines = block.code.splitlines()
    if block.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    joined, out = "", []
    for line in lines:
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        joined += line
        words = shlex.split(joined, comments=True)
        if words:
            out.append(joined)
        joined = ""
    return out


async def run_command(command: str, block: Block, h: Harness) -> None:
    argv = shlex.split(substitute_command(command, h), comments=True)
    program = Path(argv[0]).name
    if program == "make":
        await run_process(block, ["make", "-C", str(ROOT), "-n", *argv[1:]], "")
    elif program == "peerlink":
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as exc:
            raise AssertionError(f"{block}: {command}: the parser rejects it") from exc
        if argv[1] == "status":  # one frame of the live table is enough
            once = [] if "--json" in argv or "--count" in argv else ["--count", "1"]
            await run_process(block, [sys.executable, "-m", "peerlink", *argv[1:], *once], "docs-node")
    elif program == "curl":
        await run_process(block, argv, '"ready"')
    elif program == "kubectl" and argv[1:2] in (["kustomize"], ["apply"]):
        await run_process(block, ["kubectl", "kustomize", str(ROOT / argv[-1])], "kind:")
    elif program == "docker" and "-f" in argv:
        assert (ROOT / argv[argv.index("-f") + 1]).is_file(), f"{block}: {command}"
    else:
        raise AssertionError(f"{block}: tests/test_docs.py does not know how to run {command!r}")


async def run_process(block: Block, argv: list[str], expect: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and expect in out.decode(), f"{block}: {argv}:\n{out.decode()}\n{err.decode()}"


def check_json(block: Block) -> None:
    import json

    try:
        objects = [json.loads(block.code)]
    except ValueError:
        objects = [json.loads(line) for line in block.code.splitlines() if line.strip()]
    peer = peerlink.Peer("b", "41d2", ("10.0.0.5", 4370), {})
    keys = {"ready": {"event", "name", "address", "incarnation"},
            "join": set(event_dict(PeerJoined(peer))),
            "leave": set(event_dict(PeerLeft(peer, peerlink.LeaveReason.SHUTDOWN)))}
    for obj in objects:
        if isinstance(obj, dict) and "event" in obj:
            assert set(obj) == keys[obj["event"]], f"{block}: {obj}"


def check_tree(block: Block) -> None:
    package = ROOT / "peerlink"
    files = {p.name for p in package.rglob("*.py")} | {p.name + "/" for p in package.rglob("*") if p.is_dir()}
    named = []
    for line in block.code.splitlines():
        if len(line) - len(line.lstrip()) <= 2:  # an entry; deeper lines continue one
            named += [w for w in re.split(r"\s{2,}", line.strip())[0].split() if w.endswith((".py", "/"))]
    missing = [n for n in named if n not in files and n != "peerlink/"]
    assert len(named) > 5, f"{block}: no tree found"
    assert not missing, f"{block}: the tree names what peerlink/ does not have: {missing}"


@pytest.mark.parametrize("block", BLOCKS, ids=str)
async def test_code_block_runs(block: Block, harness: Harness) -> None:
    if block.lang == "python":
        await run_python(block, harness)
    elif block.lang in ("sh", "bash", "console"):
        for command in commands(block):
            await run_command(command, block, harness)
    elif block.lang == "json":
        check_json(block)
    elif block.lang == "text":
        check_tree(block)
    else:
        pytest.fail(f"{block}: a ```{block.lang or '(no language)'} block: give it a language "
                    "tests/test_docs.py knows (python, sh, console, json, text) or teach it")
