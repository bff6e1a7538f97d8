"""The list worker against a real Redis: fetch, ack, retries, dead letters, timeouts, dedupe, sides."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from tide_local.redisproc import RedisServer
from tide_worker import Reject, RetryAfter
from tide_worker.envelope import decode, encode_envelope
from tide_worker.keys import QueueKeys
from tide_worker.records import DeadLetter, Heartbeat

from .conftest import push, wait_until

K = QueueKeys("q")


def dead_letters(r, queue="q"):
    return [DeadLetter.decode(x) for x in r.lrange(QueueKeys(queue).dead, 0, -1)]


@pytest.mark.parametrize("batch", [1, 25])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_fifo_and_ack_leaves_processing_empty(r, start_worker, batch, kind):
    seen: list[str] = []
    if kind == "sync":

        def handle(msg):
            seen.append(msg.body)

    else:

        async def handle(msg):
            await asyncio.sleep(0)
            seen.append(msg.body)

    bodies = [f"m{i}" for i in range(200)]
    push(r, "q", bodies)
    w = start_worker(handle, batch_size=batch)
    wait_until(lambda: len(seen) == 200)
    wait_until(lambda: r.llen(K.processing(w.worker.cfg.worker_id)) == 0, what="acks")
    assert seen == bodies  # one lane: strict FIFO
    assert r.llen("q") == 0
    assert w.stop() == 0
    assert int(r.hget(K.stats, "processed")) == 200
    # A clean exit leaves no registry entry and no heartbeat behind.
    assert r.zcard(K.workers) == 0 and not r.exists(K.worker(w.worker.cfg.worker_id))


def test_left_side_for_rpush_producers(r, start_worker):
    seen: list[str] = []
    push(r, "q", [f"m{i}" for i in range(50)], side="left")
    start_worker(lambda m: seen.append(m.body), side="left", batch_size=10)
    wait_until(lambda: len(seen) == 50)
    assert seen == [f"m{i}" for i in range(50)]


def test_plain_strings_and_json_bodies_are_consumed(r, start_worker):
    got: list[object] = []
    r.lpush("q", b"hello world", b'{"not": "an envelope"}', "caf\u00e9".encode())
    start_worker(lambda m: got.append((m.body, m.enveloped, m.attempts)))
    wait_until(lambda: len(got) == 3)
    assert got == [("hello world", False, 0), ('{"not": "an envelope"}', False, 0), ("caf\u00e9", False, 0)]


def test_malformed_messages_go_to_dead_letters_and_do_not_block(r, start_worker):
    seen: list[str] = []
    r.lpush("q", b"\xff\xfe not utf-8")
    r.lpush("q", json.dumps({"v": 99, "id": "x", "body": 1}).encode())
    push(r, "q", ["after"])
    start_worker(lambda m: seen.append(m.body))
    wait_until(lambda: seen == ["after"])
    wait_until(lambda: r.llen(K.dead) == 2)
    dls = {d.reason + ":" + d.error.split(":")[0] for d in dead_letters(r)}
    assert dls == {"malformed:undecodable", "malformed:wrong shape"}
    raws = {d.raw for d in dead_letters(r)}
    assert b"\xff\xfe not utf-8" in raws  # kept byte for byte (base64 in the record)


def test_failure_retries_through_delayed_set_with_backoff(r, start_worker):
    runs: list[tuple[int, float]] = []

    def handle(msg):
        runs.append((msg.attempts, time.monotonic()))
        if msg.attempts < 2:
            raise RuntimeError("try again")

    push(r, "q", ["x"])
    start_worker(handle, backoff_base=0.3, backoff_cap=0.3, promote_interval=0.05)
    # The first failure parks the next attempt in the retry set, due in the future.
    wait_until(lambda: r.zcard(K.delayed) == 1 or len(runs) >= 2, what="retry scheduled")
    wait_until(lambda: len(runs) == 3)
    assert [a for a, _ in runs] == [0, 1, 2]
    wait_until(lambda: int(r.hget(K.stats, "processed") or 0) == 1)
    assert r.zcard(K.delayed) == 0 and r.llen(K.dead) == 0
    assert int(r.hget(K.stats, "retried")) == 2


def test_retry_lands_in_delayed_with_next_attempt_and_due_time(r, start_worker):
    def handle(msg):
        raise RuntimeError("boom")

    push(r, "q", ["x"])
    before = time.time()
    start_worker(handle, backoff_base=60, backoff_cap=60)
    wait_until(lambda: r.zcard(K.delayed) == 1)
    [(raw, due)] = r.zrange(K.delayed, 0, -1, withscores=True)
    msg = decode(raw)
    assert msg.attempts == 1 and msg.body == "x"
    assert before <= due <= time.time() + 60


def test_retry_after_schedules_the_given_delay(r, start_worker):
    runs: list[float] = []

    def handle(msg):
        runs.append(time.time())
        if len(runs) == 1:
            raise RetryAfter(30)

    push(r, "q", ["x"])
    start_worker(handle, backoff_base=0)
    wait_until(lambda: r.zcard(K.delayed) == 1)
    [(_, due)] = r.zrange(K.delayed, 0, -1, withscores=True)
    assert due == pytest.approx(runs[0] + 30, abs=2)
    # Make it due now: the promoter brings it back and it succeeds.
    raw = r.zrange(K.delayed, 0, -1)[0]
    r.zadd(K.delayed, {raw: time.time() - 1})
    wait_until(lambda: len(runs) == 2)


def test_reject_dead_letters_at_once(r, start_worker):
    runs: list[int] = []

    def handle(msg):
        runs.append(msg.attempts)
        raise Reject("bad customer id")

    push(r, "q", ["x"])
    w = start_worker(handle)
    wait_until(lambda: r.llen(K.dead) == 1)
    [d] = dead_letters(r)
    assert (d.reason, d.error, d.attempts, d.worker) == (
        "rejected",
        "bad customer id",
        1,
        w.worker.cfg.worker_id,
    )
    assert runs == [0] and r.zcard(K.delayed) == 0


def test_max_attempts_dead_letter_record(r, start_worker):
    def handle(msg):
        raise ValueError(f"nope {msg.attempts}")

    [raw] = push(r, "q", ["x"])
    mid = decode(raw).id
    w = start_worker(handle, max_attempts=3, backoff_base=0.01, backoff_cap=0.01, promote_interval=0.05)
    wait_until(lambda: r.llen(K.dead) == 1)
    [d] = dead_letters(r)
    assert d.reason == "failed"
    assert d.error == "ValueError('nope 2')"
    assert "ValueError: nope 2" in d.traceback and "in handle" in d.traceback
    assert d.attempts == 3 and d.message_id == mid and d.worker == w.worker.cfg.worker_id
    assert abs(d.time - time.time()) < 30 and d.queue == "q"
    assert decode(d.raw).body == "x"
    assert r.zcard(K.delayed) == 0 and r.llen("q") == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_handler_timeout_fails_then_dead_letters_with_reason_timeout(r, start_worker, kind):
    release = threading.Event()
    done: list[str] = []
    if kind == "sync":

        def handle(msg):
            if msg.body == "slow":
                release.wait(20)
            else:
                done.append(msg.body)

    else:

        async def handle(msg):
            if msg.body == "slow":
                await asyncio.sleep(20)
            else:
                done.append(msg.body)

    push(r, "q", ["slow", "fast"])
    w = start_worker(handle, handler_timeout=0.3, max_attempts=2, backoff_base=0.01, promote_interval=0.05)
    wait_until(lambda: r.llen(K.dead) == 1)
    [d] = dead_letters(r)
    assert d.reason == "timeout" and d.attempts == 2
    assert done == ["fast"]  # the stuck handler did not hold up the next message
    if kind == "sync":
        assert w.worker.abandoned_threads >= 1
    release.set()


def test_sync_timeout_in_a_batch_only_fails_the_slow_message(r, start_worker):
    release = threading.Event()
    done: list[str] = []

    def handle(msg):
        if msg.body == "slow":
            release.wait(20)
        done.append(msg.body)

    bodies = ["a", "b", "slow", "c", "d"]
    push(r, "q", bodies)
    start_worker(handle, batch_size=10, handler_timeout=0.3, backoff_base=60)
    wait_until(lambda: r.zcard(K.delayed) == 1)
    wait_until(lambda: sorted(done) == ["a", "b", "c", "d"])
    assert decode(r.zrange(K.delayed, 0, -1)[0]).body == "slow"
    release.set()


def test_direct_lane_timeout_mid_chunk_hands_the_rest_to_a_new_thread(r, start_worker):
    """The adaptive default of a fast sync handler takes chunks in its direct lane (direct.py): a handler
    past its timeout inside one is abandoned with its thread; the message is retried, and what finished
    before it and the chunk's unstarted rest are acked and run once, by a lane on a new thread."""
    release = threading.Event()
    done: list[str] = []
    chunks: list[int] = []

    def handle(msg):
        if msg.body == "slow":
            run = w.worker.direct.current
            chunks.append(len(run.deliveries) - run.next_index)  # the chunk's rest, after this one
            release.wait(20)
            return
        done.append(msg.body)

    # Chunks of 1 (no run measured yet), then 100 (the cap): "slow" falls inside the third.
    bodies = [f"m{i}" for i in range(150)] + ["slow"] + [f"n{i}" for i in range(450)]
    push(r, "q", bodies)
    w = start_worker(handle, handler_timeout=0.3, backoff_base=60)
    assert w.worker.direct is not None
    wait_until(lambda: r.zcard(K.delayed) == 1)
    wait_until(lambda: len(done) == 600)
    assert sorted(done) == sorted(b for b in bodies if b != "slow")  # each once: none lost, none twice
    assert chunks and chunks[0] > 0, "the slow message ran inside a chunk, not at its end"
    assert decode(r.zrange(K.delayed, 0, -1)[0]).body == "slow"
    assert w.worker.abandoned_threads == 1
    wait_until(lambda: int(r.hget(K.stats, "processed") or 0) == 600)
    wait_until(lambda: r.llen(K.processing(w.worker.cfg.worker_id)) == 0)
    release.set()


