"""Chat-room presence kept on every node of a service, with peerlink.

Each node of a chat service knows which users are logged in *on it*; every node keeps
the whole room's presence table (user -> node) by:

* broadcasting ``presence`` ``{"event": "join"|"leave", "user": ...}`` when one of its
  users logs in or out;
* re-sending its whole table to a peer when that peer joins (``@node.on_join`` ->
  ``await node.send(peer, "presence-sync", table)``), so a node that starts late, or
  comes back, learns who is there;
* dropping a node's users when that node leaves (``@node.on_leave``).

A node is the authority for its own users: from a ``presence-sync`` the receiver takes
the sender's own entries (and replaces whatever it had for the sender); the other
entries it learns from their own nodes, which it is linked to as well (full mesh).
Because a link is FIFO, a sync and the broadcasts around it arrive in the order they
were sent, so the newest word of each node wins.

Run the whole demo (three node processes on 127.0.0.1, static discovery, a temporary
cookie file)::

    python examples/chat_presence.py --processes 3

Each node logs a few users in and one out, some of it before its peers are even up;
the output shows users of one node appearing on the others, then every node prints
its final table (and a ``FINAL {json}`` line that ``tests/test_examples.py`` checks).
One node on its own (what the demo runs for you)::

    python examples/chat_presence.py --node --name node-0 --listen 127.0.0.1:4370 \\
        --peer 127.0.0.1:4371 --peer 127.0.0.1:4372 --cookie-file cookie --expect 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import sys
import tempfile
from typing import Any

import peerlink
from peerlink.config import read_cookie_file

SCRIPT = os.path.abspath(__file__)
USERS = ["ana", "bo", "cy", "dee", "eli", "fay", "gus", "hal", "ivy", "jo", "kai", "lu"]


def say(name: str, text: str) -> None:
    print(f"[{name}] {text}", flush=True)


class Presence:
    """The room's table (user -> node) as one node sees it."""

    def __init__(self, node: peerlink.Node) -> None:
        self.node = node
        self.table: dict[str, str] = {}
        self.changed = asyncio.Event()
        self.done: dict[str, list[str]] = {}  # peer -> its final users, once it said so
        self.complete: set[str] = set()  # peers whose table is complete
        me = node.name

        @node.handler("presence")
        def presence(msg: dict[str, Any], sender: peerlink.Peer) -> None:
            user = msg["user"]
            if msg["event"] == "join":
                self.table[user] = sender.name
                say(me, f"+ {user} (on {sender.name})")
            elif self.table.get(user) == sender.name:
                del self.table[user]
                say(me, f"- {user} (on {sender.name})")
            self._changed()

        @node.handler("presence-sync")
        def sync(table: dict[str, str], sender: peerlink.Peer) -> None:
            theirs = sorted(u for u, n in table.items() if n == sender.name)
            self._drop(sender.name)
            for user in theirs:
                self.table[user] = sender.name
            say(me, f"sync from {sender.name}: {', '.join(theirs) or 'nobody'}")
            self._changed()

        @node.handler("done")
        def done(users: list[str], sender: peerlink.Peer) -> None:
            self.done[sender.name] = sorted(users)
            self._changed()

        @node.handler("complete")
        def complete(_: None, sender: peerlink.Peer) -> None:
            self.complete.add(sender.name)
            self._changed()

        @node.on_join
        async def joined(peer: peerlink.Peer) -> None:
            say(me, f"{peer.name} joined; sending it our table ({len(self.table)} users)")
            try:
                await node.send(peer, "presence-sync", self.table)
            except peerlink.PeerUnavailable:
                pass  # it left again: it will get a fresh table when it is back

        @node.on_leave
        def left(peer: peerlink.Peer, reason: peerlink.LeaveReason) -> None:
            gone = self._drop(peer.name)
            say(me, f"{peer.name} left ({reason.value}); dropped {', '.join(gone) or 'nobody'}")
            self._changed()

    def _drop(self, owner: str) -> list[str]:
        gone = sorted(u for u, n in self.table.items() if n == owner)
        for user in gone:
            del self.table[user]
        return gone

    def _changed(self) -> None:
        self.changed.set()

    async def wait(self, cond: Any) -> None:
        while not cond():
            self.changed.clear()
            await self.changed.wait()

    async def login(self, user: str) -> None:
        self.table[user] = self.node.name
        say(self.node.name, f"* {user} logs in here")
        await self.node.broadcast("presence", {"event": "join", "user": user})

    async def logout(self, user: str) -> None:
        del self.table[user]
        say(self.node.name, f"* {user} logs out here")
        await self.node.broadcast("presence", {"event": "leave", "user": user})

    def mine(self) -> list[str]:
        return sorted(u for u, n in self.table.items() if n == self.node.name)


