"""The presence CRDT without I/O: the join is commutative, associative and idempotent,
and replicas that see random delivery orders, duplicates and losses (repaired by a
full sync) converge to the owners' truth; an incarnation that left for good never
comes back."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerlink.presence_state import (
    Kernel,
    Limits,
    PresenceState,
    decode_entries,
    encode_entries,
    pack_meta,
)

TOPICS = ["lobby", "room"]
KEYS = ["ana", "bo", "cy"]


def history(ops: list[tuple[int, int, int]]) -> list[Kernel]:
    """The deltas one origin produces for ``ops`` (kind, key index, meta), one per op."""
    state = PresenceState(("o", "1"))
    deltas: list[Kernel] = []
    for kind, k, meta in ops:
        own = list(state.own.entries)
        if kind == 0 or not own:
            state.add(TOPICS[k % 2], KEYS[k % 3], pack_meta(meta))
        elif kind == 1:
            state.update(own[k % len(own)], pack_meta(meta))
        else:
            state.remove(own[k % len(own)])
        taken = state.take_delta()
        assert taken is not None and not taken[1]
        deltas.append(taken[0])
    return deltas


ops_st = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(0, 3)),
                  min_size=1, max_size=12)


def joined(deltas: list[Kernel]) -> Kernel:
    k = Kernel()
    for d in deltas:
        k.join(d.copy())
    return k


@given(ops_st, st.data())
def test_join_is_commutative_associative_idempotent(ops: list[Any], data: st.DataObject) -> None:
    deltas = history(ops)
    pick = st.lists(st.sampled_from(deltas), max_size=len(deltas))
    a, b, c = (joined(data.draw(pick)) for _ in range(3))

    def j(x: Kernel, y: Kernel) -> Kernel:
        out = x.copy()
        out.join(y.copy())
        return out

    assert j(a, b) == j(b, a)
    assert j(j(a, b), c) == j(a, j(b, c))
    assert j(a, a) == a
    # every delta joined in any order gives the owner's state
    order = data.draw(st.permutations(deltas))
    assert joined(order).entries == joined(deltas).entries


N = 3  # replicas


class Sim:
    """``N`` replicas, each the writer of its own origin; a network of in-flight
    deltas that may be delivered in any order, twice, or dropped."""

    def __init__(self) -> None:
        self.incs = ["0"] * N
        self.replicas = [PresenceState((f"n{i}", "0")) for i in range(N)]
        self.flight: list[tuple[int, tuple[str, str], Kernel]] = []  # (to, origin, delta)
        self.departed: set[tuple[str, str]] = set()

    def deliver(self, to: int, origin: tuple[str, str], kernel: Kernel) -> None:
        r = self.replicas[to]
        try:
            r.admit(origin)
        except ValueError:
            assert origin in self.departed
            return
        r.merge(origin, kernel.copy())

    def write(self, i: int, kind: int, k: int, meta: int) -> None:
        r = self.replicas[i]
        own = list(r.own.entries)
        if kind == 0 or not own:
            r.add(TOPICS[k % 2], KEYS[k % 3], pack_meta(meta))
        elif kind == 1:
            r.update(own[k % len(own)], pack_meta(meta))
        else:
            r.remove(own[k % len(own)])
        taken = r.take_delta()
        assert taken is not None
        self.flight += [(j, r.me, taken[0]) for j in range(N) if j != i]

    def restart(self, i: int) -> None:
        old = self.replicas[i].me
        self.departed.add(old)
        self.incs[i] = str(int(self.incs[i]) + 1)
        self.replicas[i] = PresenceState((f"n{i}", self.incs[i]))
        # what was on its way to the old process died with its links; what the old
        # process sent may still arrive late elsewhere (and must be refused)
        self.flight = [m for m in self.flight if m[0] != i]
        for j in range(N):
            if j != i:  # the peers see leave(restarted)
                self.replicas[j].drop_origin(old, for_good=True)

    def resync(self, i: int, to: int) -> None:
        """``i`` sends its full state to ``to`` (what a link forming does)."""
        if i != to:
            self.deliver(to, self.replicas[i].me, self.replicas[i].snapshot())

    def truth(self) -> set[tuple[str, str, str, tuple[str, str], bytes]]:
        return {(e.topic, e.key, str(d), r.me, e.raw) for r in self.replicas
                for d, e in r.own.entries.items()}

    def seen_by(self, j: int) -> set[tuple[str, str, str, tuple[str, str], bytes]]:
        return {(e.topic, e.key, str(d), o, e.raw) for o, d, e in self.replicas[j].visible()}


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_replicas_converge_despite_reordering_duplication_loss_and_restarts(
        data: st.DataObject) -> None:
    sim = Sim()
    for _ in range(data.draw(st.integers(5, 60))):
        action = data.draw(st.sampled_from(
            ["write", "write", "write", "deliver", "deliver", "dup", "drop", "resync", "restart"]))
        if action == "write":
            sim.write(data.draw(st.integers(0, N - 1)), *data.draw(st.tuples(
                st.integers(0, 2), st.integers(0, 5), st.integers(0, 3))))
        elif action == "restart":
            sim.restart(data.draw(st.integers(0, N - 1)))
        elif action == "resync":
            sim.resync(data.draw(st.integers(0, N - 1)), data.draw(st.integers(0, N - 1)))
        elif sim.flight:
            idx = data.draw(st.integers(0, len(sim.flight) - 1))
            msg = sim.flight[idx] if action == "dup" else sim.flight.pop(idx)
            if action != "drop":
                sim.deliver(*msg)
    # the rest arrives in a random order, then every pair resyncs once (a link formed):
    # what was lost is repaired and every replica shows exactly the owners' truth
    for msg in data.draw(st.permutations(sim.flight)):
        sim.deliver(*msg)
    for i, j in itertools.permutations(range(N), 2):
        sim.resync(i, j)
    truth = sim.truth()
    for j in range(N):
        assert sim.seen_by(j) == truth
        assert not {o for o, _, _ in sim.replicas[j].visible()} & sim.departed
        # the index list() reads agrees with the entries
        indexed = {(t, k, o, d) for t, keys in sim.replicas[j].view.items()
                   for k, metas in keys.items() for (o, d) in metas}
        assert indexed == {(t, k, o, int(d)) for t, k, d, o, _ in truth}


def test_a_departed_incarnation_is_refused_and_a_partitioned_one_returns() -> None:
    a, b = PresenceState(("a", "1")), PresenceState(("b", "1"))
    b.add("room", "ana", pack_meta({"tab": 1}))
    a.admit(b.me)
    a.merge(b.me, b.snapshot())
    assert [c.joined for c in a.drop_origin(b.me, for_good=False)] == [False]
    a.admit(b.me)  # back after a partition: accepted again
    assert [c.entry.key for c in a.merge(b.me, b.snapshot())] == ["ana"]
    b2 = PresenceState(("b", "2"))  # b restarted: the old incarnation leaves at once
    assert [(c.joined, c.origin) for c in a.admit(b2.me)] == [(False, ("b", "1"))]
    with pytest.raises(ValueError, match="is gone"):
        a.admit(("b", "1"))
    assert list(a.visible()) == []


def test_a_long_run_of_writes_while_nothing_is_taken_stays_bounded() -> None:
    s = PresenceState(("a", "1"))
    s.add("room", "bo", pack_meta(None))
    dot, _ = s.add("room", "ana", pack_meta(None))
    assert s.take_delta() is not None  # links are slow from here on: nothing is taken
    for i in range(5000):
        dot, _ = s.update(dot, pack_meta(i))
    taken = s.take_delta()  # a full state, not 10,000 dots
    assert taken is not None and taken[1]
    assert taken[0].ctx.top == s.clock and len(taken[0].entries) == 2


@pytest.mark.parametrize("bad", [
    "not a list", [1, "t", "k"], [0, "t", "k", b"\xc0"], [True, "t", "k", b"\xc0"],
    [1, b"t", "k", b"\xc0"], [1, "t", "k", "not bytes"], [1, "t" * 600, "k", b"\xc0"],
    [1, "t", "k", b"\xc1"], [1, "t", "k", b"\xd4\x01\x00"], [1, "t", "k", b"\x92\x01"],
    [1, "t", "k", b"\x00" * 5000],
])
def test_decode_rejects_bad_entries(bad: Any) -> None:
    with pytest.raises(ValueError):
        decode_entries(bad, Limits())


def test_encode_decode_round_trip() -> None:
    s = PresenceState(("a", "1"))
    s.add("room", "ana", pack_meta({"tab": [1, 2]}))
    got = decode_entries(encode_entries(s.own.entries.items()), Limits())
    assert got == s.own.entries and got[1].meta == {"tab": [1, 2]}
