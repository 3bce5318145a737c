"""Hostile clients for the attack suite (``tests/hostile``) and ``bench/hostile.py``.

Everything here talks to a real node over real sockets. The attacker packs its own
bytes with ``msgpack`` (not with peerlink's encoder, which refuses much of what an
attacker sends) and drives peerlink's sans-I/O ``Handshake`` only when it plays a
legitimate dialler that knows the cookie (an authenticated peer turning hostile).

* ``Budget``: the resource contract of issue 11 (``docs/security.md``) as numbers.
* bombs: msgpack bodies built with byte operations (fast, no Python objects):
  ``empty_arrays``, ``empty_maps``, ``string_key_map``, ``array_keyed_maps``,
  ``nested_arrays``, wrapped in a SEND by ``send_around``.
* ``Client``: one connection to the target (optionally from a chosen 127.0.0.x source
  address); raw writes, reads of the target's frames, ``authenticate`` with the cookie,
  ``barrier`` (a CALL whose reply proves the target handled everything before it),
  ``wait_closed`` (the target hung up).
* ``flood``: many connections at once, each sending a prefix (e.g. a HELLO) and stalling.
* ``FakePeer``: listens where the target dials (a discovered address) and answers each
  dial's HELLO with what the test scripts.
* ``Observer``: the target process from outside: peak RSS since a mark
  (``/proc/PID/clear_refs``), open descriptors, what it wrote to stderr since a mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from peerlink import protocol as p

from .nodeproc import scaled

__all__ = [
    "BUDGET",
    "KIB",
    "MIB",
    "Budget",
    "Client",
    "FakePeer",
    "Observer",
    "array_keyed_maps",
    "count_closed",
    "empty_arrays",
    "empty_maps",
    "flood",
    "frame",
    "hello",
    "longest_run",
    "nested_arrays",
    "packb",
    "raw_frame",
    "send_around",
    "source_address",
    "string_key_map",
]

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Budget:
    """What a hostile party may cost a node: the contract of issue 11 (hostile-spec,
    docs/security.md). The RSS bounds are the documented per-connection costs plus
    slack for the allocator and the interpreter (a few MiB of noise per test)."""

    preauth_max_frame: int = 16 * KIB
    max_unauthenticated: int = 64
    max_unauthenticated_per_host: int = 8
    max_frame: int = 8 * MIB
    inbox_bytes: int = 256 * KIB
    write_buffer_high: int = 4 * MIB
    max_message_items: int = 262_144
    logged_string_max: int = 100
    # before authentication: max_unauthenticated x (16 KiB frame + small state) is
    # about 2-4 MiB; 16 MiB leaves room for interpreter noise, none for a decode bomb
    # (issue 11 measured +263 to +660 MB)
    preauth_rss: int = 16 * MIB
    # after authentication, per hostile link: decoder buffer <= max_frame, one decoded
    # frame of <= max_message_items values (~56 B each: ~14 MiB), inbox <= inbox_bytes
    # (+ one message), write buffer <= write_buffer_high (+ one message): ~35 MiB,
    # 64 MiB with slack (issue 11 measured +150 to +660 MB)
    postauth_rss: int = 64 * MIB
    # what an attack may add to the target's log (it runs at INFO in the tests):
    # refusals are logged once per (host, reason) per minute, strings truncated
    log_bytes: int = 32 * KIB


BUDGET = Budget()


def source_address(n: int) -> str:
    """A distinct loopback source address (127.0.0.0/8 is all local on Linux) for the
    n-th attacking host, so per-host caps and per-host log limits can be tested."""
    if not 0 <= n < 250 * 250:
        raise ValueError(f"source host index out of range: {n}")
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


# -- wire --------------------------------------------------------------------------------


def packb(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def raw_frame(body: bytes, announce: int | None = None) -> bytes:
    """A 4-byte length (``announce``, default the body's length) and ``body``."""
    size = len(body) if announce is None else announce
    return size.to_bytes(4, "big") + body


def frame(*messages: Any) -> bytes:
    """One frame holding ``messages``, packed as an attacker would (anything msgpack
    packs, e.g. tuples as map keys or ExtType values)."""
    return raw_frame(b"".join(packb(m) for m in messages))


def hello(nonce: bytes | None = None, versions: tuple[Any, Any] = (1, 1)) -> list[Any]:
    """A HELLO as a dialler sends it."""
    return [p.HELLO, "peerlink", versions[0], versions[1], nonce or secrets.token_bytes(16)]


# -- bombs (msgpack bodies; sizes in bytes of the body) -----------------------------------


def empty_arrays(size: int) -> bytes:
    """``size`` empty arrays back to back (each one a message of its own)."""
    return b"\x90" * size


def empty_maps(size: int) -> bytes:
    """``size`` empty maps back to back."""
    return b"\x80" * size


def string_key_map(size: int) -> bytes:
    """One map with as many distinct 3-character string keys (nil values) as fit in
    ``size`` bytes: ~1.7 M keys in 8 MiB."""
    n = min((size - 5) // 5, 128**3)
    chars = [bytes([c]) for c in range(128)]
    entries = (b"\xa3" + chars[i >> 14] + chars[(i >> 7) & 127] + chars[i & 127] + b"\xc0"
               for i in range(n))
    return b"\xdf" + n.to_bytes(4, "big") + b"".join(entries)


def array_keyed_maps(size: int) -> bytes:
    """Maps of one entry each, keyed by an array (``{[0]: nil}``), back to back."""
    return b"\x81\x91\x00\xc0" * (size // 4)


def nested_arrays(depth: int, leaf: bytes = b"\xc0") -> bytes:
    """``[[[...leaf...]]]`` nested ``depth`` deep."""
    return b"\x91" * depth + leaf


def send_around(topic: str, body: bytes) -> bytes:
    """A SEND message ``[6, topic, <body>]`` around an already packed body."""
    return b"\x93" + packb(p.SEND) + packb(topic) + body


# -- a connection to the target -------------------------------------------------------------


class Client:
    """One TCP connection to the target, as an attacker holds it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.peer: p.Identity | None = None  # the target, once authenticated
        self.identity: p.Identity | None = None  # who we claimed to be
        self._messages: deque[Any] = deque()
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=64 * MIB)
        self._calls = 0
        self._keepalive: asyncio.Task[None] | None = None
        self.sent = 0  # bytes the kernel accepted from us
        self.transcript: list[Any] = []  # the handshake messages we sent (for replays)

    @classmethod
    async def connect(cls, address: str, *, source: str | None = None, sndbuf: int | None = None,
                      rcvbuf: int | None = None, timeout: float = 5.0) -> Client:
        host, port = address.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            if sndbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source is not None:
                sock.bind((source, 0))
            sock.setblocking(False)
            async with asyncio.timeout(scaled(timeout)):
                await asyncio.get_running_loop().sock_connect(sock, (host.strip("[]"), int(port)))
                reader, writer = await asyncio.open_connection(sock=sock, limit=16 * MIB)
        except BaseException:
            sock.close()
            raise
        return cls(reader, writer)

    @property
    def local_host(self) -> str:
        return str(self.writer.get_extra_info("sockname")[0])

    # -- writing -------------------------------------------------------------------
    async def send(self, data: bytes) -> bool:
        """Write ``data`` and wait until the kernel took it; False if the target has
        closed the connection (a reset or a broken pipe is an answer, not an error)."""
        if self.writer.is_closing():
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        self.sent += len(data)
        return True

    async def send_messages(self, *messages: Any) -> bool:
        return await self.send(frame(*messages))

    async def push(self, chunks: Iterable[bytes], *, window: float) -> int:
        """Write ``chunks`` for at most ``window`` (scaled) seconds; returns how many
        bytes the kernel accepted. A target that stops reading pushes back: the writes
        stop completing (bounded), where one that buffers without limit takes all."""
        accepted = 0

        async def writer() -> None:
            nonlocal accepted
            for chunk in chunks:
                if not await self.send(chunk):
                    return
                accepted += len(chunk)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(writer(), scaled(window))
        return accepted

    # -- reading -------------------------------------------------------------------
    async def recv(self, timeout: float = 5.0) -> Any:
        """The next message from the target (frames unpacked leniently); None when the
        target closed the connection. Fails after ``timeout`` (scaled) seconds."""
        async with asyncio.timeout(scaled(timeout)):
            while not self._messages:
                try:
                    header = await self.reader.readexactly(4)
                    body = await self.reader.readexactly(int.from_bytes(header, "big"))
                except (asyncio.IncompleteReadError, ConnectionError, OSError):
                    return None
                self._unpacker.feed(body)
                self._messages.extend(self._unpacker)
            return self._messages.popleft()

    async def recv_kind(self, kind: int, timeout: float = 5.0) -> Any:
        """The next message of ``kind`` (skipping PINGs and the rest); None at close."""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            msg = await self.recv(max(0.0, deadline - time.monotonic()) / scaled(1.0))
            if msg is None or (isinstance(msg, list) and msg and msg[0] == kind):
                return msg

    async def wait_closed(self, timeout: float = 5.0) -> bool:
        """Read and drop everything until the target hangs up; True then, False if it
        is still open after ``timeout`` (scaled) seconds."""
        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:
                    try:
                        data = await self.reader.read(256 * KIB)
                    except (ConnectionError, OSError):
                        return True
                    if not data:
                        return True
        except TimeoutError:
            return False

    def at_eof(self) -> bool:
        return self.reader.at_eof()

    # -- as an authenticated peer ------------------------------------------------
    async def authenticate(self, *, cluster: str, cookie: bytes, name: str = "mallory",
                           metadata: dict[str, Any] | None = None, keepalive: float | None = None,
                           versions: tuple[int, int] = (p.PROTOCOL_VERSION_MIN, p.PROTOCOL_VERSION_MAX),
                           timeout: float = 5.0) -> p.Identity:
        """Complete the handshake as a dialler that knows the cookie; returns the
        target's identity. With ``keepalive`` (seconds) a PING goes out that often, so
        the target does not time out a link that is quiet between attacks."""
        host = self.local_host
        self.identity = p.Identity(cluster, name, secrets.token_hex(8), host, 9, metadata or {})
        hs = p.Handshake(p.Side.DIALER, identity=self.identity, cookies=[cookie], versions=versions)
        out = hs.take_outgoing()
        while True:
            self.transcript += out
            if out:
                await self.send_messages(*out)
            if hs.done:
                break
            msg = await self.recv(timeout)
            if msg is None:
                raise ConnectionError("the target closed the connection during the handshake")
            hs.receive(msg)  # a refusal raises its HandshakeError here
            out = hs.take_outgoing()
        self.peer = hs.peer
        assert self.peer is not None
        if keepalive:
            self._keepalive = asyncio.get_running_loop().create_task(self._ping(keepalive))
        return self.peer

    async def _ping(self, every: float) -> None:
        while not self.writer.is_closing():
            await asyncio.sleep(every)
            self.writer.write(frame([p.PING]))

    async def barrier(self, timeout: float = 20.0) -> Any:
        """Send a CALL and wait for its REPLY: the target handles a link's messages in
        order, so the reply proves it dealt with everything sent before. Returns the
        REPLY (``peerlink node`` answers LookupError: it has no handlers), or None if
        the target closed the link instead."""
        self._calls += 1
        call_id = 10**9 + self._calls
        if not await self.send_messages([p.CALL, call_id, "hostile.barrier", None]):
            return None
        deadline = time.monotonic() + scaled(timeout)
        while True:
            msg = await self.recv_kind(p.REPLY, max(0.0, deadline - time.monotonic()) / scaled(1.0))
            if msg is None or msg[1] == call_id:
                return msg

    def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        self.writer.close()

    def abort(self) -> None:
        """Reset the connection (no FIN handshake, no TIME_WAIT)."""
        if self._keepalive is not None:
            self._keepalive.cancel()
        transport = self.writer.transport
        transport.abort()


async def flood(address: str, count: int, *, sources: Sequence[str], prefix: bytes = b"",
                concurrency: int = 64) -> list[Client]:
    """Open ``count`` connections (round-robin over ``sources``), each sending
    ``prefix`` and then stalling. Connections the target refuses or resets while we
    connect are left out of the result."""
    clients: list[Client] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            try:
                c = await Client.connect(address, source=sources[i % len(sources)])
            except (OSError, TimeoutError):
                return
            if prefix:
                await c.send(prefix)
            clients.append(c)

    await asyncio.gather(*(one(i) for i in range(count)))
    return clients


async def count_closed(clients: Sequence[Client], at_least: int, timeout: float) -> int:
    """Wait until at least ``at_least`` of ``clients`` have been closed by the target
    (or ``timeout`` scaled seconds pass); returns how many are closed."""
    closed = 0

    async def watch(c: Client) -> None:
        nonlocal closed
        if await c.wait_closed(timeout):
            closed += 1
            if closed >= at_least:
                done.set()

    done = asyncio.Event()
    tasks = [asyncio.ensure_future(watch(c)) for c in clients]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), scaled(timeout))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return closed


# -- a fake peer the target dials ------------------------------------------------------------

Answer = Callable[[list[Any], "FakePeer"], Awaitable[bytes | None]]


class FakePeer:
    """Listens at an address the target discovers and answers every dial: reads the
    HELLO, then writes what ``answer(hello, fake)`` returns (None: hang up) and hangs
    up after ``linger`` seconds. ``dials`` counts the connections, ``hellos`` keeps
    what the target sent."""

    def __init__(self, answer: Answer, *, linger: float = 0.2) -> None:
        self.answer = answer
        self.linger = linger
        self.dials = 0
        self.hellos: list[list[Any]] = []
        self.server: asyncio.Server | None = None
        self._changed = asyncio.Condition()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.server = await asyncio.start_server(self._on_dial, host.strip("[]"), int(port),
                                                 reuse_address=True)

    async def _on_dial(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        client = Client(reader, writer)
        try:
            msg = await client.recv(timeout=10.0)
            if isinstance(msg, list):
                self.hellos.append(msg)
                reply = await self.answer(msg, self)
                if reply:
                    await client.send(reply)
                    await asyncio.sleep(self.linger)  # let the target read it before we hang up
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            client.close()
            async with self._changed:
                self.dials += 1
                self._changed.notify_all()
            self._handlers.discard(task)

    async def wait_dials(self, n: int, timeout: float = 10.0) -> int:
        """Wait until the target has dialled (and been answered) ``n`` times; returns
        the count (less than ``n`` if ``timeout`` scaled seconds passed first)."""
        with contextlib.suppress(TimeoutError):
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.dials >= n), scaled(timeout))
        return self.dials

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in list(self._handlers):
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)
            self.server = None


# -- the target from outside ---------------------------------------------------------------

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|Exception in callback|"
                       r"Fatal error: protocol|Task exception was never retrieved")


class Observer:
    """Reads a target process from outside: memory (``/proc/PID/status``), open file
    descriptors, and the stderr it wrote since ``mark()``."""

    def __init__(self, pid: int, stderr_path: Path) -> None:
        self.pid = pid
        self.stderr_path = stderr_path
        self.rss_at_mark = 0
        self.stderr_at_mark = 0
        self.peak_reset = False

    def status(self, field: str) -> int:
        """A ``/proc/PID/status`` field in bytes (VmRSS, VmHWM...)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * KIB
        raise RuntimeError(f"no {field} in /proc/{self.pid}/status")

    def mark(self) -> None:
        """From now on: peak memory (VmHWM is reset to the current RSS where the kernel
        lets us) and stderr are measured from here."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            self.peak_reset = True
        except OSError:
            self.peak_reset = False
        self.rss_at_mark = self.status("VmRSS")
        self.stderr_at_mark = self.stderr_path.stat().st_size

    def peak_growth(self) -> int:
        """Bytes the peak RSS rose above the RSS at ``mark()`` (with no peak reset,
        the current RSS is all we can compare)."""
        peak = self.status("VmHWM") if self.peak_reset else self.status("VmRSS")
        return max(0, peak - self.rss_at_mark)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log_since_mark(self) -> str:
        with open(self.stderr_path, "rb") as f:
            f.seek(self.stderr_at_mark)
            return f.read().decode(errors="replace")

    def log_bytes_since_mark(self) -> int:
        return self.stderr_path.stat().st_size - self.stderr_at_mark

    def tracebacks(self, text: str | None = None) -> list[str]:
        """Lines of the whole stderr (or ``text``) that show an exception escaped."""
        if text is None:
            text = self.stderr_path.read_text(errors="replace")
        return [line for line in text.splitlines() if TRACEBACK.search(line)]


def longest_run(text: str, char: str) -> int:
    """Length of the longest run of ``char`` in ``text`` (how much of an attacker's
    filler string made it into a log)."""
    return max((len(m) for m in re.findall(re.escape(char) + "+", text)), default=0)
