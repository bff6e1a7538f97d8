"""Several list queues per worker (multisource.py): strict priority, weights, per-queue keys."""

from __future__ import annotations

import argparse
import signal

import pytest
from tide_worker import worker_cli
from tide_worker.config import parse_queues
from tide_worker.envelope import decode
from tide_worker.keys import QueueKeys
from tide_worker.multisource import SmoothWeighted
from tide_worker.records import DeadLetter

from .conftest import push, wait_until


def recorded(r, key="log"):
    return [x.decode() for x in r.lrange(key, 0, -1)]


def test_smooth_weighted_gives_each_its_weight_per_round_spread_out():
    sw = SmoothWeighted([3, 1])
    picks = [sw.pick() for _ in range(8)]
    assert picks == [0, 0, 1, 0, 0, 0, 1, 0]
    assert SmoothWeighted([5, 2, 1]).shares(8 * 100) == [500, 200, 100]


@pytest.mark.parametrize(
    ("items", "names", "weights"),
    [
        (["queue:images"], ["queue:images"], []),  # one queue: the name as given, colon and all
        (["jobs:7"], ["jobs:7"], []),
        (["high", "low"], ["high", "low"], []),
        (["high:3", "low:1"], ["high", "low"], [3, 1]),
        (["q:a:2", "q:b:1"], ["q:a", "q:b"], [2, 1]),
    ],
)
def test_parse_queues(items, names, weights):
    assert parse_queues(items) == (names, weights)


@pytest.mark.parametrize(
    ("items", "says"),
    [
        (["high:3", "low"], "every queue a weight"),
        (["high:0", "low:1"], "from 1 to"),
        (["a", "a"], "distinct"),
    ],
)
def test_parse_queues_refuses_with_a_clear_message(items, says):
    with pytest.raises(ValueError, match=says):
        parse_queues(items)


def test_cli_repeats_queue_and_reads_tide_queues(monkeypatch):
    parser = argparse.ArgumentParser()
    worker_cli.add_arguments(parser)
    cfg = worker_cli.config_from_args(
        parser.parse_args(["--handler", "m:f", "--queue", "a:2", "--queue", "b:1"])
    )
    assert (cfg.queue, cfg.queues, cfg.weights, cfg.source_name) == (None, ["a", "b"], [2, 1], "a,b")
    monkeypatch.setenv("TIDE_QUEUES", "hi,lo")
    cfg = worker_cli.config_from_args(parser.parse_args(["--handler", "m:f"]))
    assert (cfg.queue, cfg.queues, cfg.weights) == (None, ["hi", "lo"], [])
    cfg = worker_cli.config_from_args(parser.parse_args(["--handler", "m:f", "--queue", "one"]))
    assert (cfg.queue, cfg.queues) == ("one", [])  # the command line wins over the environment


@pytest.mark.parametrize("batch", [1, 10])
def test_strict_priority_drains_high_before_low(r, spawn, batch):
    push(r, "high", [f"h{i:03d}" for i in range(300)])
    push(r, "low", [f"l{i:03d}" for i in range(300)])
    w = spawn(
        "--queue", "high", "--queue", "low", "--handler", "tests.worker.handlers:record",
        "--batch-size", str(batch), "--concurrency", "1", env={"TIDE_TEST_LOG": "log"},
    )  # fmt: skip
    wait_until(lambda: r.llen("log") == 600, timeout=60)
    done = recorded(r)
    assert done[:300] == [f"h{i:03d}" for i in range(300)]  # every high, in order, before any low
    assert done[300:] == [f"l{i:03d}" for i in range(300)]
    # High arriving while low drains is taken next (within the batch already fetched).
    push(r, "low", [f"l{i:03d}" for i in range(300, 2300)])
    wait_until(lambda: r.llen("log") >= 700, timeout=60)
    push(r, "high", ["urgent"])
    wait_until(lambda: "urgent" in recorded(r), timeout=60)
    after = r.llen("low")
    assert after > 0  # low was not drained first
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.logs()
    for q in ("high", "low"):
        k = QueueKeys(q)
        assert not r.keys(k.prefix + ":processing:*") and r.zcard(k.workers) == 0