def test_dedupe_skips_ids_that_already_succeeded(r, start_worker):
    runs: list[str] = []
    raw = encode_envelope("x", message_id="order-1")
    r.lpush("q", raw)
    w = start_worker(lambda m: runs.append(m.id), dedupe_ttl=60)
    wait_until(lambda: runs == ["order-1"])
    wait_until(lambda: r.exists(K.dedupe("order-1")))
    assert 0 < r.ttl(K.dedupe("order-1")) <= 60
    r.lpush("q", raw)  # redelivered (say, by a crash after the handler ran)
    r.lpush("q", encode_envelope("y", message_id="order-2"))
    wait_until(lambda: runs == ["order-1", "order-2"])
    wait_until(lambda: w.worker.metrics.deduped._value.get() == 1)
    assert r.llen("q") == 0


def test_brpoplpush_fallback(r, start_worker):
    seen: list[str] = []
    w = start_worker(lambda m: seen.append(m.body), fetch_command="brpoplpush", block_timeout=1)
    time.sleep(0.3)  # the worker is now blocked in BRPOPLPUSH on the empty queue
    push(r, "q", ["a", "b", "c"])
    wait_until(lambda: seen == ["a", "b", "c"])
    assert w.worker.source.use_blmove is False  # type: ignore[attr-defined]

    def my_commands():
        name = f"tide-worker:{w.worker.cfg.worker_id}"
        return {c.get("cmd") for c in r.client_list() if c.get("name") == name}

    wait_until(lambda: "brpoplpush" in my_commands(), what="blocked in BRPOPLPUSH")
    assert "blmove" not in my_commands()


