"""Worker processes: SIGTERM shutdown, SIGKILL and the reaper, poison pills, the 15 s default recovery."""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time

import pytest
import redis.asyncio as aredis
from tide_worker.config import WorkerConfig
from tide_worker.envelope import decode, encode_envelope, plain_id
from tide_worker.keys import QueueKeys, StreamKeys
from tide_worker.reaper import ListReaper
from tide_worker.records import DeadLetter
from tide_worker.scripts import Scripts
from tide_worker.scripts import source as script_source

from .conftest import push, wait_until

K = QueueKeys("q")


def queue_in_consumption_order(r, queue="q", side="right"):
    items = r.lrange(queue, 0, -1)
    return [decode(x).body for x in (reversed(items) if side == "right" else items)]


def recorded(r, key="log"):
    return [x.decode() for x in r.lrange(key, 0, -1)]


def queue_args(queues):
    return [a for q in queues for a in ("--queue", q)]


# Several queues, each with its own keys: by weight 1:1 so both processing lists hold messages.
QUEUES = pytest.mark.parametrize("queues", [["q"], ["q:1", "q2:1"]], ids=["one-queue", "two-queues"])


@QUEUES
def test_sigterm_finishes_in_flight_and_returns_unstarted_in_order(r, spawn, queues):
    names = [q.split(":")[0] for q in queues]
    per = {q: [f"{q}m{i:02d}" for i in range(30)] for q in names}
    for q in names:
        push(r, q, per[q])
    w = spawn(
        *queue_args(queues), "--handler", "tests.worker.handlers:slow_record", "--batch-size", "10",
        "--concurrency", "2", env={"TIDE_TEST_LOG": "log", "TIDE_TEST_SLEEP": "0.8"},
    )  # fmt: skip
    wait_until(lambda: r.llen("log") >= 1, timeout=30)
    time.sleep(0.3)  # both lanes are in the middle of a message now
    at_signal = r.llen("log")
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.logs()
    done_all = recorded(r)
    assert len(done_all) > at_signal  # the in-flight messages finished after the signal
    for q in names:
        k = QueueKeys(q)
        bodies = per[q]
        done = [b for b in done_all if b in set(bodies)]
        left = queue_in_consumption_order(r, q)
        assert sorted(done + left) == bodies  # nothing lost, nothing twice
        assert left
        assert r.llen(k.dead) == 0 and r.zcard(k.delayed) == 0
        assert not r.keys(k.prefix + ":processing:*")
        assert r.zcard(k.workers) == 0  # deregistered after its processing list emptied
        assert not r.exists(k.interrupts)  # a clean shutdown is not an interruption
        assert left == sorted(left)  # what was returned is consumed next, in order
        assert left[-1] == bodies[-1]  # and ahead of what was never fetched


def test_stop_returns_every_lanes_unstarted_messages_in_fetch_order_with_a_lost_fetch(r, start_worker):
    gate = threading.Event()
    started: list[str] = []

    def handle(msg):
        started.append(msg.body)
        gate.wait(30)

    bodies = [f"m{i:02d}" for i in range(30)]
    push(r, "q", bodies)
    w = start_worker(handle, concurrency=2, batch_size=10)
    proc = K.processing(w.worker.cfg.worker_id)
    # Each lane runs the first of its chunk of 5 (m00-m04, m05-m09); m10-m19 are prefetched.
    wait_until(lambda: len(started) == 2 and r.llen("q") == 10)
    assert sorted(started) == ["m00", "m05"]
    r.lpush(proc, encode_envelope("orphan"))  # a fetch that ran but whose reply was lost
    w.loop.call_soon_threadsafe(w.worker.request_stop)
    unstarted = [b for b in bodies[:20] if b not in started]
    # One call, while both handlers still run: the head reads as before the fetches.
    wait_until(lambda: r.llen("q") == 10 + len(unstarted) + 1)
    assert queue_in_consumption_order(r) == [*unstarted, "orphan", *bodies[20:]]
    assert sorted(decode(x).body for x in r.lrange(proc, 0, -1)) == started  # only the running stay
    gate.set()
    assert w.stop() == 0
    assert queue_in_consumption_order(r) == [*unstarted, "orphan", *bodies[20:]]
    assert not r.exists(proc)


