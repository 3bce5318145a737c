"""The exception tree of peerlink. Imports nothing from peerlink.

::

    PeerlinkError                         base of everything peerlink raises
     ├─ ConfigError(ValueError)           bad option or env var; names it and what was expected
     ├─ DiscoveryError                    a lookup failed (not the same as "nobody"); .strategy, .reason
     │   └─ DiscoveryForbidden            the API refused us (RBAC 403); .rule says what to grant
     ├─ HandshakeError                    a link was refused; logged, never raised to app code;
     │   │                                .reason (one of HANDSHAKE_REASONS), .by_peer
     │   ├─ AuthenticationFailed          wrong cookie
     │   ├─ ClusterMismatch               .ours, .theirs
     │   ├─ VersionMismatch               .ours, .theirs
     │   ├─ SelfConnection                we dialled ourselves
     │   ├─ HandshakeTimeout              no complete handshake within handshake_timeout
     │   └─ HandshakeEvicted              dropped: too many unauthenticated connections
     ├─ ProtocolError                     (sans-I/O) malformed or out-of-sequence frame
     │   └─ FrameTooLarge                 .size, .limit
     ├─ MessageTooLarge(ValueError)       over max_frame bytes or max_message_items values; at the sender
     ├─ PeerUnavailable                   no link, or it died mid-send/call; .peer
     ├─ CallTimeout(TimeoutError)         .peer, .topic, .timeout
     ├─ RemoteError                       the remote handler raised; .type, .message
     ├─ EventsLost                        a subscriber fell behind; .dropped
     └─ NodeClosed(RuntimeError)          used before start or after close

What application code sees: ``ConfigError`` from ``Node(...)`` and ``from_env()``, and
``PeerUnavailable`` / ``CallTimeout`` / ``RemoteError`` / ``MessageTooLarge`` /
``NodeClosed`` / ``TypeError`` (a value msgpack cannot carry) from messaging. Link-level
failures (handshake and protocol errors) become ``PeerLeft`` events, log lines and
``node.status()`` entries; they never reach application code as exceptions.
"""

from __future__ import annotations

__all__ = [
    "HANDSHAKE_REASONS",
    "AuthenticationFailed",
    "CallTimeout",
    "ClusterMismatch",
    "ConfigError",
    "DiscoveryError",
    "DiscoveryForbidden",
    "EventsLost",
    "FrameTooLarge",
    "HandshakeError",
    "HandshakeEvicted",
    "HandshakeTimeout",
    "MessageTooLarge",
    "NodeClosed",
    "PeerUnavailable",
    "PeerlinkError",
    "ProtocolError",
    "RemoteError",
    "SelfConnection",
    "VersionMismatch",
]


class PeerlinkError(Exception):
    """Base class of every exception peerlink raises."""


class ConfigError(PeerlinkError, ValueError):
    """A bad option or environment variable; the message names it and what was expected."""


class DiscoveryError(PeerlinkError):
    """A discovery lookup failed. This is *not* "nobody": the last good snapshot stands."""

    def __init__(self, strategy: str, reason: str) -> None:
        super().__init__(f"{strategy}: {reason}")
        self.strategy = strategy
        self.reason = reason


class DiscoveryForbidden(DiscoveryError):
    """The discovery source refused us for lack of permission (Kubernetes RBAC 403)."""

    def __init__(self, strategy: str, reason: str, rule: str = "") -> None:
        super().__init__(strategy, reason + (f"; grant: {rule}" if rule else ""))
        self.rule = rule


class HandshakeError(PeerlinkError):
    """A link was refused during the handshake. Reported in logs and status, never raised
    to application code.

    ``reason`` is always one of ``HANDSHAKE_REASONS`` (a fixed set, safe as a log or
    metric key); ``by_peer`` is true when the other side refused us - its word, which
    before authentication proves nothing."""

    reason: str = "handshake_failed"
    by_peer: bool = False


class AuthenticationFailed(HandshakeError):
    """The other side does not know any of our cookies (or we do not know its)."""

    reason = "wrong_cookie"