async def run_node(args: argparse.Namespace) -> int:
    cfg = peerlink.Config.local(
        cluster="chat",
        cookie=read_cookie_file(args.cookie_file),
        name=args.name,
        listen=args.listen,
        discovery=[peerlink.Static(args.peer)] if args.peer else [],
    )
    node = peerlink.Node(cfg)
    room = Presence(node)
    others = args.expect - 1
    index = int(args.name.rsplit("-", 1)[-1]) if args.name[-1].isdigit() else 0
    start = 3 * index % len(USERS)
    suffix = f"-{index}" if 3 * index >= len(USERS) else ""  # unique names past 4 nodes
    users = [u + suffix for u in USERS[start:start + 3]]
    try:
        async with node, asyncio.timeout(args.deadline):
            # users come and go from the start, before the peers are necessarily up:
            # whoever misses a broadcast gets the table when the link comes up
            for user in users:
                await room.login(user)
                await asyncio.sleep(0.05)
            await room.logout(users[0])
            await node.wait_for_peers(others)
            # tell everyone what we ended with; wait until our table agrees with what
            # every peer says it has (its syncs and broadcasts are ordered before this)
            await node.broadcast("done", room.mine())

            def agrees() -> bool:
                return len(room.done) >= others and all(
                    sorted(u for u, n in room.table.items() if n == peer) == final
                    for peer, final in room.done.items())

            await room.wait(agrees)
            say(node.name, "final table: " + ", ".join(
                f"{u}@{n}" for u, n in sorted(room.table.items())))
            print("FINAL " + json.dumps({"node": node.name, "mine": room.mine(),
                                         "logged_out": users[:1], "table": room.table},
                                        sort_keys=True), flush=True)
            # stay until every node has its final table: once we leave, they drop our users
            await node.broadcast("complete", None)
            await room.wait(lambda: len(room.complete) >= others)
    except TimeoutError:
        say(args.name, f"gave up after {args.deadline:g} s; table: {room.table}")
        return 1
    return 0


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def run_demo(n: int, deadline: float, cookie: str) -> int:
    """Start ``n`` node processes of this script and relay their output."""
    addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
    procs = []
    for i, addr in enumerate(addrs):
        cmd = [sys.executable, SCRIPT, "--node", "--name", f"node-{i}", "--listen", addr,
               "--cookie-file", cookie, "--expect", str(n), "--deadline", str(deadline)]
        for other in addrs:
            if other != addr:
                cmd += ["--peer", other]
        procs.append(await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE))

    async def relay(proc: asyncio.subprocess.Process) -> int:
        assert proc.stdout is not None
        async for line in proc.stdout:
            sys.stdout.write(line.decode())
            sys.stdout.flush()
        return await proc.wait()

    codes = await asyncio.gather(*(relay(p) for p in procs))
    if any(codes):
        print(f"node exit codes: {codes}", flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=3, help="nodes to start (demo mode)")
    parser.add_argument("--deadline", type=float, default=20.0, help="seconds before a node gives up")
    parser.add_argument("--node", action="store_true", help="run one node (used by the demo)")
    parser.add_argument("--name", default="node-0")
    parser.add_argument("--listen", default="127.0.0.1:4370")
    parser.add_argument("--peer", action="append", default=[], help="host:port of another node")
    parser.add_argument("--cookie-file", help="the shared secret (a file, like a Kubernetes Secret)")
    parser.add_argument("--expect", type=int, default=3, help="nodes in the room, this one included")
    args = parser.parse_args(argv)
    if args.node:
        if not args.cookie_file:
            parser.error("--node needs --cookie-file")
        return asyncio.run(run_node(args))
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    with tempfile.TemporaryDirectory(prefix="chat-presence-") as tmp:
        cookie = os.path.join(tmp, "cookie")  # like a Kubernetes Secret volume
        with open(os.open(cookie, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="utf-8") as f:
            f.write(secrets.token_hex(16) + "\n")
        return asyncio.run(run_demo(args.processes, args.deadline, cookie))


if __name__ == "__main__":
    sys.exit(main())