@pytest.mark.parametrize("side", ["right", "left"])
def test_requeue_script_restores_the_queue_head_in_fetch_order(r, side):
    fetch_script = r.register_script(script_source("fetch_batch"))

    def fetch(keys, args):
        return fetch_script(keys=[*keys, K.stats], args=[*args, 0, "processed"])

    requeue = r.register_script(script_source("requeue_head"))
    bodies = [f"m{i:02d}" for i in range(30)]
    raws = dict(zip(bodies, push(r, "q", bodies, side=side), strict=True))
    proc = K.processing("w")
    before = queue_in_consumption_order(r, side=side)
    fetched = [decode(x).body for x in fetch(keys=["q", proc], args=[10, side])]
    fetched += [decode(x).body for x in fetch(keys=["q", proc], args=[10, side])]
    assert fetched == bodies[:20]
    started = ["m00", "m05", "m10"]
    unstarted = [b for b in fetched if b not in started]
    random.Random(7).shuffle(unstarted)  # lanes hand them back in any order
    assert requeue(keys=[proc, "q"], args=[side, "only", *[raws[b] for b in unstarted]]) == 17
    assert queue_in_consumption_order(r, side=side) == [b for b in before if b not in started]
    assert sorted(decode(x).body for x in r.lrange(proc, 0, -1)) == started
    # "except": everything but the named (the started) goes back; none named: the whole list.
    fetch(keys=["q", proc], args=[4, side])  # m01..m04 now held with the started ones
    assert requeue(keys=[proc, "q"], args=[side, "except", raws["m05"], raws["m10"]]) == 5
    assert queue_in_consumption_order(r, side=side)[:6] == ["m00", "m01", "m02", "m03", "m04", "m06"]
    assert requeue(keys=[proc, "q"], args=[side, "except"]) == 2  # a later call goes ahead
    assert queue_in_consumption_order(r, side=side) == [
        "m05",
        "m10",
        *(b for b in before if b not in ("m05", "m10")),
    ]
    assert not r.exists(proc)


def test_requeue_script_tells_identical_copies_apart_by_position(r):
    requeue = r.register_script(script_source("requeue_head"))
    proc = K.processing("w")
    r.lpush(proc, b"x", b"y", b"x", b"z")  # fetched x, y, x, z (newest at the left)
    # The unstarted copy of x is the newer one: it goes back after y, ahead of z.
    assert requeue(keys=[proc, "q"], args=["right", "only", b"x", b"y", b"z"]) == 3
    assert list(reversed(r.lrange("q", 0, -1))) == [b"y", b"x", b"z"]
    assert r.lrange(proc, 0, -1) == [b"x"]


def test_requeue_script_returns_thousands_in_order(r):
    requeue = r.register_script(script_source("requeue_head"))
    proc = K.processing("w")
    raws = [f"{i:05d}".encode() for i in range(2500)]
    r.lpush(proc, *raws)  # fetched in this order
    assert requeue(keys=[proc, "q"], args=["right", "except"]) == 2500
    assert list(reversed(r.lrange("q", 0, -1))) == raws


@pytest.mark.parametrize(
    ("batch", "handler"),
    [("1", "hang"), ("auto", "hang"), ("1", "ahang")],
    ids=["strict-direct", "auto-direct", "strict-async"],
)
def test_grace_deadline_requeues_what_cannot_finish_and_second_sigterm_is_fast(r, spawn, batch, handler):
    push(r, "q", ["stuck", "next"])
    w = spawn(
        "--queue",
        "q",
        "--handler",
        f"tests.worker.handlers:{handler}",
        "--shutdown-grace",
        "60",
        "--batch-size",
        batch,
    )
    if handler == "ahang":
        # The pipeline, one message at a time: one running, one prefetched; both in the processing list.
        wait_until(lambda: r.llen("q") == 0, timeout=30)
    else:
        # A sync handler's direct lane prefetches nothing, and neither does the adaptive fetch for a
        # handler that has not finished a run.
        held = lambda: [x for k in r.scan_iter(match=K.processing_pattern) for x in r.lrange(k, 0, -1)]  # noqa: E731
        wait_until(lambda: len(held()) == 1, timeout=30)
        time.sleep(0.5)
        assert r.llen("q") == 1 and [decode(x).body for x in held()] == ["stuck"]
    w.signal(signal.SIGTERM)
    time.sleep(0.5)
    w.signal(signal.SIGTERM)  # the second signal does not wait out the 60 s grace
    assert w.wait(20) == 0, w.logs()
    assert queue_in_consumption_order(r) == ["stuck", "next"]
    assert not r.keys(K.prefix + ":processing:*")


@QUEUES
def test_sigkill_then_reaper_returns_messages(r, spawn, queues):
    names = [q.split(":")[0] for q in queues]
    per = {q: [f"{q}m{i}" for i in range(5)] for q in names}
    raws = {q: push(r, q, per[q]) for q in names}
    fast = ["--heartbeat-ttl", "1", "--reaper-interval", "0.3"]
    a = spawn(*queue_args(queues), "--handler", "tests.worker.handlers:hang", "--batch-size", "10", *fast)
    wait_until(lambda: all(r.llen(q) == 0 for q in names), timeout=30)
    a.kill()
    b = spawn(
        *queue_args(queues), "--handler", "tests.worker.handlers:record", *fast, env={"TIDE_TEST_LOG": "log"}
    )
    wait_until(lambda: r.llen("log") == 5 * len(names), timeout=30)
    for q in names:
        # Returned to the head of its own queue, in order.
        assert [x for x in recorded(r) if x.startswith(q + "m")] == per[q]
        assert {k.decode() for k in r.hkeys(QueueKeys(q).interrupts)} == {decode(x).id for x in raws[q]}
    b.signal(signal.SIGTERM)
    assert b.wait(30) == 0


