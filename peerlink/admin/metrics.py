"""/metrics: the node's figures in Prometheus format, through ``prometheus_client``
(an optional dependency: ``pip install 'peerlink[metrics]'``).

A custom collector reads ``node.stats`` and ``node.status()`` at scrape time, so the
node itself keeps only plain integers and pays nothing between scrapes. Every label
value comes from a fixed set (states, reasons, directions, strategy schemes) or is the
name of an authenticated peer - never a string a remote party chose freely. The names
and their meaning are listed in ``docs/operations.md``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..events import LeaveReason
from ..membership import CandidateState
from ..stats import REFUSAL_REASONS, Direction, Histogram, refusal_reason
from .checks import not_ready_because

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["Metrics", "MetricsUnavailable", "NodeCollector"]

PREFIX = "peerlink_"


class MetricsUnavailable(RuntimeError):
    """prometheus_client is not installed."""


def _histogram(family: Any, hist: Histogram) -> Any:
    buckets = [("+Inf" if bound == float("inf") else repr(bound), n) for bound, n in hist.cumulative()]
    family.add_metric([], buckets, hist.sum)
    return family


def _strategy_labels(strategies: list[dict[str, Any]]) -> list[str]:
    """A strategy's label: its scheme, with ``#2``, ``#3``... for repeats."""
    seen: dict[str, int] = {}
    out = []
    for s in strategies:
        n = seen[s["scheme"]] = seen.get(s["scheme"], 0) + 1
        out.append(s["scheme"] if n == 1 else f"{s['scheme']}#{n}")
    return out


def _cause(candidate: dict[str, Any]) -> str:
    """Why a candidate is in its state, from a fixed set: the refusal reason of a
    rejected handshake, else the state itself."""
    if candidate["state"] == CandidateState.HANDSHAKE_REJECTED:
        return refusal_reason((candidate["detail"] or "").split(":", 1)[0])
    return str(candidate["state"])


