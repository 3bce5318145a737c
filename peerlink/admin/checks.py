"""Health and readiness of a node, decided from ``node.status()`` alone."""

from __future__ import annotations

from typing import Any

__all__ = ["health", "not_ready_because"]


def health(status: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Alive while the node runs: the event loop answered this very request."""
    node = status["node"]
    return node["running"], {"ok": node["running"], "name": node["name"],
                             "loop_lag": status["loop_lag"]["last"],
                             "loop_lag_max": status["loop_lag"]["max"]}


def not_ready_because(status: dict[str, Any]) -> list[str]:
    """Why the node should not receive traffic yet; empty when it is ready.

    Ready means: running and listening, every strategy prepared and started (the node
    said ``ready``), every strategy has answered at least once, and membership coverage
    is met: at least ``ready_min_peers`` peers linked, and at least ``ready_fraction``
    of the discovered candidates other than this node linked."""
    node = status["node"]
    if not node["running"]:
        return ["the node is not running"]
    if not node["ready"]:
        return ["starting: discovery strategies are being prepared"]
    reasons = []
    for s in status["strategies"]:
        if s["snapshot"] is None:
            why = f"; last error: {s['last_error']}" if s["last_error"] else ""
            reasons.append(f"strategy {s['strategy']} has not answered yet{why}")
    wanted = node["readiness"]
    linked = len(status["peers"])
    if linked < wanted["min_peers"]:
        reasons.append(f"{linked} peer(s) linked, {wanted['min_peers']} needed (ready_min_peers)")
    others = [c for c in status["candidates"] if c["state"] != "is_self"]
    reached = sum(1 for c in others if c["state"] == "linked")
    if others and reached < wanted["fraction"] * len(others):
        reasons.append(f"{reached} of {len(others)} discovered candidates linked, "
                       f"{wanted['fraction']:.0%} needed (ready_fraction)")
    return reasons