@QUEUES
def test_poison_pill_dead_lettered_after_max_interrupts(r, spawn, queues):
    names = [q.split(":")[0] for q in queues]
    victim = names[-1]  # with two queues, the pill is in the second
    k = QueueKeys(victim)
    [raw] = push(r, victim, ["poison"])
    fast = ["--heartbeat-ttl", "1", "--reaper-interval", "0.3", "--max-interrupts", "1"]
    first = spawn(*queue_args(queues), "--handler", "tests.worker.handlers:hang", *fast)
    wait_until(lambda: r.llen(victim) == 0, timeout=30)
    first.kill()
    second = spawn(*queue_args(queues), "--handler", "tests.worker.handlers:hang", *fast)
    wait_until(lambda: r.hget(k.interrupts, decode(raw).id) == b"1" and r.llen(victim) == 0, timeout=30)
    second.kill()
    third = spawn(
        *queue_args(queues), "--handler", "tests.worker.handlers:record", *fast, env={"TIDE_TEST_LOG": "log"}
    )
    wait_until(lambda: r.llen(k.dead) == 1, timeout=30)
    [dl] = [DeadLetter.decode(x) for x in r.lrange(k.dead, 0, -1)]
    assert dl.reason == "poison" and "interrupted 2 times" in dl.error
    assert dl.raw == raw and dl.message_id == decode(raw).id and dl.queue == victim
    third.signal(signal.SIGTERM)
    assert third.wait(30) == 0
    assert r.llen(victim) == 0 and r.llen("log") == 0  # it never ran again


def _reaper(url: str, wid: str = "reaper", **kw) -> tuple[aredis.Redis, ListReaper]:
    client = aredis.Redis.from_url(url)
    cfg = WorkerConfig(handler="x:y", queue="q", worker_id=wid, **kw)
    return client, ListReaper(client, Scripts(client), cfg)


def test_reap_script_counts_ids_like_the_envelope_and_dead_letters_binary_poison(r, redis_url):
    env = encode_envelope("x", message_id="e1")
    binary = b"\xff\x00binary"
    plain = b"just text"
    for wid in ("dead1", "dead2"):
        r.lpush(K.processing(wid), env, binary, plain)
        r.zadd(K.workers, {wid: time.time()})

    async def go():
        client, reaper = _reaper(redis_url, max_interrupts=1)
        n = await reaper.run_once()
        await client.aclose()
        return n

    assert asyncio.run(go()) == (3, 3)  # dead1's copies back to the queue, dead2's are poison
    counts = {k.decode(): int(v) for k, v in r.hgetall(K.interrupts).items()}
    assert counts == {}  # all three ids hit 2 > 1 interrupts and were dead-lettered (counts cleared)
    dls = [DeadLetter.decode(x) for x in r.lrange(K.dead, 0, -1)]
    assert sorted(d.message_id for d in dls) == sorted(["e1", plain_id(binary), plain_id(plain)])
    by_id = {d.message_id: d for d in dls}
    assert by_id[plain_id(binary)].encoding == "base64" and by_id[plain_id(binary)].raw == binary
    assert by_id["e1"].raw == env and by_id["e1"].reason == "poison"
    # The first reap returned the copies of dead1 to the queue, in the order they were fetched.
    assert r.lrange("q", 0, -1)[::-1] == [env, binary, plain]
    assert r.zcard(K.workers) == 0 and not r.keys(K.prefix + ":processing:*")


def test_reaper_skips_live_workers_finds_orphans_and_respects_the_lease(r, redis_url):
    r.lpush(K.processing("alive"), b"a")
    r.zadd(K.workers, {"alive": time.time()})
    r.set(K.worker("alive"), b"{}", px=60_000)
    r.lpush(K.processing("orphan"), b"o")  # never registered

    async def go():
        client, reaper = _reaper(redis_url)
        other_client, other = _reaper(redis_url, wid="other")
        n = await reaper.run_once()
        r.lpush(K.processing("orphan2"), b"o2")
        other.passes = 0  # its first pass would scan too
        blocked = await other.run_once()  # the lease is held by the first reaper
        await client.aclose()
        await other_client.aclose()
        return n, blocked

    assert asyncio.run(go()) == ((1, 0), (0, 0))
    assert r.lrange("q", 0, -1) == [b"o"]
    assert r.lrange(K.processing("alive"), 0, -1) == [b"a"]
    assert r.get(K.reaper_lease) == b"reaper"