class NodeCollector:
    """A prometheus_client collector for one node."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        node = self.node
        status = node.status()
        stats = node.stats
        info = status["node"]

        def gauge(name: str, doc: str, value: float | None = None, labels: list[str] | None = None) -> Any:
            return GaugeMetricFamily(PREFIX + name, doc, value=value, labels=labels)

        def counter(name: str, doc: str, value: float | None = None, labels: list[str] | None = None) -> Any:
            return CounterMetricFamily(PREFIX + name, doc, value=value, labels=labels)

        fam = gauge("info", "This node: cluster, name and incarnation (always 1)",
                    labels=["cluster", "name", "incarnation"])
        fam.add_metric([info["cluster"], info["name"], info["incarnation"]], 1)
        yield fam
        yield gauge("ready", "1 when /readyz answers 200", 0.0 if not_ready_because(status) else 1.0)
        fam = gauge("failure_detection_seconds",
                    "A silent peer is reported between the earliest and the latest of these",
                    labels=["edge"])
        low, high = info["failure_detection"]["within"]
        fam.add_metric(["earliest"], low)
        fam.add_metric(["latest"], high)
        yield fam

        yield gauge("peers", "Peers linked now", len(status["peers"]))
        fam = gauge("links", "Connections by state (handshake, open, closing)", labels=["state"])
        for state, n in status["links"].items():
            fam.add_metric([state], n)
        yield fam
        counts: dict[tuple[str, str], int] = {}
        for c in status["candidates"]:
            key = (str(c["state"]), _cause(c))
            counts[key] = counts.get(key, 0) + 1
        fam = gauge("candidates", "Discovered endpoints by state and cause", labels=["state", "cause"])
        for state in CandidateState:
            if not any(k[0] == state for k in counts):
                fam.add_metric([state.value, state.value], 0)
        for (state, cause), n in sorted(counts.items()):
            fam.add_metric([state, cause], n)
        yield fam

        yield counter("joins", "Peers that joined (PeerJoined events)", stats.joins)
        fam = counter("leaves", "Peers that left (PeerLeft events) by reason", labels=["reason"])
        for reason in LeaveReason:
            fam.add_metric([reason.value], stats.leaves[reason])
        yield fam
        fam = counter("handshake_refusals", "Connections whose handshake failed, by direction and reason",
                      labels=["direction", "reason"])
        for direction in Direction:
            for refusal in sorted(REFUSAL_REASONS):
                fam.add_metric([direction.value, refusal], stats.refusals.get((direction, refusal), 0))
        yield fam

        traffic = status["traffic"]
        yield counter("messages_received", "Messages received on open links "
                      "(application messages, replies and heartbeats)", traffic["messages_in"])
        yield counter("messages_sent", "Messages the application sent (send, each peer of a "
                      "broadcast, call requests)", traffic["messages_out"])
        yield counter("received_bytes", "Bytes received on every connection", traffic["rx_bytes"])
        yield counter("sent_bytes", "Bytes sent on every connection", traffic["tx_bytes"])
        messaging = status["messaging"]
        yield counter("unknown_topic_messages", "Messages for a topic with no handler",
                      messaging.get("unknown_topic", 0))
        yield counter("handler_errors", "Handlers that raised", messaging.get("handler_errors", 0))
        yield _histogram(HistogramMetricFamily(PREFIX + "call_duration_seconds",
                                               "node.call() round trips, any outcome"), stats.calls)
        yield counter("call_failures", "Calls that ended in CallTimeout, RemoteError or "
                      "PeerUnavailable", stats.call_failures)

        labels = _strategy_labels(status["strategies"])
        snaps = counter("discovery_snapshots", "Answers from a strategy", labels=["strategy"])
        errors = counter("discovery_errors", "Failed lookups of a strategy", labels=["strategy"])
        last = gauge("discovery_last_success_timestamp_seconds",
                     "When a strategy last answered (Unix time)", labels=["strategy"])
        size = gauge("discovery_candidates", "Endpoints in a strategy's last answer", labels=["strategy"])
        for label, s in zip(labels, status["strategies"], strict=True):
            snaps.add_metric([label], s["snapshots"])
            errors.add_metric([label], s["failures"])
            if s["last_success"] is not None:
                last.add_metric([label], s["last_success"])
            if s["snapshot"] is not None:
                size.add_metric([label], len(s["snapshot"]))
        yield from (snaps, errors, last, size)

        yield gauge("event_loop_lag_seconds", "How late the event loop ran a timer, last sample",
                    stats.loop_lag)
        yield gauge("event_loop_lag_max_seconds", "The worst event-loop lag since the node started",
                    stats.loop_lag_max)
        yield _histogram(HistogramMetricFamily(PREFIX + "event_loop_lag_samples_seconds",
                                               "Every event-loop lag sample (one per 0.5 s)"),
                         stats.loop_lags)

        rtt = gauge("peer_rtt_seconds", "The kernel's smoothed TCP round-trip time to a peer",
                    labels=["peer"])
        heard = gauge("peer_last_heard_age_seconds", "Seconds since anything arrived from a peer",
                      labels=["peer"])
        rx = counter("peer_received_bytes", "Bytes received on a peer's current link", labels=["peer"])
        tx = counter("peer_sent_bytes", "Bytes sent on a peer's current link", labels=["peer"])
        now = time.time()
        for p in status["peers"]:
            if p["rtt"] is not None:
                rtt.add_metric([p["name"]], p["rtt"])
            heard.add_metric([p["name"]], max(0.0, now - p["last_heard"]))
            rx.add_metric([p["name"]], p["rx_bytes"])
            tx.add_metric([p["name"]], p["tx_bytes"])
        yield from (rtt, heard, rx, tx)


class Metrics:
    """The /metrics route of one node: its collector plus the process, platform and
    garbage-collector collectors of prometheus_client, in a registry of their own."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._registry: Any = None

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) of a scrape; OpenMetrics when the scraper asks for it.
        Raises ``MetricsUnavailable`` without prometheus_client."""
        try:
            from prometheus_client import (
                CollectorRegistry,
                GCCollector,
                PlatformCollector,
                ProcessCollector,
            )
            from prometheus_client.exposition import choose_encoder
        except ImportError:
            raise MetricsUnavailable(
                "/metrics needs prometheus_client: pip install 'peerlink[metrics]'") from None
        if self._registry is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(NodeCollector(self.node))
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
            self._registry = registry
        encoder, content_type = choose_encoder(accept or "")
        body: bytes = encoder(self._registry)
        return body, content_type
