"""peerlink: copies of one Python service find each other and talk directly.

Discovery strategies say where peers may be; a membership manager keeps one
authenticated TCP link per peer, heals it, and emits join/leave events; messaging
(send, broadcast, call) runs over those links with msgpack.

Strategies other than ``Static`` are imported on first use, so ``import peerlink``
stays cheap (the kubernetes client alone takes about half a second to import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Config
from .discovery.base import Endpoint, LocalNode, PollingStrategy, Snapshot, Strategy
from .discovery.static import Static
from .errors import (
    AuthenticationFailed,
    CallTimeout,
    ClusterMismatch,
    ConfigError,
    DiscoveryError,
    DiscoveryForbidden,
    EventsLost,
    FrameTooLarge,
    HandshakeError,
    HandshakeTimeout,
    MessageTooLarge,
    NodeClosed,
    PeerlinkError,
    PeerUnavailable,
    ProtocolError,
    RemoteError,
    SelfConnection,
    VersionMismatch,
)
from .events import Event, LeaveReason, Peer, PeerJoined, PeerLeft, Subscription
from .node import Node

if TYPE_CHECKING:
    from .discovery.dns import DNS, DNSSRV
    from .discovery.kubernetes import Kubernetes
    from .discovery.mdns import MDNS

__version__ = "0.1.0"

__all__ = [
    "DNS",
    "DNSSRV",
    "MDNS",
    "AuthenticationFailed",
    "CallTimeout",
    "ClusterMismatch",
    "Config",
    "ConfigError",
    "DiscoveryError",
    "DiscoveryForbidden",
    "Endpoint",
    "Event",
    "EventsLost",
    "FrameTooLarge",
    "HandshakeError",
    "HandshakeTimeout",
    "Kubernetes",
    "LeaveReason",
    "LocalNode",
    "MessageTooLarge",
    "Node",
    "NodeClosed",
    "Peer",
    "PeerJoined",
    "PeerLeft",
    "PeerUnavailable",
    "PeerlinkError",
    "PollingStrategy",
    "ProtocolError",
    "RemoteError",
    "SelfConnection",
    "Snapshot",
    "Static",
    "Strategy",
    "Subscription",
    "VersionMismatch",
    "__version__",
]

_LAZY = {
    "DNS": "peerlink.discovery.dns",
    "DNSSRV": "peerlink.discovery.dns",
    "Kubernetes": "peerlink.discovery.kubernetes",
    "MDNS": "peerlink.discovery.mdns",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'peerlink' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
