"""Membership with real nodes in one event loop on 127.0.0.1: joins, leaves and their
reasons, restarts, simultaneous dials, self-candidates, refused handshakes, re-dials,
bad input on the listening port, status()."""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import peerlink
from peerlink import Config, LeaveReason, Node, PeerJoined, PeerLeft
from peerlink.protocol import encode_frame
from peerlink.testing import ManualDiscovery, free_port, wait_until

T = 5.0  # generous deadline for anything awaited


class Recorder:
    """Records a node's events from the moment it is created, and checks they alternate."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.events: list[peerlink.Event] = []
        self.sub = node._bus.subscribe(100_000)
        self.changed = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        async for ev in self.sub:
            self.events.append(ev)
            self.changed.set()

    async def wait(self, pred: Callable[[peerlink.Event], bool], timeout: float = T) -> peerlink.Event:
        async with asyncio.timeout(timeout):
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                self.changed.clear()
                await self.changed.wait()

    async def joined(self, name: str, timeout: float = T) -> peerlink.Peer:
        ev = await self.wait(lambda e: isinstance(e, PeerJoined) and e.peer.name == name, timeout)
        return ev.peer

    async def left(self, name: str, timeout: float = T) -> PeerLeft:
        ev = await self.wait(lambda e: isinstance(e, PeerLeft) and e.peer.name == name, timeout)
        assert isinstance(ev, PeerLeft)
        return ev

    def check_alternation(self) -> None:
        state: dict[tuple[str, str], str] = {}
        for ev in self.events:
            key = (ev.peer.name, ev.peer.incarnation)
            kind = "join" if isinstance(ev, PeerJoined) else "leave"
            prev = state.get(key, "leave")
            assert prev != kind, f"{kind} twice in a row for {key}: {self.events}"
            state[key] = kind

    def kinds(self, name: str) -> list[str]:
        return [("join" if isinstance(e, PeerJoined) else f"leave:{e.reason.value}")
                for e in self.events if e.peer.name == name]


@pytest.fixture
async def make_node() -> AsyncIterator[Callable[..., Any]]:
    nodes: list[tuple[Node, Recorder]] = []

    async def make(name: str, *, start: bool = True, **options: Any) -> tuple[Node, Recorder]:
        options.setdefault("cookie", "secret")
        options.setdefault("cluster", "test")
        node = Node(Config.local(name=name, **options))
        rec = Recorder(node)
        nodes.append((node, rec))
        if start:
            await node.start()
        return node, rec

    yield make
    for node, _ in nodes:
        await node.close()
    for _, rec in nodes:
        rec.check_alternation()
        rec.task.cancel()


async def test_two_nodes_join_with_metadata(make_node: Any) -> None:
    b, rb = await make_node("b", metadata={"zone": "eu-1"})
    a, ra = await make_node("a", discovery=[peerlink.Static([b.address_str])], metadata={"v": 2})
    pb = await ra.joined("b")
    pa = await rb.joined("a")  # b never discovered a: it accepted a's link
    assert pb.metadata == {"zone": "eu-1"} and pa.metadata == {"v": 2}
    assert pb.address_str == b.address_str and pb.incarnation == b.incarnation
    assert set(a.peers) == {"b"} and set(b.peers) == {"a"}
    with pytest.raises(TypeError):
        a.peers["x"] = pb  # type: ignore[index]


@pytest.mark.parametrize("attempt", range(5))
async def test_simultaneous_dials_give_one_link_and_one_join(make_node: Any, attempt: int) -> None:
    pa, pb = free_port(), free_port()
    everyone = peerlink.Static([f"127.0.0.1:{pa}", f"127.0.0.1:{pb}"])
    a, ra = await make_node("a", start=False, listen=f"127.0.0.1:{pa}", discovery=[everyone])
    b, rb = await make_node("b", start=False, listen=f"127.0.0.1:{pb}", discovery=[everyone])
    await asyncio.gather(a.start(), b.start())
    await ra.joined("b")
    await rb.joined("a")
    # a round trip on each side proves the surviving link works both ways
    a.handler("echo")(lambda m, s: m)
    b.handler("echo")(lambda m, s: m)
    assert await a.call("b", "echo", 1) == 1
    assert await b.call("a", "echo", 2) == 2
    await wait_until(lambda: len(a._membership.links) == 1 and len(b._membership.links) == 1)  # type: ignore[union-attr]
    assert ra.kinds("b") == ["join"] and rb.kinds("a") == ["join"]


async def test_full_mesh_of_six_in_process(make_node: Any) -> None:
    ports = [free_port() for _ in range(6)]
    static = peerlink.Static([f"127.0.0.1:{p}" for p in ports])
    made = [await make_node(f"n{i}", start=False, listen=f"127.0.0.1:{p}", discovery=[static])
            for i, p in enumerate(ports)]
    await asyncio.gather(*(n.start() for n, _ in made))
    for node, _ in made:
        await node.wait_for_peers(5, timeout=T)
    for node, rec in made:
        await wait_until(lambda rec=rec: len(rec.events) >= 5)
        assert node.name not in node.peers  # listed itself, never reports itself
        assert sorted(e.peer.name for e in rec.events) == sorted(n.name for n, _ in made if n is not node)
        selfs = [c for c in node.status()["candidates"] if c["state"] == "is_self"]
        assert [c["endpoint"] for c in selfs] == [node.address_str]


async def test_graceful_close_gives_leave_shutdown(make_node: Any) -> None:
    b, _rb = await make_node("b")
    a, ra = await make_node("a", discovery=[peerlink.Static([b.address_str])])
    await ra.joined("b")
    await b.close()
    ev = await ra.left("b")
    assert ev.reason is LeaveReason.SHUTDOWN
    assert "b" not in a.peers


async def test_silent_peer_gives_leave_timeout(make_node: Any) -> None:
    b, _rb = await make_node("b")
    _a, ra = await make_node("a", discovery=[peerlink.Static([b.address_str])])
    await ra.joined("b")
    # b goes silent: no pings, and nothing it would send gets out
    for t in b._tasks:
        if t.get_name() == "peerlink-heartbeats":
            t.cancel()
    link = b._membership.active["a"]  # type: ignore[union-attr]
    link.write = lambda *args, **kw: None  # type: ignore[method-assign]
    ev = await ra.left("b")
    assert ev.reason is LeaveReason.TIMEOUT


async def test_lost_link_to_discovered_peer_is_redialled(make_node: Any) -> None:
    b, _rb = await make_node("b")
    a, ra = await make_node("a", discovery=[peerlink.Static([b.address_str])])
    await ra.joined("b")
    a._membership.active["b"].transport.abort()  # type: ignore[union-attr]
    ev = await ra.left("b")
    assert ev.reason is LeaveReason.CONNECTION_LOST
    await wait_until(lambda: ra.kinds("b").count("join") == 2)
    assert ra.kinds("b") == ["join", "leave:connection_lost", "join"]


async def test_restart_gives_leave_restarted_then_join(make_node: Any) -> None:
    disc = ManualDiscovery()
    a, ra = await make_node("a", discovery=[disc])
    b1, _ = await make_node("b")
    disc.set([b1.address_str])
    first = await ra.joined("b")
    # "b" comes back as a new process (new incarnation) before the old link is seen dead
    b2, _ = await make_node("b", discovery=[peerlink.Static([a.address_str])])
    await ra.wait(lambda e: isinstance(e, PeerJoined) and e.peer.incarnation == b2.incarnation)
    assert ra.kinds("b") == ["join", "leave:restarted", "join"]
    left = next(e for e in ra.events if isinstance(e, PeerLeft))
    assert left.peer.incarnation == first.incarnation == b1.incarnation
    assert a.peers["b"].incarnation == b2.incarnation


async def test_restart_while_the_old_socket_is_already_reset(make_node: Any) -> None:
    """A peer's host is cut off, its process killed and restarted, and the host back
    before anyone noticed: closing the old link meets a reset socket (ENOTCONN from
    write_eof). That must not tear down the new incarnation's fresh link (issue 15)."""
    disc = ManualDiscovery()
    a, ra = await make_node("a", discovery=[disc])
    b1, _ = await make_node("b")
    disc.set([b1.address_str])
    await ra.joined("b")
    old = a._membership.active["b"]  # type: ignore[union-attr]

    def reset_socket() -> None:
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    old.transport.write_eof = reset_socket  # type: ignore[method-assign,union-attr]
    b2, rb2 = await make_node("b", discovery=[peerlink.Static([a.address_str])])
    await ra.wait(lambda e: isinstance(e, PeerJoined) and e.peer.incarnation == b2.incarnation)
    await rb2.joined("a")
    a.handler("echo")(lambda m, s: m)
    b2.handler("echo")(lambda m, s: m)
    assert await a.call("b", "echo", 1) == 1  # the new link carries traffic both ways
    assert await b2.call("a", "echo", 2) == 2
    assert ra.kinds("b") == ["join", "leave:restarted", "join"]
    assert rb2.kinds("a") == ["join"]
    assert a.peers["b"].incarnation == b2.incarnation


