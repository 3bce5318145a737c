"""A peerlink node for the core-cost benchmark: ``python -m bench.meshnode NAME PORT
ADDR,ADDR,... [--tick S] [--timeout S]``.

Prints JSON lines with ``time.monotonic()`` stamps taken inside the process (the
membership callbacks' view, which is what an application sees): ``ready`` once it
listens and discovery runs, ``join`` / ``leave`` per event, ``rss`` on request (a line
``rss`` on stdin, after a ``gc.collect()``), and exits gracefully (goodbye to every
peer) on SIGTERM or stdin EOF.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
import time
from typing import Any


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def main(a: argparse.Namespace) -> None:
    import peerlink

    t_import = time.monotonic()
    cfg = peerlink.Config.local(
        cluster="mesh", cookie="peerlink-bench-mesh", name=a.name, listen=f"127.0.0.1:{a.port}",
        tick=a.tick, timeout=a.timeout if a.timeout else 4 * a.tick,
        discovery=[peerlink.Static([x for x in a.peers.split(",") if x])] if a.peers else [],
    )
    node = peerlink.Node(cfg)

    @node.on_join
    def joined(peer: peerlink.Peer) -> None:
        emit(event="join", peer=peer.name, t=time.monotonic(), n=len(node.peers))

    @node.on_leave
    def left(peer: peerlink.Peer, reason: peerlink.LeaveReason) -> None:
        emit(event="leave", peer=peer.name, reason=reason.value, t=time.monotonic(), n=len(node.peers))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def on_stdin() -> None:
        line = sys.stdin.readline()
        if not line:
            loop.remove_reader(sys.stdin.fileno())
            stop.set()
        elif line.strip() == "rss":
            gc.collect()
            with open("/proc/self/status") as f:
                rss = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
            emit(event="rss", kib=rss, peers=len(node.peers), t=time.monotonic())

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    async with node:
        emit(event="ready", name=a.name, t=time.monotonic(), t_import=t_import, address=node.address_str)
        await stop.wait()
        emit(event="stopping", t=time.monotonic())


def cli() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("port", type=int)
    ap.add_argument("peers", nargs="?", default="")
    ap.add_argument("--tick", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=0.0)
    asyncio.run(main(ap.parse_args()))


if __name__ == "__main__":
    cli()
