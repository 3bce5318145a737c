"""A small application on ``peerlink.Node``: the healthy peers of the hostile suite
(``tests/hostile``) and of ``bench/hostile.py``, and the target where an attack needs
handlers (``peerlink node`` has none).

It takes the options of ``peerlink node`` that ``NodeFactory.args`` produces and prints
the same JSON events (``ready``, ``join``, ``leave``), so ``NodeProcess`` runs it
(``command=PEER_APP``). Besides:

* handlers: ``echo`` (sync, returns the message), ``slow`` (async, holds every
  message for ``--slow-seconds``, so its link's inbox fills up) and
  ``slow_concurrent`` (the same with ``concurrent=True``: a task per message);
* ``--call NAME``: once NAME has joined, ``--window`` callers each call NAME's
  ``--topic`` with a ``--payload``-byte message, ``--interval`` seconds apart, and every
  ``--report`` seconds one line says how it went::

    {"event": "progress", "answered": 812, "failed": 0, "rtt_max_ms": 3.1, "t": 1234.5}

  ``answered`` and ``failed`` are totals; ``rtt_max_ms`` is the slowest round trip
  since the last line; ``t`` is ``time.monotonic()`` (one clock for the machine). A
  call is answered when a reply or a ``RemoteError`` comes back (the callee's event
  loop handled it: ``peerlink node`` answers ``LookupError`` for its missing
  handler); ``CallTimeout`` and ``PeerUnavailable`` are failures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

import peerlink
from peerlink.events import event_dict

REPORT_EVERY = 0.1


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Caller:
    """Calls one peer in a loop and reports progress."""

    def __init__(self, node: peerlink.Node, a: argparse.Namespace) -> None:
        self.node = node
        self.a = a
        self.answered = 0
        self.failed = 0
        self.rtt_max = 0.0
        self.payload = b"x" * a.payload

    async def one_caller(self) -> None:
        a = self.a
        while True:
            t0 = time.monotonic()
            try:
                await self.node.call(a.call, a.topic, self.payload, timeout=a.call_timeout)
            except peerlink.RemoteError:
                self.answered += 1
            except (peerlink.CallTimeout, peerlink.PeerUnavailable) as exc:
                self.failed += 1
                emit({"event": "call_failed", "error": type(exc).__name__, "t": time.monotonic()})
                await asyncio.sleep(a.interval or 0.01)  # no busy loop while the link is down
                continue
            else:
                self.answered += 1
            self.rtt_max = max(self.rtt_max, time.monotonic() - t0)
            if a.interval:
                await asyncio.sleep(a.interval)

    async def report(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY)
            emit({"event": "progress", "answered": self.answered, "failed": self.failed,
                  "rtt_max_ms": round(self.rtt_max * 1000, 3), "t": time.monotonic()})
            self.rtt_max = 0.0

    async def run(self) -> None:
        while self.a.call not in self.node.peers:
            await asyncio.sleep(0.01)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.report())
            for _ in range(self.a.window):
                tg.create_task(self.one_caller())


async def amain(a: argparse.Namespace) -> int:
    env = {k: v for k, v in os.environ.items() if k.startswith(("PEERLINK_", "POD_"))}
    env.update({"PEERLINK_CLUSTER": a.cluster, "PEERLINK_COOKIE_FILE": a.cookie_file,
                "PEERLINK_LISTEN": a.listen, "PEERLINK_NAME": a.name,
                "PEERLINK_DISCOVERY": " ".join(a.discovery)})
    for option in ("tick", "timeout", "handshake_timeout", "reconnect_max", "max_frame"):
        if getattr(a, option) is not None:
            env["PEERLINK_" + option.upper()] = getattr(a, option)
    node = peerlink.Node.from_env(env)

    @node.handler("echo")
    def echo(message: Any, sender: peerlink.Peer) -> Any:
        return message

    @node.handler("slow")
    async def slow(message: Any, sender: peerlink.Peer) -> None:
        await asyncio.sleep(a.slow_seconds)

    @node.handler("slow_concurrent", concurrent=True)
    async def slow_concurrent(message: Any, sender: peerlink.Peer) -> None:
        await asyncio.sleep(a.slow_seconds)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    events = node.events(current=False, maxsize=1_000_000)
    await node.start()
    emit({"event": "ready", "name": node.name, "address": node.address_str,
          "incarnation": node.incarnation})

    async def pump() -> None:
        async for event in events:
            emit(event_dict(event))

    tasks = [loop.create_task(pump())]
    if a.call:
        tasks.append(loop.create_task(Caller(node, a).run()))
    await stop.wait()
    tasks[-1].cancel()
    await node.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for opt in ("--cluster", "--cookie-file", "--listen", "--name", "--tick", "--timeout",
                "--handshake-timeout", "--reconnect-max", "--max-frame"):
        ap.add_argument(opt)
    ap.add_argument("--discovery", action="append", default=[])
    ap.add_argument("--json", action="store_true", help="accepted for NodeProcess; output is always JSON")
    ap.add_argument("--log-level", default=os.environ.get("PEERLINK_LOG_LEVEL", "WARNING"))
    ap.add_argument("--call", help="name of the peer to call in a loop")
    ap.add_argument("--topic", default="echo")
    ap.add_argument("--payload", type=int, default=16, help="bytes per call message")
    ap.add_argument("--window", type=int, default=1, help="concurrent callers")
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between one caller's calls")
    ap.add_argument("--call-timeout", type=float, default=10.0)
    ap.add_argument("--slow-seconds", type=float, default=3600.0)
    a = ap.parse_args()
    import logging

    logging.basicConfig(level=a.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(amain(a)))


if __name__ == "__main__":
    main()