@pytest.mark.parametrize("source", ["list", "stream"])
def test_a_stopped_worker_gives_up_the_reaper_lease_it_holds(r, start_worker, source):
    # Lease 2 x the interval (6 s): only the shutdown's release (Source.release) frees it this soon.
    kw = {"queue": "q"} if source == "list" else {"queue": None, "stream": "s", "group": "g"}
    lease = K.reaper_lease if source == "list" else StreamKeys("s", "g").reaper_lease
    w = start_worker("tests.worker.handlers:noop", reaper_interval=3.0, **kw)
    wid = w.worker.cfg.worker_id.encode()
    wait_until(lambda: r.get(lease) == wid, timeout=15, what="the worker holding the reaper lease")
    assert r.pttl(lease) > 3000
    assert w.stop() == 0
    assert r.get(lease) is None


@pytest.mark.slow
def test_default_settings_recover_a_sigkilled_worker_within_15s(r, spawn):
    push(r, "q", ["held"])
    a = spawn("--queue", "q", "--handler", "tests.worker.handlers:hang")
    wait_until(lambda: r.llen("q") == 0, timeout=30)
    b = spawn("--queue", "q", "--handler", "tests.worker.handlers:record", env={"TIDE_TEST_LOG": "log"})
    time.sleep(2)  # b is up and registered
    killed = time.monotonic()
    a.kill()
    wait_until(lambda: r.llen("log") == 1, timeout=30)
    assert time.monotonic() - killed <= 15.0
    b.signal(signal.SIGTERM)
    assert b.wait(30) == 0


def _blocked_in_a_move(r) -> bool:
    """A client of this server waits in a blocking move now (the worker's lane, between messages)."""
    return any(c.get("cmd") in ("blmove", "brpoplpush") for c in r.client_list())


def test_an_idle_direct_lane_stops_without_waiting_out_its_block(r, spawn):
    """SIGTERM to an idle worker on the direct lane (a sync handler at concurrency 1) cuts its blocking
    move: it exits within seconds of a 30 s block, says nothing about a lost connection, and leaves
    nothing behind. Before, the stop waited for the move's timeout (up to the whole 30 s here)."""
    w = spawn(
        "--queue", "q", "--handler", "tests.worker.handlers:record", "--block-timeout", "30",
        "--batch-size", "1", env={"TIDE_TEST_LOG": "log"},
    )  # fmt: skip
    push(r, "q", ["m1"])
    wait_until(lambda: recorded(r) == ["m1"], timeout=30)
    wait_until(lambda: _blocked_in_a_move(r), timeout=10)
    time.sleep(0.5)  # well into the 30 s block
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0, w.logs()
    logs = w.logs()
    assert "lost the connection" not in logs and "Traceback" not in logs, logs
    assert r.zcard(K.workers) == 0, w.logs()
    assert not r.keys(K.prefix + ":processing:*")
    assert not _blocked_in_a_move(r)


# rounds of the race below: a cut lands after a move was served in about 1 of 20 (60 rounds, checked
# from the workers' logs: "returned what a stopped wait had moved")
ROUNDS = 30


def test_a_stop_that_cuts_a_move_as_a_message_lands_loses_nothing(r, spawn):
    """Pushes land one by one while a stop cuts the direct lane's blocking move (the lane blocks between
    them): a move served just before the cut has its reply lost with the socket. Every message is then
    handled once or back in the queue, and no processing list is left (the lane returns what the cut move
    took, ``DirectLane._returned_after_cut``)."""
    rng = random.Random(5)
    bodies: list[str] = []
    for round_ in range(ROUNDS):
        w = spawn(
            "--queue", "q", "--handler", "tests.worker.handlers:record", "--block-timeout", "30",
            "--batch-size", "1", env={"TIDE_TEST_LOG": "log"},
        )  # fmt: skip
        wait_until(lambda: r.zcard(K.workers) == 1 and _blocked_in_a_move(r), timeout=30)
        mine = [f"r{round_}m{i}" for i in range(40)]
        bodies += mine

        def trickle(m: list[str] = mine) -> None:
            for b in m:
                push(r, "q", [b])
                time.sleep(0.0005)

        pusher = threading.Thread(target=trickle)
        pusher.start()
        time.sleep(rng.uniform(0.001, 0.02))
        w.signal(signal.SIGTERM)
        pusher.join()
        assert w.wait(10) == 0, w.logs()
        assert not r.keys(K.prefix + ":processing:*"), w.logs()
    done = recorded(r)
    left = queue_in_consumption_order(r)
    assert sorted(done + left) == sorted(bodies), (done, left)  # nothing lost, nothing twice
    assert len(set(done)) == len(done)
