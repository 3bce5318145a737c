"""A tiny peerlink app for Kubernetes (the image ``examples/Dockerfile`` builds).

Configured entirely from the environment (``PEERLINK_*`` and the downward API, see
``manifests/base/deployment.yaml``). Serves ``/healthz`` (alive) and ``/readyz``
(listening, so it may be published in the Service) on ``HEALTH_PORT`` (8080), logs
every join and leave, answers ``whoami`` calls, and on SIGTERM says goodbye to every
peer before exiting, so peers see ``leave(shutdown)`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import peerlink

log = logging.getLogger("k8s_app")


async def serve_health(node: peerlink.Node, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            path = request.split()[1].decode() if len(request.split()) > 1 else "/"
            ok = path == "/healthz" or (path == "/readyz" and node.address is not None)
            body = f"{'ok' if ok else 'not ready'} peers={len(node.peers)}\n".encode()
            status = b"200 OK" if ok else b"503 Service Unavailable"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n"
                         b"Connection: close\r\n\r\n" + body)
            await writer.drain()
        except (OSError, TimeoutError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "0.0.0.0", port)


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

    health = await serve_health(node, int(os.environ.get("HEALTH_PORT", "8080")))
    async with node:
        await stop.wait()
        log.info("SIGTERM: saying goodbye to %d peer(s)", len(node.peers))
    health.close()


if __name__ == "__main__":
    asyncio.run(main())
