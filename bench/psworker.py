"""One process of the pub/sub and presence benchmarks: ``python -m bench.psworker ROLE``.

Roles (each prints JSON lines on stdout and takes JSON commands on stdin):

- ``pl-node``: a ``peerlink.Node`` with ``PubSub`` and ``Presence``;
- ``redis``: the same pub/sub roles on Redis pub/sub (``redis.asyncio``).

Pub/sub: ``--subs K`` subscriptions to topic ``bench`` on this process. A message is
``[seq, t_ns, payload, want_ack]`` (``t_ns`` = ``time.monotonic_ns()`` at publish: CLOCK_MONOTONIC,
comparable across processes of one machine). Every subscription records the one-way
latency; the process's first subscription with ``--acker`` publishes ``seq`` on topic
``ack`` so the publisher sends the next (one message in flight).

Commands: ``{"cmd": "latency", "n": N, "size": B}`` and ``{"cmd": "tput", "n": N,
"size": B}`` (publisher), ``{"cmd": "report"}`` (subscribers: latencies and counts),
``{"cmd": "track", "n": N}`` (presence: track N keys), ``{"cmd": "expect", "count": C}``
(presence: say when the view holds exactly C entries), ``{"cmd": "rss"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

COOKIE = "peerlink-bench-cookie"


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Recorder:
    """What this process's subscriptions received."""

    def __init__(self) -> None:
        self.latencies_ns: list[int] = []
        self.count = 0
        self.last_ns = 0
        self.done = asyncio.Event()
        self.target = 0

    def got(self, t_ns: int) -> None:
        now = time.monotonic_ns()
        self.latencies_ns.append(now - t_ns)
        self.count += 1
        self.last_ns = now
        if self.target and self.count >= self.target:
            self.done.set()


