"""Optional TLS, including mutual TLS, with certificates from a test CA (trustme)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
import trustme

import peerlink
from peerlink import Config, Node
from peerlink.testing import free_port, wait_until


def contexts(ca: trustme.CA, name: str, *, client_cert: bool = True) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert = ca.issue_cert("127.0.0.1", "localhost", common_name=name)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    ca.configure_trust(server)
    server.verify_mode = ssl.CERT_REQUIRED  # mutual: the dialler must show a certificate
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    if client_cert:
        cert.configure_cert(client)
    return server, client


def node(name: str, server: ssl.SSLContext, client: ssl.SSLContext, **kw: Any) -> Node:
    return Node(Config.local(name=name, cluster="tls", cookie="k", tls_server=server, tls_client=client, **kw))


async def test_mutual_tls_links_form_and_carry_messages() -> None:
    ca = trustme.CA()
    b = node("b", *contexts(ca, "b"))
    b.handler("echo")(lambda m, s: m)
    async with b:
        a = node("a", *contexts(ca, "a"), discovery=[peerlink.Static([b.address_str])])
        async with a:
            await a.wait_for_peers(1, timeout=5)
            assert await a.call("b", "echo", {"x": [1, 2]}) == {"x": [1, 2]}
            link = a._membership.active["b"]  # type: ignore[union-attr]
            assert link.transport is not None and link.transport.get_extra_info("ssl_object") is not None


@pytest.mark.parametrize("case", ["no_client_cert", "other_ca"])
async def test_tls_refusals_never_link(case: str) -> None:
    ca = trustme.CA()
    b = node("b", *contexts(ca, "b"))
    async with b:
        if case == "no_client_cert":
            server, client = contexts(ca, "a", client_cert=False)
        else:
            server, client = contexts(trustme.CA(), "a")
        a = node("a", server, client, discovery=[peerlink.Static([b.address_str])])
        async with a:
            await wait_until(lambda: bool(a.status()["candidates"]) and a.status()["candidates"][0]["attempts"] >= 2
                             and a.status()["candidates"][0]["state"] != "dialling")
            assert dict(a.peers) == {} and dict(b.peers) == {}
            cand = a.status()["candidates"][0]
            assert cand["state"] in ("unreachable", "handshake_rejected")


async def test_cookie_rotation_in_three_rolling_steps() -> None:
    """docs/security.md: [old] -> [old, new] -> [new, old] -> [new], one node restarted
    at a time; every restarted node links to every other at each step."""
    ports = [free_port() for _ in range(3)]
    static = peerlink.Static([f"127.0.0.1:{port}" for port in ports])

    def make(i: int, cookie: list[str]) -> Node:
        return Node(Config.local(name=f"n{i}", cluster="rot", cookie=cookie,
                                 listen=f"127.0.0.1:{ports[i]}", discovery=[static]))

    nodes = [make(i, ["old"]) for i in range(3)]
    for n in nodes:
        await n.start()
    try:
        for n in nodes:
            await n.wait_for_peers(2, timeout=5)
        for step in (["old", "new"], ["new", "old"], ["new"]):
            for i in range(3):
                await nodes[i].close()
                nodes[i] = make(i, step)
                await nodes[i].start()
                await nodes[i].wait_for_peers(2, timeout=5)
            for n in nodes:  # the others see the restarted one too
                await n.wait_for_peers(2, timeout=5)
        assert all(set(n.peers) == {f"n{j}" for j in range(3)} - {n.name} for n in nodes)
    finally:
        for n in nodes:
            await n.close()


async def test_a_stalled_tls_handshake_is_dropped_after_handshake_timeout() -> None:
    """The TLS handshake comes before the cookie handshake: it must be bounded by
    handshake_timeout like ours (asyncio's default would be 60 s)."""
    ca = trustme.CA()
    b = node("b", *contexts(ca, "b"), handshake_timeout=0.3)
    async with b:
        host, port = b.address or ("", 0)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"\x16\x03\x01")  # the start of a ClientHello, and then nothing
        assert await asyncio.wait_for(reader.read(), 5) == b""  # b hangs up
        writer.close()


async def test_failed_tls_handshakes_leave_nothing_behind() -> None:
    """Each inbound connection once made a Link before asyncio ran the TLS handshake; one
    whose TLS failed stayed registered for good (memory an unauthenticated client could
    grow without bound)."""
    ca = trustme.CA()
    b = node("b", *contexts(ca, "b"))
    async with b:
        host, port = b.address or ("", 0)
        for _ in range(20):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")  # not TLS: the handshake fails at once
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        membership = b._membership
        assert membership is not None
        await wait_until(lambda: not membership.links and not membership._unauthenticated)



async def test_tls_handshakes_in_progress_count_in_the_unauthenticated_budget() -> None:
    """A connection stalled in its TLS handshake is counted from the TCP accept like one
    stalled in the cookie handshake: past the per-address cap the oldest is dropped, long
    before handshake_timeout, and a real peer still links."""
    ca = trustme.CA()
    b = node("b", *contexts(ca, "b"), handshake_timeout=60.0, max_unauthenticated_per_host=2)
    async with b:
        host, port = b.address or ("", 0)
        conns = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"\x16\x03\x01")  # the start of a ClientHello, and then nothing
            conns.append((reader, writer))
        assert await asyncio.wait_for(conns[0][0].read(), 10) == b""  # evicted, not timed out
        a = node("a", *contexts(ca, "a"), discovery=[peerlink.Static([b.address_str])])
        async with a:
            await a.wait_for_peers(1, timeout=10)
        for _, writer in conns:
            writer.close()
