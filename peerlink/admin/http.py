"""The built-in admin HTTP listener (``admin_listen`` / ``PEERLINK_ADMIN_LISTEN``).

A small HTTP/1.1 server on asyncio streams that answers GET and HEAD with the admin
routes and closes each connection after one response. It may be reachable by anyone in
the pod network, so everything about a request is bounded: the request line and each
header line (8 KiB), the number of header lines (64), the time to send the request
(5 s) and to take the response (10 s), and the number of connections at once (64). At
that cap a new connection evicts the oldest one that has not finished sending its
request, so a flood of stalled connections cannot lock out a probe (which sends its
request at once). A request body is refused. Nothing a client sends is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

from ..discovery.base import format_hostport, parse_hostport
from ..errors import ConfigError
from .routes import COMMON_HEADERS, TEXT, Response, Routes

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["AdminServer"]

log = logging.getLogger("peerlink.admin")

MAX_LINE: Final = 8 * 1024
MAX_HEADERS: Final = 64
MAX_CONNECTIONS: Final = 64
READ_TIMEOUT: Final = 5.0
WRITE_TIMEOUT: Final = 10.0


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminServer:
    """Serves the admin routes of ``node``; ``await AdminServer.start(node, "host:port")``."""

    def __init__(self, node: Node) -> None:
        self.routes = Routes(node)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        # connections still sending their request, oldest first (evicted first)
        self._pending: dict[asyncio.StreamWriter, None] = {}
        self.address: tuple[str, int] | None = None

    @classmethod
    async def start(cls, node: Node, listen: str) -> AdminServer:
        host, port = parse_hostport(listen, what="admin_listen")
        admin = cls(node)
        try:
            admin._server = await asyncio.start_server(
                admin._serve, None if host in ("::", "", "*") else host, port,
                limit=MAX_LINE, reuse_address=True)
        except OSError as exc:
            raise ConfigError(f"admin_listen {listen!r}: cannot listen: {exc.strerror or exc}") from None
        bound_port = int(admin._server.sockets[0].getsockname()[1])
        admin.address = (host, bound_port)
        log.info("admin endpoint on http://%s/ (/healthz /readyz /metrics /status)",
                 format_hostport(host, bound_port))
        return admin

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CONNECTIONS:
            oldest = next(iter(self._pending), None)
            if oldest is None:  # every connection is being answered: this one waits its turn
                writer.transport.abort()
                return
            del self._pending[oldest]
            oldest.transport.abort()
        self._writers.add(writer)
        self._pending[writer] = None
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    method, target, accept = await self._read_request(reader)
                self._pending.pop(writer, None)
                response = self.routes.handle(method, target, accept)
                head_only = method == "HEAD"
            except _BadRequest as exc:
                response, head_only = Response(exc.status, TEXT, f"{exc}\n".encode()), False
            except TimeoutError:
                response, head_only = Response(408, TEXT, b"request not received in time\n"), False
            self._write(writer, response, head_only)
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a bug in a route: the connection goes, the node stays
            log.exception("admin endpoint: request failed")
        finally:
            self._writers.discard(writer)
            self._pending.pop(writer, None)
            writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, str | None]:
        line = await _read_line(reader)
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        method, target, _ = parts
        accept: str | None = None
        for _ in range(MAX_HEADERS + 1):
            header = await _read_line(reader)
            if not header:
                break
            name, sep, value = header.partition(":")
            if not sep:
                raise _BadRequest(400, "malformed header line")
            key = name.strip().lower()
            value = value.strip()
            if key == "accept":
                accept = value
            elif (key == "content-length" and value != "0") or key == "transfer-encoding":
                raise _BadRequest(413, "a request body is not accepted")
        else:
            raise _BadRequest(431, f"more than {MAX_HEADERS} header lines")
        return method, target, accept

    @staticmethod
    def _write(writer: asyncio.StreamWriter, response: Response, head_only: bool) -> None:
        reason = HTTPStatus(response.status).phrase
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
                   ("Connection", "close"), *COMMON_HEADERS, *response.headers]
        head = f"HTTP/1.1 {response.status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        writer.write(head.encode("latin-1") + b"\r\n" + (b"" if head_only else response.body))


async def _read_line(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _BadRequest(431, f"a request or header line over {MAX_LINE} bytes") from None
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise _BadRequest(400, "incomplete request") from None
        raise
    try:
        return raw.decode("latin-1").rstrip("\r\n")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise _BadRequest(400, "undecodable request") from None
