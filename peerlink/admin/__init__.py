"""The admin layer: health, readiness, Prometheus metrics, status and a live page for a
running node, over HTTP.

Two ways to serve it, with the same routes:

* the built-in listener: ``Config(admin_listen="0.0.0.0:4371")`` or
  ``PEERLINK_ADMIN_LISTEN=0.0.0.0:4371`` (off by default; a node without it never
  imports this package);
* an ASGI app to mount in a server you already run (Starlette, FastAPI, uvicorn...)::

      from peerlink.admin import asgi_app
      app.mount("/peerlink", asgi_app(node))        # Starlette / FastAPI

=========  ==================================================================
route      answers
=========  ==================================================================
/healthz   200 while the event loop answers (JSON with its lag)
/readyz    200 when listening, every strategy has answered, and coverage is
           met (``ready_min_peers``, ``ready_fraction``); else 503 and why
/metrics   Prometheus text (needs ``prometheus_client``: ``peerlink[metrics]``)
/status    ``node.status()`` as JSON
/          a live page drawing the membership from /status
=========  ==================================================================

This layer sits above the node and uses only its public API (``status()``,
``stats``, ``config``); nothing below imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .asgi import asgi_app
    from .http import AdminServer

__all__ = ["AdminServer", "asgi_app"]


def __getattr__(name: str) -> Any:
    if name == "asgi_app":
        from .asgi import asgi_app

        return asgi_app
    if name == "AdminServer":
        from .http import AdminServer

        return AdminServer
    raise AttributeError(f"module 'peerlink.admin' has no attribute {name!r}")
