"""A small web chat on peerlink's PubSub and Presence: one node process with an aiohttp
web server. Users in rooms, who is online per room (cluster-wide), messages across
nodes. No database, no broker: the nodes talk directly.

One node (``python examples/chat/run.py`` starts three)::

    python examples/chat/app.py --cluster chat --cookie-file cookie --name a \\
        --listen 127.0.0.1:4370 --discovery static://127.0.0.1:4370,127.0.0.1:4371 \\
        --http 127.0.0.1:8080

then open http://127.0.0.1:8080/?room=lobby&user=ana. Each browser tab is a websocket
whose handler task *tracks* the user in the room (``presence.track`` ties the entry to
that task: when the tab closes, or the node dies, the user disappears everywhere) and
subscribes to the room's messages and presence diffs. With ``--json`` the process
prints ``ready`` / ``join`` / ``leave`` lines like ``peerlink node --json``; ``ready``
carries the web address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

import peerlink
from peerlink.events import event_dict

PAGE = Path(__file__).resolve().parent / "index.html"
MAX_TEXT = 2000  # characters in one chat message


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Chat:
    def __init__(self, node: peerlink.Node) -> None:
        self.node = node
        self.pubsub = peerlink.PubSub(node)
        self.presence = peerlink.Presence(node)

    def online(self, room: str) -> dict[str, list[str]]:
        """user -> the nodes they are connected to."""
        return {user: sorted(m.node for m in metas)
                for user, metas in sorted(self.presence.list(room).items())}

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        room = request.query.get("room", "lobby")[:64] or "lobby"
        user = request.query.get("user", "guest")[:64] or "guest"
        ws = web.WebSocketResponse(heartbeat=10)
        await ws.prepare(request)
        messages = self.pubsub.subscribe(f"chat:{room}", maxsize=256)
        diffs = self.presence.subscribe(room)
        # the entry belongs to this handler's task: gone when the socket closes
        self.presence.track(room, user, {"since": asyncio.get_running_loop().time()})

        async def forward() -> None:
            await ws.send_json({"type": "presence", "online": self.online(room)})
            async for item in merge(messages, diffs):
                if isinstance(item, peerlink.Message):
                    await ws.send_json({"type": "message", **item.data, "via": item.publisher})
                elif isinstance(item, peerlink.MessagesLost):
                    await ws.send_json({"type": "lost", "count": item.dropped})
                else:
                    await ws.send_json({"type": "presence", "online": self.online(room)})

        sender = asyncio.create_task(forward())
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    text = str(json.loads(msg.data)["text"])[:MAX_TEXT]
                    await self.pubsub.publish(f"chat:{room}", {"user": user, "text": text})
        finally:
            sender.cancel()
            messages.close()
            diffs.close()
        return ws


async def merge(*feeds: Any) -> Any:
    """Items of several feeds as they come (a small fan-in)."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)

    async def pump(feed: Any) -> None:
        async for item in feed:
            await queue.put(item)

    tasks = [asyncio.create_task(pump(f)) for f in feeds]
    try:
        while True:
            yield await queue.get()
    finally:
        for t in tasks:
            t.cancel()


async def main(args: argparse.Namespace) -> int:
    env = {"PEERLINK_CLUSTER": args.cluster, "PEERLINK_COOKIE_FILE": args.cookie_file,
           "PEERLINK_LISTEN": args.listen, "PEERLINK_NAME": args.name,
           "PEERLINK_DISCOVERY": " ".join(args.discovery)}
    for option in ("tick", "timeout"):
        if getattr(args, option):
            env[f"PEERLINK_{option.upper()}"] = getattr(args, option)
    node = peerlink.Node.from_env(env)
    chat = Chat(node)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    events = node.events(current=False, maxsize=100_000)

    async def show_events() -> None:
        async for event in events:
            if args.json:
                emit(event_dict(event))

    app = web.Application()
    app.router.add_get("/", chat.page)
    app.router.add_get("/ws", chat.websocket)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    host, _, port = args.http.rpartition(":")
    site = web.TCPSite(runner, host, int(port))
    async with node, chat.pubsub, chat.presence:
        await site.start()
        ready = {"event": "ready", "name": node.name, "address": node.address_str,
                 "incarnation": node.incarnation, "http": f"http://{args.http}/"}
        emit(ready) if args.json else print(f"{node.name}: open http://{args.http}/?room=lobby&user=you",
                                            flush=True)
        printer = asyncio.create_task(show_events())
        await stop.wait()
        printer.cancel()
        await runner.cleanup()
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for option in ("--cluster", "--cookie-file", "--listen", "--name", "--tick", "--timeout"):
        parser.add_argument(option)
    parser.add_argument("--discovery", action="append", default=[])
    parser.add_argument("--http", default="127.0.0.1:8080", help="host:port of the web server")
    parser.add_argument("--json", action="store_true", help="print events as JSON lines")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