async def test_self_only_discovery_reports_is_self(make_node: Any) -> None:
    port = free_port()
    a, ra = await make_node("a", listen=f"127.0.0.1:{port}",
                            discovery=[peerlink.Static([f"127.0.0.1:{port}", f"localhost:{port}"])])
    await wait_until(lambda: all(c["state"] == "is_self" for c in a.status()["candidates"])
                     and len(a.status()["candidates"]) == 2)
    assert ra.events == [] and dict(a.peers) == {}


@pytest.mark.parametrize("bad", [{"cookie": "wrong"}, {"cluster": "other"}])
async def test_refused_handshakes_never_reach_the_application(
    make_node: Any, bad: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="peerlink")
    b, _rb = await make_node("b")
    a, ra = await make_node("a", discovery=[peerlink.Static([b.address_str])])
    await ra.joined("b")
    c, rc = await make_node("c", discovery=[peerlink.Static([a.address_str, b.address_str])], **bad)
    reason = "wrong_cookie" if "cookie" in bad else "wrong_cluster"
    await wait_until(lambda: len(c.status()["candidates"]) == 2 and all(
        cand["state"] == "handshake_rejected" and cand["attempts"] >= 3 for cand in c.status()["candidates"]))
    assert all(reason in (cand["detail"] or "") for cand in c.status()["candidates"])
    assert all(cand["retry_in"] is not None for cand in c.status()["candidates"])
    assert rc.events == [] and "c" not in a.peers and "c" not in b.peers
    assert [e.peer.name for e in ra.events] == ["b"]  # the healthy link was never disturbed
    assert await _roundtrip(a, b)
    assert "secret" not in caplog.text and "wrong\n" not in caplog.text
    # refused attempts are logged, rate-limited: not one WARNING per retry
    refusals = [r for r in caplog.records if "refused an inbound link" in r.getMessage()
                and r.levelno >= logging.WARNING]
    assert 1 <= len(refusals) <= 2


