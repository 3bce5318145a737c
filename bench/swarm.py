"""Many peerlink nodes in one process, each dialling one hub: ``python -m bench.swarm
HUB_ADDR``. Reads ``add K`` lines on stdin, starts K more nodes, and prints
``{"event": "linked", "nodes": total}`` once every node is linked to the hub. Used to
measure the hub's memory per extra link without spawning a process per link."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any


async def main(hub: str) -> None:
    import peerlink

    loop = asyncio.get_running_loop()
    nodes: list[Any] = []
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := (await reader.readline()).decode().strip():
            if not line.startswith("add "):
                continue
            k = int(line.split()[1])
            fresh = []
            for _ in range(k):
                cfg = peerlink.Config.local(
                    cluster="mesh", cookie="peerlink-bench-mesh", name=f"swarm-{os.getpid()}-{len(nodes)}",
                    tick=1.0, timeout=30.0, discovery=[peerlink.Static([hub])],
                )
                node = peerlink.Node(cfg)
                await node.start()
                nodes.append(node)
                fresh.append(node)
            await asyncio.gather(*(n.wait_for_peers(1, timeout=60) for n in fresh))
            sys.stdout.write(json.dumps({"event": "linked", "nodes": len(nodes)}) + "\n")
            sys.stdout.flush()
    finally:
        await asyncio.gather(*(n.close() for n in nodes), return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