def test_weights_hold_within_ten_percent_over_10000_messages(r, spawn):
    n = 10_000
    push(r, "heavy", [f"h{i}" for i in range(n)])
    push(r, "light", [f"l{i}" for i in range(n)])
    w = spawn(
        "--queue", "heavy:3", "--queue", "light:1", "--handler", "tests.worker.handlers:record",
        "--batch-size", "20", "--concurrency", "1", "--log-level", "WARNING", env={"TIDE_TEST_LOG": "log"},
    )  # fmt: skip
    wait_until(lambda: r.llen("log") >= n, timeout=240, interval=0.2)
    w.signal(signal.SIGTERM)
    assert w.wait(60) == 0, w.logs()
    first = recorded(r)[:n]
    heavy = sum(1 for b in first if b.startswith("h"))
    light = n - heavy
    assert abs(heavy / light - 3.0) <= 0.3, (heavy, light)
    # Both queues still hold messages (the shares were not a drained queue's leftovers), and what was
    # fetched but not run went back: nothing lost.
    assert r.llen("heavy") + r.llen("light") + r.llen("log") == 2 * n
    assert r.llen("light") > 0 and r.llen("heavy") > 0


def test_retries_dead_letters_and_registry_stay_per_queue(r, spawn):
    push(r, "a", ["ok-a", "reject-a"])
    push(r, "b", ["ok-b", "reject-b"])
    w = spawn(
        "--queue", "a", "--queue", "b", "--handler", "tests.worker.handlers:reject_some",
        "--heartbeat-ttl", "3", env={"TIDE_TEST_LOG": "log"},
    )  # fmt: skip
    for q in ("a", "b"):
        k = QueueKeys(q)
        wait_until(lambda k=k: r.llen(k.dead) == 1, timeout=30)
        [dl] = [DeadLetter.decode(x) for x in r.lrange(k.dead, 0, -1)]
        assert dl.queue == q and decode(dl.raw).body == f"reject-{q}"
        assert r.zcard(k.workers) == 1  # registered on each queue it consumes
    wait_until(lambda: sorted(recorded(r)) == ["ok-a", "ok-b"], timeout=30)
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.logs()
    for q in ("a", "b"):
        assert r.zcard(QueueKeys(q).workers) == 0


def test_the_unstarted_count_splits_per_queue_in_fetch_order(r, redis_url):
    import asyncio

    import redis.asyncio as aredis
    from tide_worker.config import WorkerConfig
    from tide_worker.multisource import MultiListSource

    push(r, "a", [f"a{i}" for i in range(5)])
    push(r, "b", [f"b{i}" for i in range(5)])
    ka, kb = QueueKeys("a"), QueueKeys("b")

    def counts():
        return [int(r.get(k.unstarted("w")) or 0) for k in (ka, kb)]

    async def go():
        client = aredis.Redis.from_url(redis_url)
        cfg = WorkerConfig(handler="x:y", queues=["a", "b"], weights=[1, 1], worker_id="w", metrics_port=-1)
        src = MultiListSource(client, cfg)
        out = []
        got = await src.fetch_counting(4, [], 0)  # two of each (smooth 1:1), a's first; none started
        out.append(([d.msg.body for d in got], counts()))
        await src.set_unstarted(1)  # only the newest (b1) unstarted
        out.append(counts())
        got = await src.fetch_counting(2, [], -1)  # the first fetched here goes to an idle lane at once
        out.append(([d.msg.body for d in got], counts()))
        await client.aclose()
        return out

    first, second, third = asyncio.run(go())
    assert first == (["a0", "a1", "b0", "b1"], [2, 2])
    assert second == [0, 1]  # b1, the newest fetched, is the one still unstarted
    # a2 went to the idle lane (started), b2 waits: a count of -1 + 2 fetched lands on b alone
    assert third == (["a2", "b2"], [0, 1])
