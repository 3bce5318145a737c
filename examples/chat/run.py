"""Start the web chat as three node processes on 127.0.0.1 (``python examples/chat/run.py``;
``--nodes N``, ``--http-port P`` for the first web port). Open the printed addresses in
a few browser tabs with different ``user=`` values, kill one node, and watch its users
disappear from the other nodes' pages. Ctrl-C stops them all (each says goodbye)."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import tempfile

from peerlink.testing import free_ports

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")


async def run(n: int, http_port: int, cookie: str) -> int:
    links = [f"127.0.0.1:{p}" for p in free_ports(n)]
    procs = []
    for i, listen in enumerate(links):
        http = f"127.0.0.1:{http_port + i}"
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, APP, "--cluster", "chat", "--cookie-file", cookie, "--name", f"node-{i}",
            "--listen", listen, "--discovery", "static://" + ",".join(links), "--http", http))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    waiting = asyncio.ensure_future(asyncio.gather(*(p.wait() for p in procs)))
    await asyncio.wait([waiting, asyncio.ensure_future(stop.wait())], return_when="FIRST_COMPLETED")
    for p in procs:
        if p.returncode is None:
            p.terminate()
    await asyncio.gather(*(p.wait() for p in procs))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--http-port", type=int, default=8080)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="peerlink-chat-") as tmp:
        cookie = os.path.join(tmp, "cookie")  # like a Kubernetes Secret volume
        with open(os.open(cookie, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="utf-8") as f:
            f.write(secrets.token_hex(16) + "\n")
        return asyncio.run(run(args.nodes, args.http_port, cookie))


if __name__ == "__main__":
    sys.exit(main())
