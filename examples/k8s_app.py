"""A tiny peerlink app for Kubernetes (the image ``examples/Dockerfile`` builds).

Configured entirely from the environment (``PEERLINK_*`` and the downward API, see
``manifests/base/deployment.yaml``). The probes and metrics are the library's own
admin endpoint (``PEERLINK_ADMIN_LISTEN=0.0.0.0:4371``: ``/healthz``, ``/readyz``,
``/metrics``, ``/status`` and a live page); the app logs every join and leave,
answers ``whoami`` calls, and on SIGTERM says goodbye to every peer before exiting, so
peers see ``leave(shutdown)`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import peerlink

log = logging.getLogger("k8s_app")


async def main() -> None:
    logging.basicConfig(level=os.environ.get("PEERLINK_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = peerlink.Node.from_env()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    @node.on_join
    async def joined(peer: peerlink.Peer) -> None:
        log.info("join %s at %s (%d peers)", peer.name, peer.address, len(node.peers))

    @node.on_leave
    async def left(peer: peerlink.Peer, reason: peerlink.LeaveReason) -> None:
        log.info("leave %s: %s (%d peers)", peer.name, reason.value, len(node.peers))

    @node.handler("whoami")
    async def whoami(message: object, sender: peerlink.Peer) -> dict[str, object]:
        return {"name": node.name, "peers": sorted(node.peers)}

    async with node:
        await stop.wait()
        log.info("SIGTERM: saying goodbye to %d peer(s)", len(node.peers))


if __name__ == "__main__":
    asyncio.run(main())
