"""The admin routes, independent of any HTTP server: a request (method, path, Accept)
becomes a ``Response``. The built-in listener and the ASGI app both serve these."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from .checks import health, not_ready_because
from .metrics import Metrics, MetricsUnavailable

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["Response", "Routes"]

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
# The page loads its script from this server and talks to nothing else; every string
# it shows goes through textContent (peer names and details come from other parties).
PAGE_POLICY = ("default-src 'none'; script-src 'self'; connect-src 'self'; "
               "style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; "
               "form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = field(default=())


def _json(status: int, obj: Any) -> Response:
    return Response(status, JSON, json.dumps(obj, indent=1, default=str).encode() + b"\n")


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


class Routes:
    """/healthz, /readyz, /metrics, /status, / (the live page) and /page.js of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.metrics = Metrics(node)
        self._assets: dict[str, bytes] = {}

    def handle(self, method: str, target: str, accept: str | None = None) -> Response:
        """Answer one request. ``target`` is the request target (path and query);
        only GET and HEAD exist. The caller drops the body for HEAD."""
        if method not in ("GET", "HEAD"):
            return Response(405, TEXT, b"only GET and HEAD\n", (("Allow", "GET, HEAD"),))
        path = urllib.parse.urlsplit(target).path or "/"
        if path == "/healthz":
            ok, report = health(self.node.status())
            return _json(200 if ok else 503, report)
        if path == "/readyz":
            status = self.node.status()
            reasons = not_ready_because(status)
            return _json(503 if reasons else 200, {"ready": not reasons, "reasons": reasons,
                                                   "peers": len(status["peers"])})
        if path == "/status":
            return _json(200, self.node.status())
        if path == "/metrics":
            try:
                body, content_type = self.metrics.render(accept)
            except MetricsUnavailable as exc:
                return Response(501, TEXT, f"{exc}\n".encode())
            return Response(200, content_type, body)
        if path in ("/", "/index.html"):
            return Response(200, "text/html; charset=utf-8", self._cached("page.html"),
                            (("Content-Security-Policy", PAGE_POLICY),))
        if path == "/page.js":
            return Response(200, "text/javascript; charset=utf-8", self._cached("page.js"))
        return Response(404, TEXT, b"not found; try /healthz /readyz /metrics /status /\n")

    def _cached(self, name: str) -> bytes:
        if name not in self._assets:
            self._assets[name] = _asset(name)
        return self._assets[name]


COMMON_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))