@pytest.fixture(scope="module")
def no_blmove_server() -> Iterator[RedisServer]:
    """A server that answers BLMOVE as one before 6.2 does: an unknown command (renamed away)."""
    with RedisServer(extra_args=["--rename-command", "BLMOVE", ""]) as server:
        yield server


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_fallback_on_unknown_command(no_blmove_server, start_worker, kind):
    """A server without BLMOVE is waited on with BRPOPLPUSH, by the direct lane of a sync handler and by
    the pipeline alike."""
    from tide_worker import listsource

    seen: list[str] = []

    def record(m):
        seen.append(m.body)

    async def arecord(m):
        seen.append(m.body)

    url = no_blmove_server.url
    with no_blmove_server.client() as r:
        r.flushall()
        w = start_worker(record if kind == "sync" else arecord, block_timeout=1, redis_url=url)
        assert (w.worker.direct is not None) == (kind == "sync")
        time.sleep(0.3)
        push(r, "q", ["a", "b"])
        wait_until(lambda: seen == ["a", "b"])
        wait_until(lambda: w.worker.source.use_blmove is False)  # type: ignore[attr-defined]
        assert listsource.ListSource is type(w.worker.source)
        name = f"tide-worker:{w.worker.cfg.worker_id}"
        wait_until(
            lambda: any(c.get("cmd") == "brpoplpush" and c.get("name") == name for c in r.client_list())
        )