class ClusterMismatch(HandshakeError):
    """Both sides know the cookie but belong to different clusters."""

    reason = "wrong_cluster"

    def __init__(self, ours: str, theirs: str) -> None:
        super().__init__(f"cluster mismatch: we are {ours!r}, the peer is {theirs!r}")
        self.ours = ours
        self.theirs = theirs


class VersionMismatch(HandshakeError):
    """No protocol version both sides speak."""

    reason = "incompatible_version"

    def __init__(self, ours: tuple[int, int], theirs: tuple[int, int]) -> None:
        super().__init__(
            f"no common protocol version: we speak {ours[0]}..{ours[1]}, "
            f"the peer speaks {theirs[0]}..{theirs[1]}"
        )
        self.ours = ours
        self.theirs = theirs


class SelfConnection(HandshakeError):
    """The address we dialled is this node itself."""

    reason = "is_self"


class HandshakeTimeout(HandshakeError):
    """The handshake did not complete within ``handshake_timeout``."""

    reason = "handshake_timeout"


class HandshakeEvicted(HandshakeError):
    """Dropped unfinished to make room: too many connections had not proven the cookie
    (``max_unauthenticated``, or ``max_unauthenticated_per_host`` from one address)."""

    reason = "evicted"


#: Every value ``HandshakeError.reason`` takes: the subclasses' reasons, "refused" (the
#: peer refused us for a reason we do not know), and how a link can die in the handshake.
HANDSHAKE_REASONS = frozenset({
    "handshake_failed", "wrong_cookie", "wrong_cluster", "incompatible_version", "is_self",
    "handshake_timeout", "evicted", "refused", "connection_lost", "protocol_error",
})


class ProtocolError(PeerlinkError):
    """Malformed or out-of-sequence data on a link. Used inside the sans-I/O core; the
    link that sees it is closed with reason ``protocol_error``."""


class FrameTooLarge(ProtocolError):
    """A frame header announced more bytes than ``max_frame``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds limit of {limit} bytes")
        self.size = size
        self.limit = limit


class MessageTooLarge(PeerlinkError, ValueError):
    """A message does not fit in one frame of ``max_frame`` bytes, or decodes to more than
    ``max_message_items`` values (``unit`` says which); nothing was sent."""

    def __init__(self, size: int, limit: int, *, unit: str = "bytes", option: str = "max_frame") -> None:
        if unit == "bytes":
            text = f"message of {size} bytes exceeds {option} of {limit} bytes"
        else:
            text = (f"message of {size} bytes decodes to more than {option} = {limit} {unit}; "
                    "send bulk data as bytes")
        super().__init__(text)
        self.size = size
        self.limit = limit
        self.unit = unit


class PeerUnavailable(PeerlinkError):
    """There is no link to the peer, or it died before the message or reply got through."""

    def __init__(self, peer: str, detail: str = "no link") -> None:
        super().__init__(f"peer {peer!r} unavailable: {detail}")
        self.peer = peer


class CallTimeout(PeerlinkError, TimeoutError):
    """No reply to ``call`` within its timeout; a late reply is discarded."""

    def __init__(self, peer: str, topic: str, timeout: float) -> None:
        super().__init__(f"call to {peer!r} topic {topic!r} got no reply within {timeout:g} s")
        self.peer = peer
        self.topic = topic
        self.timeout = timeout


class RemoteError(PeerlinkError):
    """The remote handler raised; carries the remote exception's type name and message."""

    def __init__(self, type: str, message: str) -> None:
        super().__init__(f"{type}: {message}" if message else type)
        self.type = type
        self.message = message


class EventsLost(PeerlinkError):
    """An event subscriber fell behind and was closed; subscribe again with current=True."""

    def __init__(self, dropped: int) -> None:
        super().__init__(
            f"subscriber fell behind; {dropped} event(s) dropped; "
            "subscribe again with node.events(current=True) to resynchronise"
        )
        self.dropped = dropped


class NodeClosed(PeerlinkError, RuntimeError):
    """The node is not running (not started yet, or already closed)."""
