"""Call latency, 2c (issue 14): the work one round trip does, counted rather than timed.

Client and server run on one event loop in one process, over a real loopback TCP
connection, one call in flight, 100 B, an echo handler (as in ``latency``). Per round
trip, both sides together: the Python function calls and bytecodes executed (counted
with ``sys.settrace`` over ``TRACED`` calls - the same on every run of the same code,
whatever the machine's noise), and the untraced time (the minimum over ``rounds`` runs
of ``CALLS`` calls each: no cross-process wake-ups in it). Series: the raw Protocol echo
of ``latency`` and peerlink's call with a sync and an async handler. Each series runs
in a fresh interpreter (``python -m bench.workcount SERIES``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

SIZE = 100
TRACED = 1_000
CALLS = 10_000
SERIES = {"protocol": "raw Protocol echo", "peerlink": "peerlink call",
          "peerlink-async": "peerlink call, async handler"}


async def _raw_call() -> Callable[[bytes], Awaitable[Any]]:
    import msgpack

    loop = asyncio.get_running_loop()
    calls: dict[int, asyncio.Future[Any]] = {}

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.unpacker = msgpack.Unpacker()

        def data_received(self, data: bytes) -> None:
            self.unpacker.feed(data)
            for msg in self.unpacker:
                self.transport.write(msgpack.packb((8, msg[1], True, msg[3])))

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.unpacker = msgpack.Unpacker()

        def data_received(self, data: bytes) -> None:
            self.unpacker.feed(data)
            for msg in self.unpacker:
                fut = calls.pop(msg[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg[3])

    server = await loop.create_server(Echo, "127.0.0.1", 0)
    transport, _ = await loop.create_connection(Client, "127.0.0.1", server.sockets[0].getsockname()[1])
    ids = iter(range(1, 1 << 62))

    async def call(body: bytes) -> Any:
        i = next(ids)
        fut = loop.create_future()
        calls[i] = fut
        transport.write(msgpack.packb((7, i, "echo", body)))
        return await fut

    return call


async def _peerlink_call(handler: str) -> Callable[[bytes], Awaitable[Any]]:
    from .worker import _node

    server = _node("server", [])

    def echo(msg: Any, sender: Any) -> Any:
        return msg

    async def echo_async(msg: Any, sender: Any) -> Any:
        return msg

    server.handler("echo")(echo_async if handler == "async" else echo)
    await server.start()
    client = _node("client", [f"127.0.0.1:{server.address[1]}"])
    await client.start()
    await client.wait_for_peers(1, timeout=20)

    def call(body: bytes) -> Awaitable[Any]:
        return client.call("server", "echo", body, timeout=10.0)

    return call


async def _measure(series: str, rounds: int) -> dict[str, Any]:
    call = await (_raw_call() if series == "protocol" else
                  _peerlink_call("async" if series == "peerlink-async" else "sync"))
    body = b"x" * SIZE
    for _ in range(2_000):  # warm-up: specialised bytecode, unpacker made, buffers sized
        await call(body)
    calls: Counter[str] = Counter()
    ops: Counter[str] = Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_name}"
        if event == "call":
            frame.f_trace_opcodes = True
            calls[where] += 1
        elif event == "opcode":
            ops[where] += 1
        return tracer

    sys.settrace(tracer)
    try:
        for _ in range(TRACED):
            await call(body)
    finally:
        sys.settrace(None)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(CALLS):
            await call(body)
        times.append((time.perf_counter() - t0) / CALLS * 1e6)
    return {"series": series, "label": SERIES[series],
            "python_calls": sum(calls.values()) / TRACED, "bytecodes": sum(ops.values()) / TRACED,
            "top_bytecodes": [[k, v / TRACED] for k, v in ops.most_common(12)],
            "us_per_round_trip_min": min(times), "us_per_round_trip": times}


def run(opts: Any) -> dict[str, Any]:
    from .common import Child, child_env, python_cmd

    results = []
    for series in SERIES:
        child = Child(python_cmd("bench.workcount", series, str(max(3, opts.rounds))),
                      env=child_env(opts.src), name=series)
        try:
            results.append(child.expect("bytecodes", 300))
        finally:
            child.proc.wait(30)
        opts.log(f"workcount {series:15} {results[-1]['python_calls']:6.1f} calls "
                 f"{results[-1]['bytecodes']:7.0f} bytecodes {results[-1]['us_per_round_trip_min']:6.1f} us")
    return {"benchmark": "workcount", "method": __doc__, "traced_calls": TRACED, "timed_calls": CALLS,
            "results": results}


def render(d: dict[str, Any]) -> str:
    from .common import table

    base = next((r for r in d["results"] if r["series"] == "protocol"), None)
    rows = []
    for r in d["results"]:
        rows.append([r["label"], f"{r['python_calls']:.1f}", f"{r['bytecodes']:.0f}",
                     f"{r['bytecodes'] / base['bytecodes']:.2f}x" if base else "-",
                     f"{r['us_per_round_trip_min']:.1f}"])
    return (f"Per round trip, client and server together on one loop; counts over {d['traced_calls']} traced "
            f"calls, time the minimum over rounds of {d['timed_calls']} untraced calls.\n\n"
            + table(["series", "Python calls", "bytecodes", "bytecodes vs raw", "us per round trip (min)"], rows))


def _main() -> None:
    series, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    result = asyncio.run(_measure(series, rounds))
    print(json.dumps(result), flush=True)
    os._exit(0)  # the nodes' sockets and tasks go with the process


if __name__ == "__main__":
    _main()
