"""The admin endpoint: probes that follow the cluster, Prometheus metrics whose labels
no remote party can choose, /status, the ASGI app under a real ASGI server, and a
listener that stays up for probes while hostile clients misbehave. Real sockets and
real HTTP; the probe test runs ``peerlink node`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.httpclient import get, raw_request
from support.nodeproc import NodeFactory

import peerlink
from peerlink import protocol as p
from peerlink.testing import free_port


def local(name: str, port: int, discovery: list[peerlink.Strategy], **options: Any) -> peerlink.Node:
    options.setdefault("cookie", "k")
    return peerlink.Node(peerlink.Config.local(cluster="c", name=name, listen=f"127.0.0.1:{port}",
                                               discovery=discovery, **options))


async def until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll an HTTP-observable condition (nothing to await: the server is polled, as
    a prober would)."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


# -- probes of a real node process -----------------------------------------------------------


async def test_probes_follow_membership(node_factory: NodeFactory) -> None:
    """``peerlink node --admin-listen``: /healthz answers at once; /readyz says why it is
    not ready (one peer needed) until the peer is linked, then 200; after the peer
    leaves it is 503 again."""
    admin = node_factory.address()
    b_address = node_factory.address()
    a = await node_factory.start("a", discovery=[f"static://{b_address}"],
                                 extra=["--admin-listen", admin, "--ready-min-peers", "1"])
    health = await get(admin, "/healthz")
    assert health.status == 200 and health.json()["ok"] is True and health.json()["name"] == "a"
    ready = await get(admin, "/readyz")
    assert ready.status == 503
    assert ready.json()["reasons"] == ["0 peer(s) linked, 1 needed (ready_min_peers)"]
    mark = a.mark()
    b = await node_factory.start("b", listen=b_address)
    await a.wait_event("join", "b", after=mark)
    assert (await get(admin, "/readyz")).status == 200
    status = (await get(admin, "/status")).json()
    assert [peer["name"] for peer in status["peers"]] == ["b"]
    mark = a.mark()
    await b.terminate()
    await a.wait_event("leave", "b", reason="shutdown", after=mark)
    assert (await get(admin, "/readyz")).status == 503


async def test_readyz_waits_for_every_strategy_and_for_coverage() -> None:
    """A strategy that has not answered (its DNS server does not exist) holds readiness
    back and is named; ``ready_fraction`` counts discovered candidates other than us."""
    pa, pb, dead, admin = free_port(), free_port(), free_port(), free_port()
    silent_dns = peerlink.DNS("peers.example", 4370, nameservers=[f"127.0.0.1:{free_port()}"])
    a = local("a", pa, [peerlink.Static([f"127.0.0.1:{pa}", f"127.0.0.1:{pb}", f"127.0.0.1:{dead}"]),
                        silent_dns], admin_listen=f"127.0.0.1:{admin}", ready_fraction=0.5)
    b = local("b", pb, [])
    async with a, b:
        await a.wait_for_peers(1, timeout=10)
        reasons = (await get(f"127.0.0.1:{admin}", "/readyz")).json()["reasons"]
        assert len(reasons) == 1 and reasons[0].startswith(f"strategy {silent_dns.describe()} has not answered yet")
    c = local("c", pa, [peerlink.Static([f"127.0.0.1:{pa}", f"127.0.0.1:{pb}", f"127.0.0.1:{dead}"])],
              admin_listen=f"127.0.0.1:{admin}", ready_fraction=1.0)
    b = local("b", pb, [])
    async with c, b:
        await c.wait_for_peers(1, timeout=10)
        ready = await get(f"127.0.0.1:{admin}", "/readyz")
        assert ready.status == 503
        assert ready.json()["reasons"] == ["1 of 2 discovered candidates linked, 100% needed (ready_fraction)"]


# -- metrics ---------------------------------------------------------------------------------


async def state_of(node: peerlink.Node, endpoint: str, state: str, timeout: float = 10.0) -> None:
    """Wait until ``node.status()`` shows ``endpoint`` in ``state`` (a dial's outcome has
    no event of its own)."""
    async with asyncio.timeout(timeout):
        while not any(c["endpoint"] == endpoint and c["state"] == state for c in node.status()["candidates"]):
            await asyncio.sleep(0.02)


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@contextlib.asynccontextmanager
async def refusing_server(reason: str) -> AsyncIterator[int]:
    """Answers any dialler's HELLO with a REFUSE carrying ``reason`` (a string the
    remote side chose)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read(1)
            writer.write(p.encode_frame([p.REFUSE, reason, None]))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_metrics_count_what_happened_with_fixed_labels() -> None:
    """Joins, leaves by reason, refusals by reason, messages, calls, per-peer figures;
    a refusal reason a remote side made up is counted as "refused", never as a label."""
    pa, pb, admin = free_port(), free_port(), free_port()
    async with refusing_server("made-up\nreason") as evil:
        a = local("a", pa, [peerlink.Static([f"127.0.0.1:{pb}", f"127.0.0.1:{evil}"])],
                  admin_listen=f"127.0.0.1:{admin}")
        b = local("b", pb, [])

        @b.handler("echo")
        def echo(message: Any, sender: peerlink.Peer) -> Any:
            return message

        wrong = local("intruder", free_port(), [peerlink.Static([f"127.0.0.1:{pa}"])], cookie="other")
        async with a, b:
            await a.wait_for_peers(1, timeout=10)
            for i in range(5):
                assert await a.call("b", "echo", i) == i
            await a.send("b", "echo", "one-way")
            async with wrong:
                await state_of(wrong, f"127.0.0.1:{pa}", "handshake_rejected")
            await state_of(a, f"127.0.0.1:{evil}", "handshake_rejected")
            text = (await get(f"127.0.0.1:{admin}", "/metrics")).text
            async with a.events(current=False) as events:
                await b.close()
                assert isinstance(await events.get(timeout=10), peerlink.PeerLeft)
            after = scrape((await get(f"127.0.0.1:{admin}", "/metrics")).text)
    m = scrape(text)
    assert m[("peerlink_peers", ())] == 1
    assert m[("peerlink_joins_total", ())] == 1
    assert m[("peerlink_call_duration_seconds_count", ())] == 5
    assert m[("peerlink_messages_sent_total", ())] == 6
    assert m[("peerlink_handshake_refusals_total", (("direction", "inbound"), ("reason", "wrong_cookie")))] >= 1
    assert m[("peerlink_handshake_refusals_total", (("direction", "outbound"), ("reason", "refused")))] >= 1
    assert m[("peerlink_candidates", (("cause", "refused"), ("state", "handshake_rejected")))] == 1
    assert "made-up" not in text
    assert m[("peerlink_discovery_snapshots_total", (("strategy", "static"),))] == 1
    assert ("peerlink_peer_last_heard_age_seconds", (("peer", "b"),)) in m
    assert m[("peerlink_peer_received_bytes_total", (("peer", "b"),))] > 0
    assert m[("peerlink_info", (("cluster", "c"), ("incarnation", a.incarnation), ("name", "a")))] == 1
    assert after[("peerlink_leaves_total", (("reason", "shutdown"),))] == 1
    assert after[("peerlink_peers", ())] == 0
    assert after[("peerlink_received_bytes_total", ())] >= m[("peerlink_received_bytes_total", ())]


