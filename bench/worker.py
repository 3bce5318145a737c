"""One side of a two-process benchmark, run as ``python -m bench.worker ROLE ...``.

Roles: ``tput-recv`` / ``tput-send`` (one-way throughput) and ``lat-server`` /
``lat-client`` (request/reply latency). Implementations (``--impl``):

- ``peerlink``: two ``peerlink.Node`` s linked by ``Static`` discovery;
- ``streams``: raw asyncio streams, one ``write`` per 4-byte length + msgpack frame
  (``await drain()`` after each), ``readexactly`` framing on the receiver;
- ``protocol``: raw ``asyncio.Protocol``; throughput coalesces writes into 256 KiB
  chunks, latency writes once per message; ``msgpack.Unpacker`` streaming.

Every implementation carries the same msgpack message ``[6, "t", payload]`` (peerlink's
SEND layout) or ``[7, id, "echo", payload]`` / ``[8, id, true, payload]`` for calls,
and hands ``payload`` to a handler function that counts it. Output: JSON lines on stdout.
Times are ``time.monotonic()`` (CLOCK_MONOTONIC, comparable across processes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

COOKIE = "peerlink-bench-cookie"
CLUSTER = "bench"
BATCH = 256 * 1024


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def pin(cpu: int | None) -> None:
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[cpu % len(cpus)]})


def _node(name: str, discovery: list[str]) -> Any:
    import peerlink

    cfg = peerlink.Config.local(
        cluster=CLUSTER, cookie=COOKIE, name=name, tick=1.0, timeout=60.0,
        handshake_timeout=10.0, discovery=[peerlink.Static(discovery)] if discovery else [],
    )
    return peerlink.Node(cfg)


async def _wait_gone(node: Any, peer: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while peer in node.peers and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


# -- throughput ------------------------------------------------------------------------


class _Counter:
    def __init__(self, n: int, done: asyncio.Future[float]) -> None:
        self.n = n
        self.count = 0
        self.done = done

    def sync(self, msg: Any, sender: Any) -> None:
        self.count += 1
        if self.count == self.n:
            self.done.set_result(time.monotonic())

    async def async_(self, msg: Any, sender: Any) -> None:
        self.count += 1
        if self.count == self.n:
            self.done.set_result(time.monotonic())


async def tput_recv(a: argparse.Namespace) -> None:
    import msgpack

    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    counter = _Counter(a.n, done)
    if a.impl == "peerlink":
        node = _node("recv", [])
        node.handler("t")(counter.sync if a.handler == "sync" else counter.async_)
        async with node:
            emit(port=node.address[1], address=node.address_str, cpu=time.process_time())
            t1 = await done
            emit(t1=t1, count=counter.count, cpu=time.process_time())
        return
    on_t = counter.sync
    if a.impl == "streams":
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            readexactly = reader.readexactly
            unpackb = msgpack.unpackb
            try:
                while not done.done():
                    hdr = await readexactly(4)
                    msg = unpackb(await readexactly(int.from_bytes(hdr, "big")))
                    on_t(msg[2], None)
            except asyncio.IncompleteReadError:
                pass
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
    else:
        class Recv(asyncio.Protocol):
            def __init__(self) -> None:
                self.unpacker = msgpack.Unpacker()

            def data_received(self, data: bytes) -> None:
                up = self.unpacker
                up.feed(data)
                for msg in up:
                    on_t(msg[2], None)

        server = await loop.create_server(Recv, "127.0.0.1", 0)
    emit(port=server.sockets[0].getsockname()[1], cpu=time.process_time())
    t1 = await done
    emit(t1=t1, count=counter.count, cpu=time.process_time())
    server.close()


class _Sender(asyncio.Protocol):
    def __init__(self) -> None:
        self.paused = False
        self.resumed: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self.paused = True
        self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self.paused = False
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.resume_writing()


def make_payload(kind: str, size: int) -> Any:
    """``bytes`` of ``size``, or what a service sends: a dict of a few fields whose msgpack
    encoding is about ``size`` bytes."""
    if kind == "bytes":
        return b"x" * size
    return {"user": "ana", "room": "lobby", "seq": 123456, "ts": 1_732_000_000.25,
            "text": "y" * max(1, size - 60)}


async def tput_send(a: argparse.Namespace) -> None:
    import msgpack

    payload = make_payload(a.payload, a.size)
    n = a.n
    if a.impl == "peerlink":
        node = _node("send", [f"127.0.0.1:{a.port}"])
        async with node:
            await node.wait_for_peers(1, timeout=20)
            send_nowait, send = node.send_nowait, node.send
            t0 = time.monotonic()
            emit(t0=t0, cpu=time.process_time())
            if a.mode == "nowait":
                for _ in range(n):
                    if not send_nowait("recv", "t", payload):
                        await send("recv", "t", payload)
            else:
                for _ in range(n):
                    await send("recv", "t", payload)
            emit(t_sent=time.monotonic(), cpu=time.process_time())
            await _wait_gone(node, "recv")
        return
    msg = (6, "t", payload)
    if a.impl == "streams":
        reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
        packb = msgpack.packb
        t0 = time.monotonic()
        emit(t0=t0, cpu=time.process_time())
        for _ in range(n):
            body = packb(msg)
            writer.write(len(body).to_bytes(4, "big") + body)
            await writer.drain()
        emit(t_sent=time.monotonic(), cpu=time.process_time())
        await reader.read()
        writer.close()
        return
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_Sender, "127.0.0.1", a.port)
    transport.set_write_buffer_limits(high=4 * 2**20)
    pack = msgpack.Packer().pack
    parts: list[bytes] = []
    size = 0
    t0 = time.monotonic()
    emit(t0=t0, cpu=time.process_time())
    for _ in range(n):
        b = pack(msg)
        parts.append(b)
        size += len(b)
        if size >= BATCH:
            transport.write(b"".join(parts))
            parts.clear()
            size = 0
            if proto.paused and proto.resumed is not None:
                await proto.resumed
    transport.write(b"".join(parts))
    emit(t_sent=time.monotonic(), cpu=time.process_time())
    await proto.lost


# -- latency ---------------------------------------------------------------------------


async def lat_server(a: argparse.Namespace) -> None:
    import msgpack

    loop = asyncio.get_running_loop()
    forever: asyncio.Future[None] = loop.create_future()
    if a.impl == "peerlink":
        node = _node("server", [])

        def echo(msg: Any, sender: Any) -> Any:
            return msg

        async def echo_async(msg: Any, sender: Any) -> Any:
            return msg

        node.handler("echo")(echo_async if a.handler == "async" else echo)
        async with node:
            emit(port=node.address[1], address=node.address_str)
            await _stdin_eof()
        return

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
            self.unpacker = msgpack.Unpacker()

        def data_received(self, data: bytes) -> None:
            up = self.unpacker
            up.feed(data)
            write = self.transport.write
            packb = msgpack.packb
            for msg in up:
                write(packb((8, msg[1], True, msg[3])))

    server = await loop.create_server(Echo, "127.0.0.1", 0)
    if a.timer:
        _periodic(loop, a.timer)
    emit(port=server.sockets[0].getsockname()[1])
    await _stdin_eof()
    server.close()
    del forever


def _periodic(loop: asyncio.AbstractEventLoop, every: float) -> None:
    """A timer pending at all times, as in any real service (a heartbeat, a timeout):
    the raw baseline's loop then waits in ``epoll_wait`` with a timeout, as peerlink's does."""
    loop.call_later(every, _periodic, loop, every)


async def _stdin_eof() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def lat_client(a: argparse.Namespace) -> None:
    import msgpack

    payload = b"x" * a.size
    call: Callable[[bytes], Awaitable[Any]]
    node: Any = None
    if a.impl == "peerlink":
        node = _node("client", [f"127.0.0.1:{a.port}"])
        await node.start()
        await node.wait_for_peers(1, timeout=20)
        ncall = node.call

        def call(body: bytes) -> Awaitable[Any]:
            return cast(Awaitable[Any], ncall("server", "echo", body, timeout=10.0))
    else:
        loop = asyncio.get_running_loop()
        calls: dict[int, asyncio.Future[Any]] = {}

        class Client(asyncio.Protocol):
            def __init__(self) -> None:
                self.unpacker = msgpack.Unpacker()

            def data_received(self, data: bytes) -> None:
                up = self.unpacker
                up.feed(data)
                for msg in up:
                    fut = calls.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg[3])

        transport, _ = await loop.create_connection(Client, "127.0.0.1", a.port)
        if a.timer:
            _periodic(loop, a.timer)
        packb = msgpack.packb
        ids = iter(range(1, 1 << 62))
        create_future = loop.create_future

        async def call(body: bytes) -> Any:
            i = next(ids)
            fut = create_future()
            calls[i] = fut
            transport.write(packb((7, i, "echo", body)))
            return await fut

    lat: list[int] = []
    clock = time.perf_counter_ns

    async def worker(count: int, record: bool) -> None:
        for _ in range(count):
            t = clock()
            await call(payload)
            if record:
                lat.append(clock() - t)

    # a link that has just opened: its first calls, one at a time, before any warm-up
    cold: list[int] = []
    for _ in range(a.cold):
        t = clock()
        await call(payload)
        cold.append(clock() - t)
    cold.sort()
    k = a.inflight
    await asyncio.gather(*(worker(a.warmup // k + 1, False) for _ in range(k)))
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(a.n // k, True) for _ in range(k)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    lat.sort()
    m = len(lat)
    us = [x / 1000 for x in lat]
    emit(
        n=m, p50=us[m // 2], p90=us[int(m * 0.9)], p99=us[int(m * 0.99)], mean=sum(us) / m,
        max=us[-1], calls_per_s=m / elapsed, client_cpu_us_per_call=cpu * 1e6 / m,
        cdf=[us[min(m - 1, int(m * q / 100))] for q in range(101)],
        cold_p50=cold[len(cold) // 2] / 1000 if cold else None,
        cold_p99=cold[int(len(cold) * 0.99)] / 1000 if cold else None,
    )
    if node is not None:
        await node.close()


# -- the scale benchmark's raw baseline --------------------------------------------------


async def mesh_raw(a: argparse.Namespace) -> None:
    """A raw-asyncio stand-in for one node of ``bench/scale.py``'s mesh: it listens,
    connects once to every peer with a higher port (one connection per pair, so no
    handshake and no duplicate), and at every wall-clock multiple of ``tick`` (as
    peerlink pings) writes a 6-byte frame on each connection; what it reads it drops.
    What N-1 idle heartbeating links cost Python, asyncio and the kernel at least."""
    loop = asyncio.get_running_loop()
    ping = b"\x00\x00\x00\x02\x91\x04"  # peerlink's PING frame
    conns: set[asyncio.Transport] = set()
    want = len(a.peers)

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)
            conns.add(self.transport)
            if len(conns) == want:
                emit(event="linked", n=len(conns))

        def data_received(self, data: bytes) -> None:
            pass

        def connection_lost(self, exc: Exception | None) -> None:
            conns.discard(self.transport)

    server = await loop.create_server(Conn, "127.0.0.1", a.port, backlog=4096)

    async def dial(port: int) -> None:
        while True:
            try:
                await loop.create_connection(Conn, "127.0.0.1", port)
                return
            except OSError:
                await asyncio.sleep(0.05)

    dials = [loop.create_task(dial(port)) for port in a.peers if port > a.port]
    emit(event="ready", port=a.port)
    if want == 0:
        emit(event="linked", n=0)

    async def beat() -> None:
        while True:
            await asyncio.sleep(a.tick - time.time() % a.tick)
            for t in list(conns):
                t.write(ping)

    beating = loop.create_task(beat())
    await _stdin_eof()
    beating.cancel()
    for d in dials:
        d.cancel()
    server.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["tput-recv", "tput-send", "lat-server", "lat-client", "mesh-raw"])
    ap.add_argument("--impl", choices=["peerlink", "streams", "protocol"], default="protocol")
    ap.add_argument("--handler", choices=["sync", "async"], default="sync")
    ap.add_argument("--mode", choices=["nowait", "await"], default="nowait")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--payload", choices=["bytes", "dict"], default="bytes")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--inflight", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--cold", type=int, default=200, help="lat-client: timed calls before the warm-up")
    ap.add_argument("--cpu", type=int, default=None)
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("--peers", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                    help="mesh-raw: the ports of every node of the mesh")
    ap.add_argument("--tick", type=float, default=1.0, help="mesh-raw: seconds between pings")
    ap.add_argument("--timer", type=float, default=0.0,
                    help="lat-*, raw Protocol: keep a timer pending, firing every this many seconds")
    a = ap.parse_args()
    pin(a.cpu)
    fn = {"tput-recv": tput_recv, "tput-send": tput_send, "lat-server": lat_server,
          "lat-client": lat_client, "mesh-raw": mesh_raw}[a.role]
    if a.loop == "uvloop":
        import uvloop

        uvloop.run(fn(a))
    else:
        asyncio.run(fn(a))


if __name__ == "__main__":
    main()
