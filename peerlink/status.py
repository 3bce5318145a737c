"""``peerlink status [ADMIN_ADDR]``: the membership of a running node, read from its
admin endpoint (``/status`` and ``/readyz``) and shown as a table that refreshes like
``top`` (``--json``: the status once). Uses only the standard library's HTTP client.

Names, addresses and details in the table come from other parties (peer names,
refusal reasons, DNS answers): control characters are replaced before they reach the
terminal, and long values are cut."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from .discovery.base import format_hostport, parse_hostport
from .errors import ConfigError

__all__ = ["render", "run_status"]

CLEAR = "\x1b[H\x1b[2J"


def default_address() -> str:
    """``PEERLINK_ADMIN_LISTEN`` (a wildcard host read as loopback)."""
    listen = os.environ.get("PEERLINK_ADMIN_LISTEN", "")
    if not listen:
        raise ConfigError("no ADMIN_ADDR given and PEERLINK_ADMIN_LISTEN is not set")
    host, port = parse_hostport(listen, what="PEERLINK_ADMIN_LISTEN")
    return format_hostport("127.0.0.1" if host in ("0.0.0.0", "::", "", "*") else host, port)


def fetch(address: str, path: str, timeout: float = 3.0) -> Any:
    """GET http://ADDRESS/PATH as JSON (an error status with a JSON body is returned too)."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return json.load(exc)


def _clean(value: object, width: int | None = None) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    if width is not None and len(text) > width:
        text = text[: width - 1] + "\u2026"
    return text


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    s = max(0.0, now - t)
    return f"{s:.1f} s" if s < 60 else f"{s / 60:.0f} min" if s < 3600 else f"{s / 3600:.1f} h"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms" if seconds < 0.01 else f"{seconds * 1000:.0f} ms"


def _found_by(sources: list[dict[str, Any]], now: float) -> str:
    return ", ".join(f"{s['strategy']} ({_ago(s['since'], now)})" for s in sources) or "dialled us"


def _table(headers: list[str], rows: list[list[str]], widths: list[int]) -> list[str]:
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        cells = [_clean(c, w).ljust(w) for c, w in zip(r, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def render(status: dict[str, Any], ready: dict[str, Any] | None, now: float | None = None) -> str:
    """The table for one status (what ``peerlink status`` shows at each refresh)."""
    now = time.time() if now is None else now
    n = status["node"]
    state = "ready" if ready and ready.get("ready") else "NOT READY"
    lag = status["loop_lag"]
    out = [
        f"peerlink {_clean(n['cluster'])}/{_clean(n['name'])}  {n['address']}  {state}  "
        f"{len(status['peers'])} peer(s)  loop lag {_ms(lag['last'])} (max {_ms(lag['max'])})  "
        f"{time.strftime('%H:%M:%S', time.localtime(now))}",
        n["failure_detection"]["text"],
    ]
    if ready and ready.get("reasons"):
        out += [f"not ready: {_clean(r, 160)}" for r in ready["reasons"]]
    out.append("")
    out += _table(["PEER", "ADDRESS", "LINK", "RTT", "HEARD", "JOINED", "FOUND BY"],
                  [[p["name"], p["address"], p["direction"], _ms(p["rtt"]), _ago(p["last_heard"], now),
                    _ago(p["joined_at"], now), _found_by(p["sources"], now)] for p in status["peers"]],
                  [20, 24, 4, 9, 8, 8, 48])
    out.append("")
    cands = []
    for c in status["candidates"]:
        why = f"linked to {c['peer']}" if c["state"] == "linked" else (c["detail"] or "")
        if c["retry_in"] is not None:
            why += f"; retry in {c['retry_in']:.1f} s"
        cands.append([c["endpoint"], c["state"], why, _found_by(c["sources"], now)])
    out += _table(["CANDIDATE", "STATE", "WHY", "FOUND BY"], cands, [24, 18, 60, 40])
    out.append("")
    out += _table(["STRATEGY", "CANDIDATES", "ANSWERED", "LAST ERROR"],
                  [[s["strategy"], "-" if s["snapshot"] is None else str(len(s["snapshot"])),
                    _ago(s["last_success"], now), s["last_error"] or ""] for s in status["strategies"]],
                  [40, 10, 9, 60])
    return "\n".join(out)


def run_status(address: str | None, *, as_json: bool = False, interval: float = 1.0, count: int = 0) -> int:
    """Show the node's status until ^C (or ``count`` refreshes); 1 if it cannot be read."""
    try:
        address = address or default_address()
        parse_hostport(address, what="ADMIN_ADDR")
    except ConfigError as exc:
        print(f"peerlink: error: {exc}", file=sys.stderr)
        return 2
    if as_json:
        try:
            status = fetch(address, "/status")
        except (OSError, ValueError) as exc:
            print(f"peerlink status: cannot read http://{address}/status: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(status, indent=2))
        return 0
    tty = sys.stdout.isatty()
    shown = 0
    try:
        while True:
            try:
                frame = render(fetch(address, "/status"), fetch(address, "/readyz"))
            except (OSError, ValueError) as exc:
                frame = f"peerlink status: cannot read http://{address}/status: {exc} (retrying)"
            sys.stdout.write((CLEAR if tty else "\n" if shown else "") + frame + "\n")
            sys.stdout.flush()
            shown += 1
            if count and shown >= count:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
