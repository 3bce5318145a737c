"""Delay every packet of NFQUEUE 1 by a fixed time (netem is not in this kernel).

Run inside a namespace whose nft rules send packets to ``queue num 1`` (see
``Lab.delay``): ``python nfq_delay.py SECONDS``. Prints ``ready`` once bound. When its
stdin closes (the rule is gone), it lets the packets still waiting leave after their
delay, then exits: none is dropped. A fixed delay keeps the packets in order.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

from netfilterqueue import NetfilterQueue


async def main(delay: float) -> None:
    loop = asyncio.get_running_loop()
    waiting = 0
    idle = asyncio.Event()

    def release(packet: Any) -> None:
        nonlocal waiting
        packet.accept()
        waiting -= 1
        if waiting == 0:
            idle.set()

    def handle(packet: Any) -> None:
        nonlocal waiting
        waiting += 1
        idle.clear()
        loop.call_later(delay, release, packet)  # a verdict may be given later

    nfq = NetfilterQueue()
    nfq.bind(1, handle)
    sock = socket.fromfd(nfq.get_fd(), socket.AF_UNIX, socket.SOCK_STREAM)
    loop.add_reader(sock, lambda: nfq.run(block=False))
    stdin_closed = asyncio.Event()

    def stdin_readable() -> None:
        if not sys.stdin.readline():
            loop.remove_reader(sys.stdin)
            stdin_closed.set()

    loop.add_reader(sys.stdin, stdin_readable)
    print("ready", flush=True)
    await stdin_closed.wait()
    if waiting:
        await idle.wait()
    loop.remove_reader(sock)
    nfq.unbind()


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1])))
