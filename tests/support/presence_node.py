"""A node program for the real-process presence tests: ``peerlink node``'s options and
JSON events (ready / join / leave), plus Presence. It tracks ``--track N`` keys
(``<name>-0`` ...) in topic ``room`` and prints every diff it sees and the view after it::

    {"event": "diff", "joins": [[key, node, ref], ...], "leaves": [[key, node, ref], ...]}
    {"event": "view", "entries": [[key, node, ref], ...]}        (sorted)

SIGTERM/SIGINT: goodbye to the peers, exit 0. Run as
``python tests/support/presence_node.py --cluster c --cookie-file f --listen h:p
--name a --discovery static://... --track 10 [--grace 5] --json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

import peerlink
from peerlink.events import event_dict


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def triples(side: dict[str, list[peerlink.PresenceMeta]]) -> list[list[str]]:
    return sorted([key, m.node, m.ref] for key, metas in side.items() for m in metas)


async def main(args: argparse.Namespace) -> int:
    env = {"PEERLINK_CLUSTER": args.cluster, "PEERLINK_COOKIE_FILE": args.cookie_file,
           "PEERLINK_LISTEN": args.listen, "PEERLINK_NAME": args.name,
           "PEERLINK_DISCOVERY": " ".join(args.discovery)}
    if args.tick:
        env["PEERLINK_TICK"] = args.tick
    if args.timeout:
        env["PEERLINK_TIMEOUT"] = args.timeout
    node = peerlink.Node.from_env(env)
    presence = peerlink.Presence(node, grace=args.grace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    events = node.events(current=False, maxsize=1_000_000)

    async def show_events() -> None:
        async for event in events:
            emit(event_dict(event))

    def on_diff(diff: peerlink.Diff) -> None:
        emit({"event": "diff", "joins": triples(diff.joins), "leaves": triples(diff.leaves)})
        emit({"event": "view", "entries": triples(presence.list("room"))})

    presence.subscribe("room", on_diff)
    async with node, presence:
        emit({"event": "ready", "name": node.name, "address": node.address_str,
              "incarnation": node.incarnation})
        printer = asyncio.create_task(show_events())
        for i in range(args.track):
            presence.track("room", f"{node.name}-{i}", {"i": i}, owner=None)
        await stop.wait()
        printer.cancel()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for option in ("--cluster", "--cookie-file", "--listen", "--name", "--tick", "--timeout"):
        parser.add_argument(option)
    parser.add_argument("--discovery", action="append", default=[])
    parser.add_argument("--track", type=int, default=0)
    parser.add_argument("--grace", type=float, default=0.0)
    parser.add_argument("--json", action="store_true")
    sys.exit(asyncio.run(main(parser.parse_args())))
