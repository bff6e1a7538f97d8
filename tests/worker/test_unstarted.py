"""A worker killed by a poison pill: only what had started counts as interrupted (issue 8, item 6).

Before, the reaper counted an interruption for every message in the dead worker's processing list, so
the good messages prefetched behind a pill were dead-lettered as poison with it after a few crash loops.
Now the worker keeps ``{Q}:unstarted:<worker>``: how many of the leftmost (newest fetched) entries no
lane started; the reaper returns those uncounted.
"""

from __future__ import annotations

import hashlib
import signal

import pytest
from tide_worker.envelope import decode, encode_envelope
from tide_worker.keys import QueueKeys
from tide_worker.records import DeadLetter
from tide_worker.scripts import source as script_source

from .conftest import push, wait_until

K = QueueKeys("q")
FAST = ["--heartbeat-ttl", "1", "--reaper-interval", "0.3", "--block-timeout", "0.5", "--max-interrupts", "1"]


@pytest.mark.parametrize("mode", ["default", "strict"])
@pytest.mark.parametrize(
    ("side", "queues"),
    [("right", ["q"]), ("left", ["q"]), ("right", ["q:1", "q2:1"])],
    ids=["right", "left", "two-queues"],
)
def test_poison_pill_dies_alone_and_its_neighbours_are_processed(r, spawn, side, queues, mode):
    """strict (--batch-size 1): only what ran is ever counted. default (adaptive): a fast handler's
    messages run in chunks, so the pill's first death also counts the rest of its chunk, once; the reap
    marks them suspects and the next worker runs them one at a time, so the next death counts the pill
    alone and no good message is dead-lettered."""
    bodies = ["g0", "g1", "pill", "g2", "g3", "g4"]
    push(r, "q", bodies, side=side)
    goods = ["g0", "g1", "g2", "g3", "g4"]
    if len(queues) > 1:
        # A second queue's messages are prefetched beside the pill: none is counted. Enough of them that
        # no worker blocks (a blocking fetch's move is counted only once a lane takes it: docs/worker.md).
        push(r, "q2", [f"o{i}" for i in range(5000)], side=side)
        goods += [f"o{i}" for i in range(5000)]
    queue_args = [a for q in queues for a in ("--queue", q)]
    strict = ["--batch-size", "1"] if mode == "strict" else []
    args = [*queue_args, "--handler", "tests.worker.handlers:pill", "--side", side, *strict, *FAST]
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
    ran = [x.decode() for x in r.lrange("log", 0, -1)]
    if mode == "strict":
        assert sorted(ran) == sorted(goods)
    else:  # a good message that ran before the pill in its chunk, unacked at the death, runs again
        assert set(ran) == set(goods) and len(ran) - len(goods) <= 5, ran[:20]
    for q in [x.split(":")[0] for x in queues]:
        k = QueueKeys(q)
        counts = [int(v) for v in r.hvals(k.interrupts)]
        if mode == "strict":
            assert counts == []  # no good message was ever counted as interrupted
        else:
            assert all(c == 1 for c in counts), counts  # counted once (the chunk), never again
        assert r.scard(k.suspects) == 0  # acked or dead-lettered: none left marked
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


def test_reap_marks_what_it_counted_as_suspects_until_acked(r):
    """The reap adds the SHA1 of each message it counted; a fetch returns their positions after the
    messages (the worker runs that batch one at a time); an ack, or the poison dead letter, unmarks."""
    raws = [encode_envelope(f"m{i}", message_id=f"m{i}") for i in range(4)]
    r.lpush(K.processing("dead"), *raws)  # m3 (newest fetched) at the left
    r.set(K.unstarted("dead"), 2)  # m3, m2 never started
    r.zadd(K.workers, {"dead": 1.0})
    reap = r.register_script(script_source("reap"))
    keys = [K.processing("dead"), "q", K.interrupts, K.dead, K.workers, K.worker("dead"), K.stats]
    keys += [K.unstarted("dead"), K.suspects]
    assert reap(keys=keys, args=["dead", 3, "right", 1.0, "q", 60]) == [4, 0]
    assert r.smembers(K.suspects) == {hashlib.sha1(x).hexdigest().encode() for x in raws[:2]}
    assert 0 < r.ttl(K.suspects) <= 60
    fetch = r.register_script(script_source("fetch_batch"))
    proc = K.processing("w")
    fkeys = ["q", proc, K.stats, K.unstarted("w"), K.workers, K.suspects]
    got = fetch(keys=fkeys, args=[10, "right", 0, "processed", "0", ""])
    assert got == [*raws, 1, 2]  # the messages in consumption order, then the suspects' positions
    assert fetch(keys=fkeys, args=[0, "right", 0, "processed", "", "", raws[0], raws[2]]) == []
    assert r.smembers(K.suspects) == {hashlib.sha1(raws[1]).hexdigest().encode()}
    # A suspect dead-lettered as poison is unmarked too.
    r.delete(proc)
    r.lpush(K.processing("dead"), raws[1])
    r.zadd(K.workers, {"dead": 1.0})
    assert reap(keys=keys, args=["dead", 1, "right", 1.0, "q", 60]) == [0, 1]
    assert not r.exists(K.suspects)


@pytest.mark.parametrize("marked", [False, True])
def test_suspects_run_one_at_a_time_while_others_run_in_chunks(r, spawn, marked):
    """The default (adaptive) runs a fast handler's messages in chunks: a script call serves many. A
    batch holding suspects runs one message per count, so each start is counted exactly."""
    n = 300
    raws = push(r, "q", [f"m{i}" for i in range(n)])
    if marked:
        r.sadd(K.suspects, *[hashlib.sha1(x).hexdigest() for x in raws])
    before = int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    w = spawn("--queue", "q", "--handler", "tests.worker.handlers:noop", "--block-timeout", "0.5")
    wait_until(lambda: int(r.hget(K.stats, "processed") or 0) == n, timeout=60, what="all processed")
    calls = int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)) - before
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.logs()
    if marked:
        assert calls >= n, calls  # a count landed before each start
        assert not r.exists(K.suspects)  # each unmarked by its ack
    else:
        assert calls < n / 4, calls


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
