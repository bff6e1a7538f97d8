"""A worker killed by a poison pill: only what had started counts as interrupted (issue 8, item 6).

Before, the reaper counted an interruption for every message in the dead worker's processing list, so
the good messages prefetched behind a pill were dead-lettered as poison with it after a few crash loops.
Now the worker keeps ``{Q}:unstarted:<worker>``: how many of the leftmost (newest fetched) entries no
lane started; the reaper returns those uncounted.
"""

from __future__ import annotations

import signal

import pytest
from tide_worker.envelope import decode, encode_envelope
from tide_worker.keys import QueueKeys
from tide_worker.records import DeadLetter
from tide_worker.scripts import source as script_source

from .conftest import push, wait_until

K = QueueKeys("q")
FAST = ["--heartbeat-ttl", "1", "--reaper-interval", "0.3", "--block-timeout", "0.5", "--max-interrupts", "1"]


@pytest.mark.parametrize(
    ("side", "queues"),
    [("right", ["q"]), ("left", ["q"]), ("right", ["q:1", "q2:1"])],
    ids=["right", "left", "two-queues"],
)
def test_poison_pill_dies_alone_and_its_neighbours_are_processed(r, spawn, side, queues):
    bodies = ["g0", "g1", "pill", "g2", "g3", "g4"]
    push(r, "q", bodies, side=side)
    goods = ["g0", "g1", "g2", "g3", "g4"]
    if len(queues) > 1:
        # A second queue's messages are prefetched beside the pill: none is counted. Enough of them that
        # no worker blocks (a blocking fetch's move is counted only once a lane takes it: docs/worker.md).
        push(r, "q2", [f"o{i}" for i in range(5000)], side=side)
        goods += [f"o{i}" for i in range(5000)]
    queue_args = [a for q in queues for a in ("--queue", q)]
    args = [*queue_args, "--handler", "tests.worker.handlers:pill", "--side", side, *FAST]
    env = {"TIDE_TEST_LOG": "log"}
    deaths = 0
    # One worker at a time: each dies on the pill, and the next one reaps it (once its heartbeat
    # expired), until a reap dead-letters the pill; that worker then finishes the queue.
    while True:
        w = spawn(*args, env=env)
        wait_until(
            lambda w=w: w.proc.poll() is not None or r.llen(K.dead) > 0, timeout=60, what="death or pill"
        )
        if r.llen(K.dead) > 0:
            break
        assert w.wait(10) == 17, w.logs()
        deaths += 1
        assert deaths < 6, "the pill was never dead-lettered"
    wait_until(lambda: r.llen("log") >= len(goods), timeout=120, what="every good message processed")
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.logs()
    assert deaths == 2  # --max-interrupts 1: dead-lettered at its second interruption
    [dl] = [DeadLetter.decode(x) for x in r.lrange(K.dead, 0, -1)]
    assert decode(dl.raw).body == "pill" and dl.reason == "poison" and "interrupted 2 times" in dl.error
    assert sorted(x.decode() for x in r.lrange("log", 0, -1)) == sorted(goods)
    for q in [x.split(":")[0] for x in queues]:
        k = QueueKeys(q)
        assert r.hlen(k.interrupts) == 0  # no good message was ever counted as interrupted
        assert (
            r.llen(q) == 0
            and not r.keys(k.prefix + ":processing:*")
            and not r.keys(k.prefix + ":unstarted:*")
        )


def test_reap_counts_only_entries_past_the_unstarted_count(r, redis_url):
    raws = [encode_envelope(f"m{i}", message_id=f"m{i}") for i in range(5)]
    r.lpush(K.processing("dead"), *raws)  # m4 (newest fetched) at the left
    r.set(K.unstarted("dead"), 3)  # m4, m3, m2 never started
    r.zadd(K.workers, {"dead": 1.0})
    reap = r.register_script(script_source("reap"))
    keys = [K.processing("dead"), "q", K.interrupts, K.dead, K.workers, K.worker("dead"), K.stats]
    assert reap(keys=[*keys, K.unstarted("dead")], args=["dead", 3, "right", 1.0, "q", 60]) == [5, 0]
    assert sorted(r.hkeys(K.interrupts)) == [b"m0", b"m1"]
    assert r.lrange("q", 0, -1)[::-1] == raws  # all back, in fetch order
    assert not r.exists(K.unstarted("dead")) and not r.exists(K.processing("dead"))
    # A frozen count (-1, after a requeue) counts everything, as does no count.
    r.lpush(K.processing("dead"), *raws[:2])
    r.set(K.unstarted("dead"), -1)
    assert reap(keys=[*keys, K.unstarted("dead")], args=["dead", 3, "right", 1.0, "q", 60]) == [2, 0]
    assert r.hget(K.interrupts, "m0") == b"2" and r.hget(K.interrupts, "m1") == b"2"


def test_removing_an_unstarted_entry_shrinks_the_count(r):
    proc, u = K.processing("w"), K.unstarted("w")
    r.lpush(proc, b"started", b"bad", b"new")  # new, bad never started
    r.set(u, 2)
    dead = r.register_script(script_source("dead"))
    assert dead(keys=[proc, K.dead, K.stats, u], args=[b"bad", b"{}"]) == 1
    assert r.get(u) == b"1"  # else "started" would slide in among the uncounted
    assert dead(keys=[proc, K.dead, K.stats, u], args=[b"started", b"{}"]) == 1
    assert r.get(u) == b"1"  # outside the uncounted: unchanged
    # A requeue freezes it; a fetch then leaves it frozen unless told to thaw it.
    fetch = r.register_script(script_source("fetch_batch"))
    requeue = r.register_script(script_source("requeue_head"))
    assert requeue(keys=[proc, "q", u], args=["right", "except"]) == 1
    assert r.get(u) == b"-1"
    fetch(keys=["q", proc, K.stats, u], args=[1, "right", 0, "processed", "0"])
    assert r.get(u) == b"-1"
    fetch(keys=["q", proc, K.stats, u], args=[0, "right", 0, "processed", "!5"])
    assert r.get(u) == b"5"
    fetch(keys=["q", proc, K.stats, u], args=[0, "right", 0, "processed", "-3"])
    assert r.get(u) == b"0"
