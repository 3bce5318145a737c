"""``peerlink doctor``: run each configured strategy, dial every candidate it finds and
explain why a link does or does not form (unreachable, refused, wrong cookie, wrong
cluster, DNS failure, RBAC forbidden...). Builds on ``Node.status()``."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from .config import Config
from .node import Node

__all__ = ["run_doctor"]


_HINTS = {
    "refused": "nothing listens there: the node is down, or the port is wrong",
    "timed_out": "no answer: a firewall or NetworkPolicy drops it, or the address is wrong",
    "unreachable": "no route to that address from here",
    "wrong_cookie": "the peer does not accept our secret: compare PEERLINK_COOKIE(_FILE) on both sides",
    "wrong_cluster": "the peer belongs to another cluster: compare PEERLINK_CLUSTER",
    "incompatible_version": "the peer speaks another protocol version: upgrade the older side",
    "handshake_timeout": "it accepted TCP but did not complete a peerlink handshake: another service?",
    "protocol_error": "it does not speak peerlink: another service on that port?",
    "name_conflict": "every node of a cluster needs a unique name: set PEERLINK_NAME (default "
                     "POD_NAME, else the host name); for doctor itself, pass another --name",
    "connected": "it accepted TCP but has not completed a peerlink handshake: another service "
                 "on that port, or a node that is stopped or overloaded",
    "connecting": "no TCP answer yet: a firewall or NetworkPolicy that drops packets, or a slow route",
}


def _hint(state: str, detail: str) -> str:
    if state == "handshake_rejected":
        return _HINTS.get(detail.split(":", 1)[0], "")
    if state == "dialling":
        return _HINTS.get(detail.split(",", 1)[0].split(" ", 1)[0], "")
    return _HINTS.get(state, "")


def _settled(status: dict[str, Any]) -> bool:
    strategies_done = all(s["snapshot"] is not None or s["last_error"] for s in status["strategies"])
    cands = status["candidates"]
    dials_done = all((c["attempts"] > 0 and c["state"] != "dialling") or c["state"] in ("linked", "is_self")
                     for c in cands)
    return strategies_done and dials_done


async def run_doctor(config: Config, *, wait: float = 3.0, as_json: bool = False) -> int:
    """Print what each strategy sees and the fate of every candidate; exit status 0 when
    every candidate linked, 1 otherwise."""
    node = Node(config.replace(reconnect_initial=min(config.reconnect_initial, 0.2)))
    async with node:
        deadline = time.monotonic() + wait
        # mDNS answers trickle in (probing alone takes ~1.7 s): give it the whole wait
        patient = any(s.scheme == "mdns" for s in config.discovery)
        while time.monotonic() < deadline and (patient or not _settled(node.status())):
            await asyncio.sleep(0.05)
        status = node.status()
        # strategies that can say more (mDNS: why each service is or is not a candidate)
        for runner, st in zip(node._runners, status["strategies"], strict=True):
            more = getattr(runner.strategy, "status", None)
            if callable(more):
                st["services"] = more()
    if as_json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print(f"peerlink doctor: cluster {config.cluster!r}, probing as {config.name!r}\n")
        for s in status["strategies"]:
            print(f"strategy {s['strategy']}")
            if s["last_error"]:
                print(f"  FAILED: {s['last_error']}")
            for line in (s.get("last_lookup") or "").splitlines():
                print(f"  lookup: {line}")
            for service, what in sorted((s.get("services") or {}).items()):
                print(f"  service {service}: {what}")
            if s["snapshot"] is None:
                print("  no answer yet" if not s["last_error"] else "  no good answer yet")
            elif not s["snapshot"]:
                print("  answered: nobody (an authoritative empty answer)")
            else:
                for ep in s["snapshot"]:
                    print(f"  candidate {ep}")
        print()
        for c in status["candidates"]:
            if c["state"] == "linked":
                print(f"{c['endpoint']:<28} OK      linked to {c['peer']}")
            else:
                print(f"{c['endpoint']:<28} {c['state'].upper():<7} {c['detail'] or ''}")
                hint = _hint(c["state"], c["detail"] or "")
                if hint:
                    print(f"{'':<28}         -> {hint}")
        if not status["candidates"]:
            print("no candidates: nothing to dial")
    ok = bool(status["candidates"]) and all(c["state"] in ("linked", "is_self") for c in status["candidates"])
    return 0 if ok else 1