# -- the listener under hostile clients ----------------------------------------------------------


@pytest.fixture
async def admin_node() -> AsyncIterator[str]:
    port, admin = free_port(), free_port()
    async with local("a", port, [], admin_listen=f"127.0.0.1:{admin}"):
        yield f"127.0.0.1:{admin}"


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"POST /status HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"GET /status HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 413),
    (b"GET /status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 413),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 65 + b"\r\n", 431),
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET /nosuch HTTP/1.1\r\n\r\n", 404),
])
async def test_bad_requests_get_a_clear_status(admin_node: str, request_bytes: bytes, status: int) -> None:
    response = await raw_request(admin_node, request_bytes)
    assert response is not None and response.status == status
    assert (await get(admin_node, "/healthz")).status == 200


async def test_a_flood_of_stalled_connections_cannot_lock_out_a_probe(admin_node: str) -> None:
    """200 connections that never send a request (over the cap of 64): a probe that
    sends its request still gets its answer, and so does HEAD."""
    host, _, port = admin_node.rpartition(":")
    stalled = []
    try:
        for _ in range(200):
            stalled.append((await asyncio.open_connection(host, int(port)))[1])
        assert (await get(admin_node, "/healthz")).status == 200
        head = await get(admin_node, "/readyz", method="HEAD")
        assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0
    finally:
        for writer in stalled:
            writer.close()