async def _roundtrip(a: Node, b: Node) -> bool:
    if "ping" not in b._messenger.handlers:  # type: ignore[union-attr]
        b.handler("ping")(lambda m, s: m + 1)
    return bool(await a.call("b", "ping", 1, timeout=T) == 2)


async def test_cookie_rotation(make_node: Any) -> None:
    b, _rb = await make_node("b", cookie=["old", "new"])
    _a, ra = await make_node("a", cookie=["new", "old"], discovery=[peerlink.Static([b.address_str])])
    await ra.joined("b")


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\n\r\n",
    (2**31).to_bytes(4, "big"),  # an absurd frame length
    encode_frame([0, "peerlink", 1, 1, b"x" * 16]) + encode_frame([2, b"no", b"proof"]),
    b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1",  # msgpack that never decodes
])
async def test_garbage_on_the_port_is_dropped_and_links_survive(make_node: Any, garbage: bytes) -> None:
    b, rb = await make_node("b")
    a, ra = await make_node("a", discovery=[peerlink.Static([b.address_str])])
    await ra.joined("b")
    host, port = b.address or ("", 0)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(garbage)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), T) is not None  # b closes it (EOF)
    writer.close()
    assert await _roundtrip(a, b)
    assert rb.kinds("a") == ["join"]


