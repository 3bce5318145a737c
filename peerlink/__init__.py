"""peerlink: copies of one Python service find each other and talk directly.

Discovery strategies say where peers may be; a membership manager keeps one
authenticated TCP link per peer, heals it, and emits join/leave events; messaging
(send, broadcast, call) runs over those links with msgpack.

Strategies other than ``Static``, and the layers above the links (``PubSub``,
``Presence``), are imported on first use, so ``import peerlink`` stays cheap (the
kubernetes client alone takes about half a second to import).
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
    from .presence import Diff, DiffSubscription, Presence, PresenceMeta, Tracked
    from .pubsub import Message, MessagesLost, PubSub, TopicSubscription

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
    "Diff",
    "DiffSubscription",
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
    "Message",
    "MessageTooLarge",
    "MessagesLost",
    "Node",
    "NodeClosed",
    "Peer",
    "PeerJoined",
    "PeerLeft",
    "PeerUnavailable",
    "PeerlinkError",
    "PollingStrategy",
    "Presence",
    "PresenceMeta",
    "ProtocolError",
    "PubSub",
    "RemoteError",
    "SelfConnection",
    "Snapshot",
    "Static",
    "Strategy",
    "Subscription",
    "TopicSubscription",
    "Tracked",
    "VersionMismatch",
    "__version__",
]

# imported on first use: a node that uses neither pubsub nor presence pays nothing
_LAZY = {
    "DNS": "peerlink.discovery.dns",
    "DNSSRV": "peerlink.discovery.dns",
    "Diff": "peerlink.presence",
    "DiffSubscription": "peerlink.presence",
    "Kubernetes": "peerlink.discovery.kubernetes",
    "MDNS": "peerlink.discovery.mdns",
    "Message": "peerlink.pubsub",
    "MessagesLost": "peerlink.pubsub",
    "Presence": "peerlink.presence",
    "PresenceMeta": "peerlink.presence",
    "PubSub": "peerlink.pubsub",
    "TopicSubscription": "peerlink.pubsub",
    "Tracked": "peerlink.presence",
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
