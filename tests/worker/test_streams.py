"""Stream consumption: group creation, ack, retries via XAUTOCLAIM, delivery-count dead letters, reaping."""

from __future__ import annotations

import time

from tide_worker.envelope import encode_envelope
from tide_worker.keys import StreamKeys

from .conftest import wait_until

SK = StreamKeys("s", "g")


def add(r, bodies):
    return [r.xadd("s", {"data": encode_envelope(b)}).decode() for b in bodies]


def test_group_created_at_start_of_stream_and_entries_acked(r, start_worker):
    add(r, ["a", "b", "c"])  # before the group exists: still consumed
    seen: list[str] = []
    w = start_worker(lambda m: seen.append(m.body), queue=None, stream="s", group="g", batch_size=10)
    wait_until(lambda: seen == ["a", "b", "c"])
    add(r, ["d"])
    wait_until(lambda: seen == ["a", "b", "c", "d"])
    wait_until(lambda: r.xpending("s", "g")["pending"] == 0, what="acked")
    groups = r.xinfo_groups("s")
    assert [g["name"] for g in groups] == [b"g"]
    assert r.xlen("s") == 4  # entries are kept; producers trim with MAXLEN
    consumers = r.xinfo_consumers("s", "g")
    assert [c["name"].decode() for c in consumers] == [w.worker.cfg.worker_id]


def test_entries_without_data_field_are_bodies(r, start_worker):
    r.xadd("s", {"order": "42", "kind": "refund"})
    got: list[object] = []
    start_worker(lambda m: got.append((m.body, m.enveloped)), queue=None, stream="s", group="g")
    wait_until(lambda: got == [({"order": "42", "kind": "refund"}, False)])


def test_failure_is_redelivered_after_backoff_then_dead_lettered_by_delivery_count(r, start_worker):
    runs: list[int] = []

    def handle(msg):
        runs.append(msg.attempts)
        raise RuntimeError("nope")

    [eid] = add(r, ["x"])
    start_worker(handle, queue=None, stream="s", group="g", max_attempts=3, claim_idle=0.3, backoff_base=0.05)
    wait_until(lambda: r.xlen(SK.dead) == 1, timeout=20)
    assert runs == [0, 1, 2]  # delivery count = attempts
    [(_, fields)] = r.xrange(SK.dead)
    f = {k.decode(): v.decode() for k, v in fields.items()}
    assert f["reason"] == "failed" and f["stream_id"] == eid and f["attempts"] == "3"
    assert "RuntimeError('nope')" in f["error"] and f["queue"] == "s"
    wait_until(lambda: r.xpending("s", "g")["pending"] == 0, what="acked after dead-lettering")


def test_malformed_entry_dead_lettered(r, start_worker):
    r.xadd("s", {"data": b'{"v":2,"id":"x","body":1}'})
    add(r, ["ok"])
    seen: list[str] = []
    start_worker(lambda m: seen.append(m.body), queue=None, stream="s", group="g")
    wait_until(lambda: seen == ["ok"] and r.xlen(SK.dead) == 1)
    [(_, fields)] = r.xrange(SK.dead)
    assert fields[b"reason"] == b"malformed"


def test_killed_consumers_entries_are_claimed_and_the_consumer_removed(r, start_worker):
    r.xgroup_create("s", "g", id="0", mkstream=True)
    add(r, ["p1", "p2", "p3"])
    r.xreadgroup("g", "ghost", {"s": ">"}, count=3)  # a consumer that then died
    assert r.xpending("s", "g")["pending"] == 3
    seen: list[str] = []
    start_worker(
        lambda m: seen.append(m.body),
        queue=None,
        stream="s",
        group="g",
        claim_idle=0.3,
        reaper_interval=0.2,
        batch_size=10,
    )
    wait_until(lambda: sorted(seen) == ["p1", "p2", "p3"], timeout=20)
    wait_until(lambda: r.xpending("s", "g")["pending"] == 0)
    wait_until(lambda: b"ghost" not in [c["name"] for c in r.xinfo_consumers("s", "g")], timeout=20)


def test_crash_past_max_attempts_is_poison(r, start_worker):
    r.xgroup_create("s", "g", id="0", mkstream=True)
    add(r, ["boom"])
    for _ in range(2):  # delivered twice to consumers that died
        r.xautoclaim("s", "g", "ghost", 0, "0-0") if r.xpending("s", "g")["pending"] else r.xreadgroup(
            "g", "ghost", {"s": ">"}
        )
    seen: list[str] = []
    start_worker(
        lambda m: seen.append(m.body), queue=None, stream="s", group="g", claim_idle=0.2, max_attempts=2
    )
    wait_until(lambda: r.xlen(SK.dead) == 1, timeout=20)
    [(_, fields)] = r.xrange(SK.dead)
    assert fields[b"reason"] == b"poison"
    assert seen == []


def test_long_handler_is_not_claimed_away(r, start_worker):
    runs: list[str] = []

    def handle(msg):
        runs.append(msg.body)
        time.sleep(1.2)

    r.xgroup_create("s", "g", id="0", mkstream=True)
    add(r, ["long"])
    start_worker(handle, queue=None, stream="s", group="g", claim_idle=0.4, heartbeat_ttl=0.3)
    start_worker(handle, queue=None, stream="s", group="g", claim_idle=0.4, heartbeat_ttl=0.3)
    wait_until(lambda: r.xpending("s", "g")["pending"] == 0 and runs, timeout=20)
    time.sleep(0.5)
    assert runs == ["long"]