async def test_silent_connection_is_dropped_after_handshake_timeout(make_node: Any) -> None:
    b, _ = await make_node("b", handshake_timeout=0.3)
    host, port = b.address or ("", 0)
    reader, writer = await asyncio.open_connection(host, port)
    data = await asyncio.wait_for(reader.read(), T)  # nothing sent: b hangs up on us
    assert data == b""
    writer.close()
    assert not b._membership.links  # type: ignore[union-attr]


async def test_oversized_frame_on_open_link_is_protocol_error(make_node: Any) -> None:
    b, rb = await make_node("b")
    a, ra = await make_node("a", discovery=[peerlink.Static([b.address_str])])
    await ra.joined("b")
    link = a._membership.active["b"]  # type: ignore[union-attr]
    assert link.transport is not None
    link.transport.write((2**30).to_bytes(4, "big"))
    ev = await rb.left("a")
    assert ev.reason is LeaveReason.PROTOCOL_ERROR


async def test_discovery_failure_keeps_snapshot_and_links(make_node: Any) -> None:
    b, _rb = await make_node("b")
    disc = ManualDiscovery([b.address_str])
    a, ra = await make_node("a", discovery=[disc])
    await ra.joined("b")
    disc.fail("SERVFAIL from the test")
    await wait_until(lambda: a.status()["strategies"][0]["last_error"] is not None)
    st = a.status()["strategies"][0]
    assert "SERVFAIL" in st["last_error"] and st["snapshot"] == [b.address_str]
    assert st["last_success"] is not None
    disc.set([])  # authoritative nobody: candidates go, links stay
    await wait_until(lambda: a.status()["strategies"][0]["snapshot"] == [])
    assert "b" in a.peers and await _roundtrip(a, b)
    assert a.status()["candidates"] == []


async def test_candidate_status_explains_unreachable(make_node: Any) -> None:
    dead = free_port()
    a, _ = await make_node("a", discovery=[peerlink.Static([f"127.0.0.1:{dead}"])])
    await wait_until(lambda: (a.status()["candidates"] or [{}])[0].get("attempts", 0) >= 2
                     and a.status()["candidates"][0]["state"] != "dialling")
    cand = a.status()["candidates"][0]
    assert cand["state"] == "refused" and "refused" in cand["detail"]
    assert cand["retry_in"] is not None and cand["retry_in"] >= 0


async def test_subscribers_see_the_same_order_and_current_replays(make_node: Any) -> None:
    ports = [free_port() for _ in range(4)]
    hub, rh = await make_node("hub")
    sub1 = hub.events(current=False)
    sub2 = hub.events(current=False)
    spokes = []
    for i in range(3):
        n, _ = await make_node(f"s{i}", listen=f"127.0.0.1:{ports[i]}",
                               discovery=[peerlink.Static([hub.address_str])])
        spokes.append(n)
    await hub.wait_for_peers(3, timeout=T)
    await spokes[1].close()
    await rh.left("s1")
    got1 = [await sub1.get(T) for _ in range(4)]
    got2 = [await sub2.get(T) for _ in range(4)]
    assert got1 == got2 == rh.events[:4]
    replay = hub.events(current=True)
    names = sorted([(await replay.get(T)).peer.name for _ in range(2)])
    assert names == ["s0", "s2"]


async def test_slow_subscriber_is_cut_off_not_waited_for(make_node: Any) -> None:
    hub, _rh = await make_node("hub")
    slow = hub.events(current=False, maxsize=2)
    spokes = [await make_node(f"s{i}", discovery=[peerlink.Static([hub.address_str])]) for i in range(4)]
    await hub.wait_for_peers(4, timeout=T)  # membership went on although nobody read `slow`
    first = [await slow.get(T), await slow.get(T)]
    assert all(isinstance(e, PeerJoined) for e in first)
    with pytest.raises(peerlink.EventsLost) as info:
        await slow.get(T)
    assert info.value.dropped >= 1
    assert len(spokes) == 4


