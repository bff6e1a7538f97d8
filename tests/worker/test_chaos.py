"""Chaos: 20,000 messages, 4 worker processes, one SIGKILLed about every second and replaced.

Bodies say how the handler treats them: ``ok`` succeeds, ``transient`` fails its first two attempts,
``permanent`` always fails. At the end every message is processed or dead-lettered, none is lost, the
dead letters are exactly the permanent failures, and the only duplicates are messages a killed worker
held (bounded by what one worker can hold, times the number of kills).
"""

from __future__ import annotations

import collections
import random
import signal
import time

import pytest
from tide_worker.envelope import decode, encode_envelope
from tide_worker.keys import QueueKeys
from tide_worker.records import DeadLetter

from .conftest import wait_until

N = 20_000
WORKERS = 4
BATCH = 20
CONCURRENCY = 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "queues", [["chaos"], ["chaos:3", "chaos2:1"]], ids=["one-queue", "two-queues-weighted"]
)
def test_chaos_kill_workers_under_load(r, spawn, queues):
    names = [q.split(":")[0] for q in queues]
    keys = [QueueKeys(q) for q in names]
    rng = random.Random(1234)
    kinds = rng.choices(["ok", "transient", "permanent"], weights=[93, 5, 2], k=N)
    bodies = [f"{kind}:{i}" for i, kind in enumerate(kinds)]
    pipe = r.pipeline(transaction=False)
    for i in range(0, N, 1000):  # several queues: spread round robin
        for j, q in enumerate(names):
            chunk = bodies[i : i + 1000][j :: len(names)]
            pipe.lpush(q, *[encode_envelope(b) for b in chunk])
    pipe.execute()
    succeed = {b for b in bodies if not b.startswith("permanent")}
    permanent = {b for b in bodies if b.startswith("permanent")}

    args = [
        *[a for q in queues for a in ("--queue", q)], "--handler", "tests.worker.handlers:chaos",
        "--batch-size", str(BATCH), "--concurrency", str(CONCURRENCY),
        "--max-attempts", "3", "--backoff-base", "0.05", "--backoff-cap", "0.2",
        "--heartbeat-ttl", "2", "--reaper-interval", "0.5", "--max-interrupts", "1000",
        "--block-timeout", "0.5", "--log-level", "WARNING",
    ]  # fmt: skip
    env = {"TIDE_TEST_LOG": "chaos-log", "TIDE_TEST_SLEEP": "0.002"}
    workers = [spawn(*args, env=env) for _ in range(WORKERS)]
    kills = 0
    deadline = time.monotonic() + 150
    # Kill while the bulk is being processed; then let the survivors (and the reaper) finish.
    while r.llen("chaos-log") < N * 0.9 and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.7, 1.3))
        victim = rng.randrange(WORKERS)
        workers[victim].kill()
        kills += 1
        workers[victim] = spawn(*args, env=env)

    def finished() -> bool:
        dead = sum(r.llen(k.dead) for k in keys)
        return dead >= len(permanent) and len(set(r.lrange("chaos-log", 0, -1))) >= len(succeed)

    wait_until(finished, timeout=max(10.0, deadline - time.monotonic()), interval=0.5, what="all settled")
    for w in workers:
        w.signal(signal.SIGTERM)
    for w in workers:
        assert w.wait(60) == 0

    log = [x.decode() for x in r.lrange("chaos-log", 0, -1)]
    counts = collections.Counter(log)
    assert set(counts) == succeed  # every succeeding message ran; nothing else did
    dead = [DeadLetter.decode(x) for k in keys for x in r.lrange(k.dead, 0, -1)]
    dead_bodies = [decode(d.raw).body for d in dead]
    assert sorted(dead_bodies) == sorted(permanent)  # exactly the permanent failures, once each
    assert {d.reason for d in dead} == {"failed"}
    where = {b: names[i % 1000 % len(names)] for i, b in enumerate(bodies)}
    assert all(d.queue == where[decode(d.raw).body] for d in dead)  # in its own queue's dead letters
    # Nothing left anywhere.
    for q, k in zip(names, keys, strict=True):
        assert r.llen(q) == 0 and r.zcard(k.delayed) == 0
        assert not r.keys(k.prefix + ":processing:*")
    # Duplicates come only from kills: each killed worker held at most a batch prefetched, a chunk
    # running per lane and its unacked successes.
    duplicates = sum(c - 1 for c in counts.values())
    assert kills >= 3
    assert duplicates <= kills * (3 * BATCH + CONCURRENCY)
    print(f"chaos: {kills} kills, {duplicates} duplicate runs, {len(dead)} dead letters")