def test_heartbeat_registry_and_rate(r, start_worker):
    push(r, "q", [str(i) for i in range(100)])
    w = start_worker(lambda m: time.sleep(0.002), heartbeat_ttl=0.6)
    wid = w.worker.cfg.worker_id
    wait_until(lambda: r.zscore(K.workers, wid) is not None)
    ttl = r.pttl(K.worker(wid))
    assert 0 < ttl <= 600
    wait_until(lambda: Heartbeat.decode(r.get(K.worker(wid))).rate > 0, what="rate published")
    hb = Heartbeat.decode(r.get(K.worker(wid)))
    assert hb.id == wid and hb.concurrency == 1 and hb.processed > 0 and hb.rate_window > 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_heartbeat_says_how_long_the_worker_has_been_idle(r, start_worker, kind):
    """``idle_since``: 0 while a message runs, then when the last one finished (what the operator's
    idle-pods rule reads), on the direct path (sync) and the event loop's (async)."""
    release = threading.Event()

    def hold(m):
        release.wait(10)

    async def ahold(m):
        await asyncio.to_thread(release.wait, 10)

    w = start_worker(hold if kind == "sync" else ahold, heartbeat_ttl=0.6)
    wid = w.worker.cfg.worker_id
    wait_until(lambda: r.get(K.worker(wid)) is not None)
    assert Heartbeat.decode(r.get(K.worker(wid))).idle_since >= w.worker.started  # nothing ran yet
    push(r, "q", ["long"])
    wait_until(lambda: Heartbeat.decode(r.get(K.worker(wid))).inflight == 1, what="running")
    assert Heartbeat.decode(r.get(K.worker(wid))).idle_since == 0.0
    finished = time.time()
    release.set()
    wait_until(lambda: Heartbeat.decode(r.get(K.worker(wid))).idle_since > 0, what="idle again")
    hb = Heartbeat.decode(r.get(K.worker(wid)))
    assert finished <= hb.idle_since <= hb.ts and hb.idle_for() == hb.ts - hb.idle_since


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_queue_wait_histogram_counts_first_attempts_from_their_enqueue_time(r, start_worker, kind):
    """Enqueue time (the envelope's) to handler start, for first attempts only: a retry's envelope keeps
    the first enqueue time, and a plain string carries none."""
    now = time.time()
    msgs = [encode_envelope(1, ts=now - 30), encode_envelope(2, ts=now - 20)]
    msgs += [encode_envelope(3, ts=now - 1000, attempts=2), b"plain"]
    r.lpush(K.ready, *msgs)

    def sync_handler(m):
        return None

    async def async_handler(m):
        return None

    w = start_worker(sync_handler if kind == "sync" else async_handler, metrics_port=0)
    wait_until(lambda: w.worker.http is not None and w.worker.processed == 4)
    with urllib.request.urlopen(f"http://127.0.0.1:{w.worker.http.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    lines = {
        ln.split(" ")[0]: float(ln.split(" ")[1])
        for ln in text.splitlines()
        if ln.startswith("tide_queue_wait")
    }
    assert lines['tide_queue_wait_seconds_count{queue="q"}'] == 2
    assert (
        50 <= lines['tide_queue_wait_seconds_sum{queue="q"}'] < 50 + 60
    )  # 30 + 20, plus the test's own time
    assert lines['tide_queue_wait_seconds_bucket{le="10.0",queue="q"}'] == 0
    assert lines['tide_queue_wait_seconds_bucket{le="30.0",queue="q"}'] >= 1


