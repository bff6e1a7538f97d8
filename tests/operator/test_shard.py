"""The pure part of sharding (tide_operator.shard): the shard of a key, how many to hold, what to take."""

from __future__ import annotations

import collections

import pytest
from tide_operator.shard import (
    Lease,
    fair_share,
    format_time,
    lease_of,
    live_replicas,
    member_slot,
    parse_time,
    plan,
    shard_of,
    stop_grace,
    stop_margin,
)

NOW = 1_000_000.0


def test_shard_of_is_stable_and_in_range() -> None:
    # fixed values: the same in every process and release (Python's hash() is salted per process)
    assert [shard_of("ns", f"qc-{i}", 8) for i in range(8)] == [
        shard_of("ns", f"qc-{i}", 8) for i in range(8)
    ]
    assert shard_of("a", "b", 1) == 0
    assert all(0 <= shard_of("ns", f"qc-{i}", 7) < 7 for i in range(100))
    # the namespace counts: one name in 50 namespaces lands on every shard
    assert len({shard_of(f"ns-{i}", "same", 8) for i in range(50)}) == 8


def test_shard_of_spreads_evenly() -> None:
    counts = collections.Counter(shard_of(f"ns-{i % 100}", f"qc-{i}", 8) for i in range(10_000))
    assert len(counts) == 8
    assert max(counts.values()) < 1.1 * 10_000 / 8 and min(counts.values()) > 0.9 * 10_000 / 8, counts


def test_shard_of_refuses_no_shards() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("ns", "qc", 0)


@pytest.mark.parametrize(
    ("shards", "live", "share"),
    [(8, 1, 8), (8, 2, 4), (8, 3, 3), (8, 8, 1), (8, 9, 1), (1, 2, 1), (10, 4, 3), (8, 0, 8)],
)
def test_fair_share(shards: int, live: int, share: int) -> None:
    assert fair_share(shards, live) == share
    assert share * max(1, live) >= shards  # every shard finds a holder


def test_margins_fit_in_the_lifetime() -> None:
    for lifetime in (3, 15, 60):
        assert 0 < stop_grace(lifetime) < stop_margin(lifetime) < lifetime


def _lease(holder: str = "", expires: float = 0.0, rv: str = "1") -> Lease:
    return Lease("x", holder, expires, rv)


@pytest.mark.parametrize(
    ("leases", "live"),
    [
        ([], 1),
        ([_lease("a", NOW + 5)], 2),
        ([_lease("a", NOW + 5), _lease("a", NOW + 5)], 2),  # one replica with two leases
        ([_lease("a", NOW - 1)], 1),  # expired: dead
        ([_lease("me", NOW + 5)], 1),  # itself
        ([_lease("a", NOW + 5), _lease("b", NOW + 1), _lease("", NOW + 9)], 3),
    ],
)
def test_live_replicas(leases: list[Lease], live: int) -> None:
    assert live_replicas(leases, "me", NOW) == live


def _shards(*holders: tuple[str, float]) -> dict[int, Lease]:
    return {i: Lease(f"s-{i}", h, e, "1") for i, (h, e) in enumerate(holders)}


ALIVE, DEAD = NOW + 10, NOW - 1


@pytest.mark.parametrize(
    ("holders", "held", "live", "acquire", "release"),
    [
        # alone, nothing held: takes all 4
        ([("", 0)] * 4, set(), 1, 4, ()),
        # a second replica appeared: the first (holding 4) releases its 2 highest
        ([("me", ALIVE)] * 4, {0, 1, 2, 3}, 2, 0, (3, 2)),
        # the new one: takes the 2 free, never the 2 held by the other
        ([("a", ALIVE), ("a", ALIVE), ("", 0), ("", 0)], set(), 2, 2, ()),
        # at its share: takes nothing more even with free ones
        ([("me", ALIVE), ("me", ALIVE), ("", 0), ("", 0)], {0, 1}, 2, 0, ()),
        # the other replica died: its expired shards are taken
        ([("me", ALIVE), ("me", ALIVE), ("a", DEAD), ("a", DEAD)], {0, 1}, 1, 2, ()),
        # a lease still naming itself (given up when a renew came late): its own to take again
        ([("me", ALIVE), ("a", ALIVE)], set(), 2, 1, ()),
        # three replicas, 8 shards: share 3
        ([("", 0)] * 8, set(), 3, 3, ()),
        ([("me", ALIVE)] * 8, set(range(8)), 3, 0, (7, 6, 5, 4, 3)),
    ],
)
def test_plan(
    holders: list[tuple[str, float]], held: set[int], live: int, acquire: int, release: tuple[int, ...]
) -> None:
    shards = _shards(*holders)
    moves = plan(shards, held, live, "me", NOW)
    assert moves.release == release
    assert len(moves.acquire) == acquire
    for i in moves.acquire:
        assert i not in held and shards[i].free(NOW, "me"), (i, shards[i])
        assert shards[i].holder in ("", "me") or shards[i].expires <= NOW, (i, shards[i])


def test_two_replicas_starting_from_different_points() -> None:
    free = _shards(*[("", 0.0)] * 8)
    a, b = plan(free, set(), 2, "pod-a", NOW), plan(free, set(), 2, "pod-b", NOW)
    assert len(a.acquire) == len(b.acquire) == 4
    assert a.acquire[0] != b.acquire[0] or shard_of("", "pod-a", 8) == shard_of("", "pod-b", 8)


@pytest.mark.parametrize(
    ("slots", "slot"),
    [
        ({0: _lease(), 1: _lease()}, "free"),
        ({0: _lease("a", ALIVE), 1: _lease("me", ALIVE)}, 1),  # its own
        ({0: _lease("a", ALIVE), 1: _lease("b", ALIVE)}, None),  # full
        ({0: _lease("a", ALIVE), 1: _lease("b", DEAD)}, 1),  # expired
    ],
)
def test_member_slot(slots: dict[int, Lease], slot: object) -> None:
    got = member_slot(slots, "me", NOW)
    if slot == "free":
        assert got in slots
    else:
        assert got == slot


def test_lease_of_and_times() -> None:
    renewed = "2026-12-07T00:20:58.123456Z"
    assert parse_time(renewed) == pytest.approx(parse_time(format_time(parse_time(renewed) or 0)))
    obj = {
        "metadata": {"name": "t-shard-3", "resourceVersion": "42"},
        "spec": {
            "holderIdentity": "pod-a",
            "renewTime": renewed,
            "leaseDurationSeconds": 15,
            "leaseTransitions": 2,
        },
    }
    lease = lease_of(obj)
    assert (lease.name, lease.holder, lease.resource_version, lease.transitions) == (
        "t-shard-3",
        "pod-a",
        "42",
        2,
    )
    assert lease.expires == pytest.approx((parse_time(renewed) or 0) + 15)
    # released (no holder), or a holder without renewTime: free
    assert lease_of({"metadata": {"name": "x"}, "spec": {"leaseTransitions": 1}}).free(NOW)
    assert lease_of({"metadata": {"name": "x"}, "spec": {"holderIdentity": "a"}}).free(NOW)
    assert parse_time("not a time") is None and parse_time(None) is None
