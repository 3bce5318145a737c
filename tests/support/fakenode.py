"""A stand-in for ``peerlink node --json``, used only to self-test the harness.

    PEERLINK_TEST_NODE_COMMAND="python tests/support/fakenode.py" pytest tests/integration

Same options and JSON events as the real CLI, over a toy protocol (JSON lines, the
cookie sent in clear). To avoid simultaneous dials it only dials candidates whose
address sorts above its own, so every node must list every other (the tests do).
Not a reference implementation of anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import sys
from typing import Any


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


class Link:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 hello: dict[str, Any]) -> None:
        self.reader, self.writer, self.hello = reader, writer, hello
        self.name: str = hello["name"]
        self.inc: str = hello["inc"]
        self.addr: str = hello["addr"]


class Node:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        with open(a.cookie_file) as f:
            self.cookie = f.read().removesuffix("\n")
        self.inc = secrets.token_hex(8)
        self.addr = a.advertise or a.listen
        self.links: dict[str, Link] = {}
        self.dialing: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.candidates = [c for url in a.discovery for c in url.removeprefix("static://").split(",") if c]

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def hello(self) -> dict[str, Any]:
        return {"cluster": self.a.cluster, "cookie": self.cookie, "name": self.a.name,
                "inc": self.inc, "addr": self.addr}

    def valid(self, h: dict[str, Any]) -> bool:
        return (h.get("cluster") == self.a.cluster and h.get("cookie") == self.cookie
                and h.get("name") != self.a.name)

    async def run_link(self, link: Link) -> None:
        old = self.links.get(link.name)
        if old is not None:
            if old.inc == link.inc:
                link.writer.close()
                return
            emit(event="leave", peer=old.name, incarnation=old.inc, reason="restarted")
            del self.links[old.name]
            old.writer.close()
        self.links[link.name] = link
        emit(event="join", peer=link.name, address=link.addr, incarnation=link.inc, metadata={})
        beat = asyncio.create_task(self.heartbeat(link))
        reason = "connection_lost"
        try:
            while True:
                try:
                    line = await asyncio.wait_for(link.reader.readline(), self.a.timeout)
                except TimeoutError:
                    reason = "timeout"
                    break
                except OSError:
                    break
                if not line:
                    break
                if json.loads(line).get("t") == "bye":
                    reason = "shutdown"
                    break
        finally:
            beat.cancel()
            link.writer.close()
            if self.links.get(link.name) is link:
                del self.links[link.name]
                emit(event="leave", peer=link.name, incarnation=link.inc, reason=reason)

    async def heartbeat(self, link: Link) -> None:
        with contextlib.suppress(OSError):
            while True:
                link.writer.write(b'{"t":"ping"}\n')
                await link.writer.drain()
                await asyncio.sleep(self.a.tick)

    async def on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            h = json.loads(await asyncio.wait_for(reader.readline(), 2))
        except (ValueError, TimeoutError, OSError):
            writer.close()
            return
        if not self.valid(h):
            writer.close()
            return
        writer.write((json.dumps(self.hello()) + "\n").encode())
        await self.run_link(Link(reader, writer, h))

    async def dial(self, addr: str) -> None:
        host, port = addr.rsplit(":", 1)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 2)
            writer.write((json.dumps(self.hello()) + "\n").encode())
            h = json.loads(await asyncio.wait_for(reader.readline(), 2))
        except (ValueError, TimeoutError, OSError):
            return
        finally:
            self.dialing.discard(addr)
        if self.valid(h):
            self.spawn(self.run_link(Link(reader, writer, h)))
        else:
            writer.close()

    async def dialer(self) -> None:
        while True:
            linked = {link.addr for link in self.links.values()}
            for c in self.candidates:
                if c > self.addr and c not in linked and c not in self.dialing:
                    self.dialing.add(c)
                    self.spawn(self.dial(c))
            await asyncio.sleep(self.a.tick)

    async def main(self) -> None:
        host, port = self.a.listen.rsplit(":", 1)
        server = await asyncio.start_server(self.on_accept, host.strip("[]"), int(port))
        emit(event="ready", name=self.a.name, address=self.addr, incarnation=self.inc)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        dialer = asyncio.create_task(self.dialer())
        await stop.wait()
        dialer.cancel()
        server.close()
        for link in list(self.links.values()):
            with contextlib.suppress(OSError):
                link.writer.write(b'{"t":"bye"}\n')
                await link.writer.drain()
                link.writer.close()


def main() -> None:
    p = argparse.ArgumentParser()
    for opt in ("--cluster", "--cookie-file", "--listen", "--advertise", "--name"):
        p.add_argument(opt)
    p.add_argument("--discovery", action="append", default=[])
    p.add_argument("--tick", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=4.0)
    p.add_argument("--json", action="store_true")
    asyncio.run(Node(p.parse_args()).main())
    sys.exit(0)


if __name__ == "__main__":
    main()