def test_metrics_healthz_readyz(r, start_worker):
    push(r, "q", ["a", "b"])
    w = start_worker(lambda m: None, metrics_port=0)
    wait_until(lambda: w.worker.http is not None and w.worker.processed == 2)
    port = w.worker.http.port

    def get(path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    wait_until(lambda: get("/readyz")[0] == 200)
    assert get("/healthz")[0] == 200
    code, text = get("/metrics")
    assert code == 200
    assert 'tide_messages_processed_total{queue="q"} 2.0' in text
    assert "tide_handler_duration_seconds_bucket" in text
    assert 'tide_messages_in_flight{queue="q"}' in text
    w.worker.stopping = True  # what a SIGTERM does first: readiness goes false
    assert get("/readyz")[0] == 503
    w.worker.stopping = False


def test_concurrency_runs_handlers_in_parallel(r, start_worker):
    active = 0
    peak = 0
    lock = threading.Lock()

    def handle(msg):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.1)
        with lock:
            active -= 1

    push(r, "q", [str(i) for i in range(12)])
    w = start_worker(handle, concurrency=4, batch_size=4)
    wait_until(lambda: w.worker.processed == 12)
    assert 2 <= peak <= 4


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_messages_left_by_a_lost_fetch_reply_are_recovered(r, start_worker, kind):
    """A connection lost during a blocking fetch may have moved a message whose reply never came: once
    Redis answers again the worker returns what its processing list holds beyond what it knows of (the
    direct lane of a sync handler, and the pipeline)."""
    seen: list[str] = []

    def record(m):
        seen.append(m.body)

    async def arecord(m):
        seen.append(m.body)

    w = start_worker(record if kind == "sync" else arecord)
    assert (w.worker.direct is not None) == (kind == "sync")
    wid = w.worker.cfg.worker_id

    def blocked() -> list[int]:
        return [c["id"] for c in r.client_list() if c.get("cmd") in ("blmove", "brpoplpush")]

    wait_until(blocked)
    # What a fetch leaves when Redis ran it but the reply was lost with the connection.
    r.lpush(K.processing(wid), encode_envelope("orphan"))
    for cid in blocked():
        r.client_kill_filter(_id=cid)
    wait_until(lambda: seen == ["orphan"])
    push(r, "q", ["next"])
    wait_until(lambda: sorted(seen) == ["next", "orphan"])
    wait_until(lambda: r.llen(K.processing(wid)) == 0)


def test_batch_size_1_acks_ride_along_with_the_next_fetch(r, start_worker):
    # One script call per message: the ack of one message and the fetch of the next share a round trip.
    n = 300
    push(r, "q", [str(i) for i in range(n)])
    r.config_resetstat()
    w = start_worker(lambda m: None, batch_size=1)
    wait_until(lambda: int(r.hget(K.stats, "processed") or 0) == n, timeout=60)
    wait_until(lambda: r.llen(K.processing(w.worker.cfg.worker_id)) == 0)
    calls = r.info("commandstats")["cmdstat_evalsha"]["calls"]
    # n fetches carrying the acks, plus the last ack, heartbeats, promotions and reaper passes.
    assert n <= calls <= n + 40, calls