async def test_a_client_that_never_finishes_its_request_gets_408(
        admin_node: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from peerlink.admin import http

    monkeypatch.setattr(http, "READ_TIMEOUT", 0.2)
    response = await raw_request(admin_node, b"GET /status HTTP/1.1\r\n")
    assert response is not None and response.status == 408


async def test_admin_listen_that_cannot_bind_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        node = local("a", free_port(), [], admin_listen=f"127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(peerlink.ConfigError, match="admin_listen"):
            await node.start()


def test_admin_listen_from_env() -> None:
    env = {"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE": "k", "PEERLINK_ADMIN_LISTEN": "0.0.0.0:4371",
           "PEERLINK_READY_MIN_PEERS": "2", "PEERLINK_READY_FRACTION": "0.5"}
    cfg = peerlink.Config.from_env(env)
    assert (cfg.admin_listen, cfg.ready_min_peers, cfg.ready_fraction) == ("0.0.0.0:4371", 2, 0.5)
    assert peerlink.Config(cluster="c", cookie="k").admin_listen is None  # off by default
    with pytest.raises(peerlink.ConfigError, match="PEERLINK_READY_FRACTION"):
        peerlink.Config.from_env({**env, "PEERLINK_READY_FRACTION": "2"})
    with pytest.raises(peerlink.ConfigError, match="PEERLINK_ADMIN_LISTEN"):
        peerlink.Config.from_env({**env, "PEERLINK_ADMIN_LISTEN": "nowhere"})


# -- the ASGI app in a real ASGI server ------------------------------------------------------


async def test_asgi_app_under_uvicorn_mounted_at_a_prefix() -> None:
    """Served by uvicorn with ``root_path="/peerlink"`` (as behind a proxy that mounts it
    there: the app sees path /peerlink/... and root_path /peerlink)."""
    import uvicorn

    from peerlink.admin import asgi_app

    pa, http_port = free_port(), free_port()
    async with local("a", pa, []) as node:
        config = uvicorn.Config(asgi_app(node), host="127.0.0.1", port=http_port, root_path="/peerlink",
                                log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            async with asyncio.timeout(10):
                while not server.started:
                    await asyncio.sleep(0.02)
            addr = f"127.0.0.1:{http_port}"
            ready = await get(addr, "/readyz")
            assert ready.status == 200 and ready.json()["ready"] is True
            status = await get(addr, "/status")
            assert status.json()["node"]["name"] == "a"
            page = await get(addr, "/")
            assert page.status == 200 and b'src="page.js"' in page.body
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert (await get(addr, "/page.js")).status == 200
            metrics = await get(addr, "/metrics")
            assert b"peerlink_peers 0.0" in metrics.body
            assert (await get(addr, "/status", method="POST")).status == 405
        finally:
            server.should_exit = True
            await task


def test_status_json_is_json_all_the_way_down(tmp_path: Path) -> None:
    """What /status serves round-trips through JSON (no repr of Python objects)."""
    async def main() -> dict[str, Any]:
        async with local("a", free_port(), [peerlink.Static(["127.0.0.1:1"])]) as node:
            return json.loads(json.dumps(node.status()))

    status = asyncio.run(main())
    assert status["node"]["failure_detection"]["within"] == [0.5, 0.6]
    assert status["candidates"][0]["sources"][0]["strategy"] == "static://127.0.0.1:1"
