"""A raw HTTP/1.1 client on asyncio streams, so tests can send well-formed requests and
also the malformed, oversized and stalled ones a hostile client would."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["HttpResponse", "get", "raw_request"]


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def _parse(data: bytes) -> HttpResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return HttpResponse(status, headers, body)


async def raw_request(address: str, data: bytes, timeout: float = 10.0) -> HttpResponse | None:
    """Send ``data`` as is and read until the server closes; None if it closed without
    answering."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    try:
        writer.write(data)
        await writer.drain()
        received = await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        received = b""
    finally:
        writer.close()
    return _parse(received) if received else None


async def get(address: str, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
              timeout: float = 10.0) -> HttpResponse:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{extra}\r\n".encode()
    response = await raw_request(address, request, timeout)
    assert response is not None, f"{method} {path}: the server closed without answering"
    return response
