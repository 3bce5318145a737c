"""Discovery strategies and the URL registry (scheme -> strategy class).

Built-in strategies are imported lazily by scheme, so ``import peerlink`` does not pay
for the kubernetes client or zeroconf. Third parties register a strategy class under
the ``peerlink.strategies`` entry-point group, named by its URL scheme.
"""

from __future__ import annotations

import importlib
import urllib.parse

from ..errors import ConfigError
from .base import Endpoint, LocalNode, PollingStrategy, Snapshot, Strategy, StrategyRunner

__all__ = [
    "Endpoint",
    "LocalNode",
    "PollingStrategy",
    "Snapshot",
    "Strategy",
    "StrategyRunner",
    "from_url",
    "from_urls",
    "strategy_class",
]

BUILTIN: dict[str, str] = {
    "static": "peerlink.discovery.static:Static",
    "dns": "peerlink.discovery.dns:DNS",
    "dnssrv": "peerlink.discovery.dns:DNSSRV",
    "k8s": "peerlink.discovery.kubernetes:Kubernetes",
    "mdns": "peerlink.discovery.mdns:MDNS",
}


def _load(ref: str) -> type[Strategy]:
    module, _, attr = ref.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"{ref} is not a peerlink Strategy subclass")
    return cls


def strategy_class(scheme: str) -> type[Strategy]:
    """The strategy class for a URL scheme (built in, or from an entry point)."""
    if scheme in BUILTIN:
        return _load(BUILTIN[scheme])
    from importlib.metadata import entry_points  # only for third-party schemes: slow import

    for ep in entry_points(group="peerlink.strategies"):
        if ep.name == scheme:
            cls = ep.load()
            if isinstance(cls, type) and issubclass(cls, Strategy):
                return cls
            raise ConfigError(f"entry point peerlink.strategies:{scheme} is not a Strategy subclass")
    known = ", ".join(sorted(BUILTIN))
    raise ConfigError(f"unknown discovery scheme {scheme!r}; expected one of {known}")


def from_url(url: str) -> Strategy:
    """Build a strategy from a URL such as ``static://10.0.0.5:4370,10.0.0.6:4370``,
    ``dns://peers.default.svc.cluster.local:4370``, ``k8s://chat?port=peerlink`` or
    ``mdns://``. Raises ``ConfigError`` naming what is wrong."""
    url = url.strip()
    scheme = urllib.parse.urlsplit(url).scheme
    if not scheme or "://" not in url:
        raise ConfigError(f"discovery URL {url!r}: expected SCHEME://..., e.g. static://host:port")
    return strategy_class(scheme).from_url(url)


def from_urls(text: str) -> list[Strategy]:
    """Several URLs separated by spaces (the form of ``PEERLINK_DISCOVERY``)."""
    return [from_url(u) for u in text.split()]