async def recorder_command(rec: Recorder, kind: str, cmd: dict[str, Any], subs: int) -> None:
    """``arm`` (expect ``n`` messages at each of ``subs`` subscribers) and ``report``
    (wait for them, then send the latencies): the same for peerlink and Redis."""
    if kind == "arm":
        rec.__init__()  # type: ignore[misc]
        rec.target = cmd["n"] * subs
        emit(event="armed")
        return
    if rec.target:
        await asyncio.wait_for(rec.done.wait(), 120)
    emit(event="report", latencies_ns=rec.latencies_ns[:: max(1, len(rec.latencies_ns) // 20000)],
         count=rec.count, last_ns=rec.last_ns)


async def commands() -> Any:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield json.loads(line)


async def run_peerlink(a: argparse.Namespace) -> None:
    import peerlink

    cfg = peerlink.Config(cluster="bench", cookie=COOKIE, name=a.name, listen=a.listen,
                          discovery=[peerlink.Static(a.peers)] if a.peers else [],
                          tick=a.tick, timeout=a.timeout, reconnect_max=1.0)
    node = peerlink.Node(cfg)
    pubsub = peerlink.PubSub(node, queue_size=1_000_000)
    presence = peerlink.Presence(node)
    rec = Recorder()
    acks: asyncio.Queue[int] = asyncio.Queue()

    def on_bench(item: Any) -> None:
        if isinstance(item, peerlink.Message):
            rec.got(item.data[1])

    subs = [pubsub.subscribe("bench", on_bench) for _ in range(a.subs)]
    if a.acker and subs:
        async def ack(item: Any) -> None:
            if item.data[3]:  # latency runs only: one message in flight
                await pubsub.publish("ack", item.data[0])
        pubsub.subscribe("bench", ack)
    if a.publisher:
        pubsub.subscribe("ack", lambda item: acks.put_nowait(item.data))

    async with node, pubsub, presence:
        await node.wait_for_peers(a.expect - 1, timeout=60)
        emit(event="ready", name=a.name, rss_kib=rss_kib())
        async for cmd in commands():
            kind = cmd["cmd"]
            if kind == "interest":
                await pubsub.wait_for_interest("bench", cmd["nodes"], timeout=30)
                await pubsub.wait_for_interest("ack", cmd.get("ack", 0), timeout=30)
                emit(event="interest")
            elif kind == "latency":
                payload = b"x" * cmd["size"]
                for seq in range(cmd["n"]):
                    await pubsub.publish("bench", [seq, time.monotonic_ns(), payload, True])
                    while await acks.get() != seq:
                        pass
                emit(event="published")
            elif kind == "tput":
                payload = b"x" * cmd["size"]
                t0 = time.monotonic_ns()
                for seq in range(cmd["n"]):
                    await pubsub.publish("bench", [seq, time.monotonic_ns(), payload, False])
                emit(event="published", t0_ns=t0, t1_ns=time.monotonic_ns())
            elif kind in ("arm", "report"):
                await recorder_command(rec, kind, cmd, a.subs)
            elif kind == "track":
                for i in range(cmd["n"]):
                    presence.track("room", f"{a.name}-{i}", {"i": i}, owner=None)
                emit(event="tracked", t_ns=time.monotonic_ns())
            elif kind == "expect":
                count = cmd["count"]

                def total() -> int:
                    return sum(len(m) for m in presence.state.view.get("room", {}).values())

                try:
                    await presence.wait(lambda count=count: total() == count, timeout=cmd.get("timeout", 120))
                except TimeoutError:
                    emit(event="reached", t_ns=time.monotonic_ns(), count=count, timed_out=True,
                         held=total(), rss_kib=rss_kib())
                else:
                    emit(event="reached", t_ns=time.monotonic_ns(), count=count, rss_kib=rss_kib())
            elif kind == "rss":
                emit(event="rss", rss_kib=rss_kib())
            elif kind == "status":
                emit(event="status", presence=presence.status(), peers=sorted(node.peers),
                     pubsub=pubsub.status())


async def run_redis(a: argparse.Namespace) -> None:
    import redis.asyncio as redis

    host, port = a.redis.rsplit(":", 1)
    r = redis.Redis(host=host, port=int(port))
    rec = Recorder()
    acks: asyncio.Queue[int] = asyncio.Queue()
    # one connection per subscription, as each browser session of an app would hold
    pubsubs = []
    for _ in range(a.subs):
        ps = r.pubsub()
        await ps.subscribe("bench")
        pubsubs.append(ps)
    ack_ps = r.pubsub()
    if a.publisher:
        await ack_ps.subscribe("ack")

    async def listen(ps: Any, acker: bool) -> None:
        async for msg in ps.listen():
            if msg["type"] != "message":
                continue
            seq, t_ns, want_ack = msg["data"].split(b" ", 3)[:3]
            rec.got(int(t_ns))
            if acker and want_ack == b"1":
                await r.publish("ack", seq)

    async def listen_acks() -> None:
        async for msg in ack_ps.listen():
            if msg["type"] == "message":
                acks.put_nowait(int(msg["data"]))

    tasks = [asyncio.create_task(listen(ps, a.acker and i == 0)) for i, ps in enumerate(pubsubs)]
    if a.publisher:
        tasks.append(asyncio.create_task(listen_acks()))
    emit(event="ready", name=a.name)
    async for cmd in commands():
        kind = cmd["cmd"]
        if kind == "interest":
            emit(event="interest")
        elif kind == "latency":
            payload = b"x" * cmd["size"]
            for seq in range(cmd["n"]):
                await r.publish("bench", b"%d %d 1 %s" % (seq, time.monotonic_ns(), payload))
                while await acks.get() != seq:
                    pass
            emit(event="published")
        elif kind == "tput":
            payload = b"x" * cmd["size"]
            t0 = time.monotonic_ns()
            pipe = r.pipeline(transaction=False)
            for seq in range(cmd["n"]):
                pipe.publish("bench", b"%d %d 0 %s" % (seq, time.monotonic_ns(), payload))
                if len(pipe) >= 256:
                    await pipe.execute()
            await pipe.execute()
            emit(event="published", t0_ns=t0, t1_ns=time.monotonic_ns())
        elif kind in ("arm", "report"):
            await recorder_command(rec, kind, cmd, a.subs)
    for t in tasks:
        t.cancel()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["pl-node", "redis"])
    ap.add_argument("--name", default="n")
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--peers", nargs="*", default=[])
    ap.add_argument("--expect", type=int, default=1, help="nodes in the cluster")
    ap.add_argument("--subs", type=int, default=0)
    ap.add_argument("--acker", action="store_true")
    ap.add_argument("--publisher", action="store_true")
    ap.add_argument("--tick", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=4.0)
    ap.add_argument("--redis", default="127.0.0.1:6379")
    a = ap.parse_args()
    if os.environ.get("PEERLINK_BENCH_LOG"):
        import logging
        logging.basicConfig(level=os.environ["PEERLINK_BENCH_LOG"].upper(),
                            filename=os.path.join(tempfile.gettempdir(), f"psworker-{a.name}.log"),
                            format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run_peerlink(a) if a.role == "pl-node" else run_redis(a))


if __name__ == "__main__":
    main()
