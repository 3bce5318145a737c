"""The admin routes as an ASGI application, to mount in a server you already run::

    from peerlink.admin import asgi_app

    app.mount("/peerlink", asgi_app(node))          # Starlette / FastAPI
    # or serve it alone: uvicorn.Config(asgi_app(node), port=4371)

The page at ``/`` uses relative links, so it works under any mount path; a request for
the mount path without its trailing slash is redirected to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeAlias

from .routes import COMMON_HEADERS, Routes

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["asgi_app"]

Scope: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send: TypeAlias = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]


def asgi_app(node: Node) -> ASGIApp:
    """An ASGI 3 application serving ``node``'s admin routes (/healthz, /readyz,
    /metrics, /status, /). The node's lifecycle stays yours: start it before serving."""
    routes = Routes(node)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        root = scope.get("root_path", "")
        path = scope.get("path", "/")
        if root and path.startswith(root):  # mounted: strip the prefix
            path = path[len(root):]
        if not path:  # the mount point itself: the page's relative links need the slash
            await send({"type": "http.response.start", "status": 307,
                        "headers": [(b"location", (root + "/").encode("latin-1")), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        query = scope.get("query_string", b"").decode("latin-1")
        accept = None
        for key, value in scope.get("headers", ()):
            if key.lower() == b"accept":
                accept = value.decode("latin-1")
        response = routes.handle(scope["method"], path + ("?" + query if query else ""), accept)
        headers = [(b"content-type", response.content_type.encode("latin-1")),
                   (b"content-length", str(len(response.body)).encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in (*COMMON_HEADERS, *response.headers)]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else response.body})

    return app
