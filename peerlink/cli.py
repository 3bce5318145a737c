"""The ``peerlink`` command: ``node`` (run a node, print events), ``demo`` (a local
cluster forms, loses a node, gets it back), ``doctor`` (why does or doesn't a link
form) and ``status`` (the live membership table of a running node, from its admin
endpoint). Every ``node`` option also reads its ``PEERLINK_*`` variable."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .config import Config, env_var
from .errors import ConfigError
from .events import event_dict
from .node import Node

__all__ = ["build_parser", "main"]

# options that override their PEERLINK_<OPTION> variable (see Config.from_env)
_ENV_OPTIONS = ("cluster", "cookie_file", "listen", "advertise", "name", "tick", "timeout",
                "handshake_timeout", "connect_timeout", "reconnect_max", "metadata", "max_frame",
                "admin_listen", "ready_min_peers", "ready_fraction")


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", help="cluster name [PEERLINK_CLUSTER]")
    parser.add_argument("--cookie-file", help="file holding the shared secret; comma-separated "
                        "files accept several for rotation [PEERLINK_COOKIE_FILE, or PEERLINK_COOKIE]")
    parser.add_argument("--listen", help="host:port to listen on [PEERLINK_LISTEN, default 0.0.0.0:4370]")
    parser.add_argument("--advertise", help="host:port peers dial [PEERLINK_ADVERTISE, default POD_IP]")
    parser.add_argument("--name", help="node name [PEERLINK_NAME, default POD_NAME or host name]")
    parser.add_argument("--discovery", action="append", metavar="URL",
                        help="static://h:p,h:p | dns://name:port | dnssrv://name | k8s://service | "
                        "mdns:// (repeatable) [PEERLINK_DISCOVERY, space-separated]")
    parser.add_argument("--metadata", help="JSON object shown to peers [PEERLINK_METADATA]")
    parser.add_argument("--tick", help="heartbeat interval, s [PEERLINK_TICK, default 1]")
    parser.add_argument("--timeout", help="silent link is dead after, s [PEERLINK_TIMEOUT, default 4 x tick]")
    parser.add_argument("--handshake-timeout", help="s [PEERLINK_HANDSHAKE_TIMEOUT, default 5]")
    parser.add_argument("--connect-timeout", help="s [PEERLINK_CONNECT_TIMEOUT, default 5]")
    parser.add_argument("--reconnect-max", help="cap on re-dial backoff, s [PEERLINK_RECONNECT_MAX]")
    parser.add_argument("--max-frame", help="bytes [PEERLINK_MAX_FRAME, default 8 MiB]")
    parser.add_argument("--admin-listen", metavar="HOST:PORT", help="serve /healthz /readyz /metrics "
                        "/status and a live page there [PEERLINK_ADMIN_LISTEN, default off]")
    parser.add_argument("--ready-min-peers", help="/readyz: peers that must be linked "
                        "[PEERLINK_READY_MIN_PEERS, default 0]")
    parser.add_argument("--ready-fraction", help="/readyz: fraction of discovered candidates that "
                        "must be linked [PEERLINK_READY_FRACTION, default 0]")
    parser.add_argument("--log-level", default=os.environ.get("PEERLINK_LOG_LEVEL", "WARNING"),
                        help="logging level on stderr [PEERLINK_LOG_LEVEL, default WARNING]")


def _config_from_args(args: argparse.Namespace) -> Config:
    env = dict(os.environ)
    for option in _ENV_OPTIONS:
        value = getattr(args, option, None)
        if value is not None:
            env[env_var(option)] = str(value)
    if getattr(args, "cookie_file", None):
        env.pop("PEERLINK_COOKIE", None)  # an explicit --cookie-file wins over the variable
    if getattr(args, "discovery", None):
        env["PEERLINK_DISCOVERY"] = " ".join(args.discovery)
    return Config.from_env(env)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _run_node(config: Config, as_json: bool) -> int:
    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    events = node.events(current=False, maxsize=1_000_000)
    await node.start()
    ready = {"event": "ready", "name": node.name, "address": node.address_str, "incarnation": node.incarnation}

    def show(obj: dict[str, Any]) -> None:
        if as_json:
            _emit(obj)
        elif obj["event"] == "ready":
            print(f"{obj['name']} ready on {obj['address']} (incarnation {obj['incarnation']})", flush=True)
        elif obj["event"] == "join":
            print(f"+ {obj['peer']} joined from {obj['address']} (incarnation {obj['incarnation']})", flush=True)
        else:
            print(f"- {obj['peer']} left: {obj['reason']}", flush=True)

    show(ready)

    async def pump() -> None:
        async for event in events:
            show(event_dict(event))

    printer = loop.create_task(pump())
    await stop.wait()
    await node.close()
    await asyncio.wait_for(printer, 1.0)
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = _config_from_args(args)
    except ConfigError as exc:
        print(f"peerlink: error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run_node(config, args.json))
    except ConfigError as exc:
        print(f"peerlink: error: {exc}", file=sys.stderr)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return asyncio.run(run_demo(args.nodes))


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        if not args.cookie_file and not os.environ.get("PEERLINK_COOKIE"):
            os.environ.setdefault("PEERLINK_COOKIE", "doctor-without-cookie")
        if not args.cluster and not os.environ.get("PEERLINK_CLUSTER"):
            args.cluster = "doctor"
        args.listen = args.listen or "127.0.0.1:0"
        args.name = args.name or f"doctor-{os.getpid()}"
        config = _config_from_args(args)
    except ConfigError as exc:
        print(f"peerlink: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run_doctor(config, wait=args.wait, as_json=args.json))


def cmd_status(args: argparse.Namespace) -> int:
    from .status import run_status

    return run_status(args.address, as_json=args.json, interval=args.interval, count=args.count)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peerlink", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    node = sub.add_parser("node", help="run a node until SIGINT/SIGTERM and print membership events")
    _node_options(node)
    node.add_argument("--json", action="store_true", help="one JSON object per line on stdout, nothing else")
    node.set_defaults(func=cmd_node)
    demo = sub.add_parser("demo", help="a local cluster forms, a node is killed and comes back")
    demo.add_argument("--nodes", type=int, default=5, help="number of node processes (default 5)")
    demo.set_defaults(func=cmd_demo)
    doctor = sub.add_parser("doctor", help="run the strategies once, dial every candidate, explain")
    _node_options(doctor)
    doctor.add_argument("--wait", type=float, default=3.0, help="seconds to let dials finish (default 3)")
    doctor.add_argument("--json", action="store_true", help="print the status as JSON")
    doctor.set_defaults(func=cmd_doctor)
    status = sub.add_parser("status", help="the live membership table of a running node (its admin endpoint)")
    status.add_argument("address", nargs="?", metavar="ADMIN_ADDR",
                        help="host:port of the node's admin endpoint [default: PEERLINK_ADMIN_LISTEN "
                        "with a wildcard host read as 127.0.0.1]")
    status.add_argument("--json", action="store_true", help="print the status once as JSON")
    status.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    status.add_argument("--count", type=int, default=0, help="stop after this many refreshes (default: until ^C)")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result