async def test_callbacks_run_in_order_and_survive_exceptions(make_node: Any) -> None:
    seen: list[str] = []
    b, _rb = await make_node("b")
    a = Node(Config.local(name="a", cluster="test", cookie="secret",
                          discovery=[peerlink.Static([b.address_str])]))

    @a.on_join
    def boom(peer: peerlink.Peer) -> None:
        seen.append(f"sync-join:{peer.name}")
        raise RuntimeError("callback bug")

    @a.on_join
    async def joined(peer: peerlink.Peer) -> None:
        seen.append(f"async-join:{peer.name}")

    @a.on_leave
    async def left(peer: peerlink.Peer, reason: LeaveReason) -> None:
        seen.append(f"leave:{peer.name}:{reason.value}")

    async with a:
        await wait_until(lambda: len(seen) == 2)
        await b.close()
        await wait_until(lambda: len(seen) == 3)
    assert seen == ["sync-join:b", "async-join:b", "leave:b:shutdown"]


async def test_wait_for_peers_times_out(make_node: Any) -> None:
    a, _ = await make_node("a")
    with pytest.raises(TimeoutError):
        await a.wait_for_peers(1, timeout=0.05)


async def test_node_repr_and_closed_errors(make_node: Any) -> None:
    a, _ = await make_node("a", start=False)
    with pytest.raises(peerlink.NodeClosed):
        await a.send("x", "t", 1)
    await a.start()
    assert repr(a) == f"<Node test/a {a.address_str} peers=0>"
    await a.close()
    with pytest.raises(peerlink.NodeClosed):
        await a.start()


def test_event_counts_helper() -> None:
    # the Recorder's alternation check can fail
    class Fake:
        pass

    rec = object.__new__(Recorder)
    peer = peerlink.Peer("x", "1", ("h", 1), {})
    rec.events = [PeerJoined(peer), PeerJoined(peer)]
    with pytest.raises(AssertionError):
        rec.check_alternation()
    assert collections.Counter(["a"])["a"] == 1 and Fake


async def test_ipv6_wildcard_listener_serves_both_families(make_node: Any) -> None:
    port = free_port()
    b, _ = await make_node("b", listen=f"[::]:{port}")
    _a4, r4 = await make_node("a4", discovery=[peerlink.Static([f"127.0.0.1:{port}"])])
    _a6, r6 = await make_node("a6", listen="[::1]:0", discovery=[peerlink.Static([f"[::1]:{port}"])])
    await r4.joined("b")
    await r6.joined("b")
    assert set(b.peers) == {"a4", "a6"}
    assert b.peers["a6"].address_str.startswith("[::1]:")


async def test_goodbye_goes_out_even_with_a_flush_pending(make_node: Any) -> None:
    b, _ = await make_node("b")
    a, ra = await make_node("a", discovery=[peerlink.Static([b.address_str])])
    await ra.joined("b")
    a.handler("t")(lambda m, s: None)
    link = b._membership.active["a"]  # type: ignore[union-attr]
    await b.send("a", "t", 1)  # queued; its flush is scheduled for the next iteration
    assert link._flush_handle is not None
    await b.close()  # in the same iteration: GOODBYE must still precede the FIN
    ev = await ra.left("b")
    assert ev.reason is LeaveReason.SHUTDOWN


async def test_goodbye_reaches_a_dialler_whose_ready_we_have_not_read(
    make_node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After WELCOME the dialler treats the link as open; if we shut down before its
    READY is read, it must still hear GOODBYE (not see the connection just drop)."""
    c, _ = await make_node("c")
    # c never reads READY: its side of the link stays in the handshake
    monkeypatch.setattr(peerlink.protocol.Handshake, "_on_await_ready", lambda self, kind, msg: None)
    _, rb = await make_node("b", discovery=[peerlink.Static([c.address_str])])
    await rb.joined("c")
    assert "b" not in c.peers
    await c.close()
    ev = await rb.left("c")
    assert ev.reason is LeaveReason.SHUTDOWN
