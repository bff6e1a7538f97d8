"""Worker throughput: `tide worker` with a no-op handler next to RQ, Dramatiq, Celery, arq, SAQ, BullMQ
(Node.js) and a raw redis-py BLMOVE+LREM loop, all on one private redis-server started for the run.
Every system runs once at its defaults (its worker command as it comes: the record says
``"defaults": true``) and in tuned modes (``"defaults": false``).

For every system and mode: preload N messages, start one worker process, and time from the moment the
ready list first shrinks (consumption started: imports and connection set-up are not counted) until the
system's own signal says every message was processed and acked:

- tide: ``{Q}:stats`` processed == N, the ready list and every processing list empty
- raw: the ready list and its processing list empty (ack = LREM)
- rq: N jobs in rq's FinishedJobRegistry
- dramatiq: its ``.msgs`` hash empty (the broker deletes a message there on ack)
- celery: the last message's task ran (in order; see bench/celery_app.py)
- arq: its ``arq:queue`` sorted set empty (a job leaves it when it finishes)
- saq: its ``saq:<q>:incomplete`` sorted set empty
- bullmq: N jobs in its ``bull:<q>:completed`` sorted set

Each configuration runs ``--runs`` times (default 3); the median is reported. Results go to
bench/results/worker.json and bench/results/worker.png. Usage:

    .venv/bin/python bench/worker_bench.py [--messages 20000] [--runs 3] [--only tide,raw,...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "hack"), str(ROOT / "worker-image")]

from tide_local.redisproc import RedisServer  # noqa: E402
from tide_worker.keys import QueueKeys  # noqa: E402
from tide_worker.producer import Producer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent
QUEUE = "bench"
POLL = 0.005  # the poller shares the 2 cores with the worker and Redis: keep it light
BODY = {"task": "noop", "payload": "x" * 64}
# The headline tide mode: the same sync no-op function every peer runs, batched fetch and ack.
TIDE_BATCH = int(os.environ.get("BENCH_TIDE_BATCH", "100"))
TIDE_CONC = int(os.environ.get("BENCH_TIDE_CONCURRENCY", "1"))
# The peers' tuned modes: each the obvious knob of one worker process, not tuned further.
DRAMATIQ_PREFETCH = int(os.environ.get("BENCH_TUNED_DRAMATIQ_PREFETCH", "1000"))
ARQ_MAX_JOBS = int(os.environ.get("BENCH_TUNED_ARQ_MAX_JOBS", "100"))
ARQ_POLL_DELAY = float(os.environ.get("BENCH_TUNED_ARQ_POLL_DELAY", "0.01"))
SAQ_CONCURRENCY = int(os.environ.get("BENCH_TUNED_SAQ_CONCURRENCY", "100"))
BULLMQ_CONCURRENCY = int(os.environ.get("BENCH_TUNED_BULLMQ_CONCURRENCY", "100"))
# What the app modules read to leave their defaults: never inherited from the caller's environment, so a
# defaults run is one; each Config passes its own.
APP_KNOBS = frozenset(
    {
        "dramatiq_queue_prefetch",
        "BENCH_CELERY_PREFETCH",
        "BENCH_ARQ_MAX_JOBS",
        "BENCH_ARQ_POLL_DELAY",
        "BENCH_SAQ_CONCURRENCY",
        "BENCH_BULLMQ_CONCURRENCY",
    }
)


@dataclass
class Config:
    system: str
    mode: str
    messages: int
    preload: Callable[[redis.Redis, int], None]
    command: Callable[[str], list[str]]
    started: Callable[[redis.Redis, int], bool]
    done: Callable[[redis.Redis, int], bool]
    env: dict[str, str] = field(default_factory=dict)
    # True for exactly one mode per system: its worker command as it comes, no tuning flag or setting.
    defaults: bool = False


# --- per system ------------------------------------------------------------------------------------


def tide_preload(r: redis.Redis, n: int) -> None:
    Producer(r).enqueue_many(QUEUE, (BODY for _ in range(n)), chunk=5000)


def list_started(key: str) -> Callable[[redis.Redis, int], bool]:
    return lambda r, n: int(r.llen(key)) < n


def tide_done(r: redis.Redis, n: int) -> bool:
    k = QueueKeys(QUEUE)
    processed = int(r.hget(k.stats, "processed") or 0)
    if processed < n or r.llen(QUEUE):
        return False
    return all(r.llen(key) == 0 for key in r.scan_iter(match=k.processing_pattern))


def tide_command(url: str, handler: str, concurrency: int | None, batch: int | None) -> list[str]:
    """``None``: the flag is not passed, the worker's own default applies."""
    tuning = [*(["--concurrency", str(concurrency)] if concurrency is not None else [])]
    tuning += ["--batch-size", str(batch)] if batch is not None else []
    return [
        sys.executable, "-m", "tide_worker.cli", "worker", "--redis-url", url, "--queue", QUEUE,
        "--handler", f"bench.handlers:{handler}", *tuning, "--metrics-port", "-1", "--log-level", "WARNING",
    ]  # fmt: skip


def tide_config(
    mode: str,
    n: int,
    concurrency: int | None,
    batch: int | None,
    handler: str = "noop",
    src: Path | None = None,
) -> Config:
    """``src``: a folder holding another ``tide_worker`` package (an older commit) to run instead.
    No ``concurrency`` and no ``batch``: the worker at its defaults (no tuning flag passed)."""

    env = {"PYTHONPATH": str(src)} if src else {}
    defaults = concurrency is None and batch is None and src is None
    return Config(
        "tide",
        mode,
        n,
        tide_preload,
        lambda url: tide_command(url, handler, concurrency, batch),
        list_started(QUEUE),
        tide_done,
        env=env,
        defaults=defaults,
    )


def checkout_package(ref: str, into: Path) -> Path:
    """``worker-image/tide_worker`` as of git ``ref``, extracted under ``into``; returns its parent."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "worker-image/tide_worker"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "worker-image"


RAW_PROC = "bench:raw:processing"


def raw_done(r: redis.Redis, n: int) -> bool:
    return r.llen(QUEUE) == 0 and r.llen(RAW_PROC) == 0


def raw_worker(url: str) -> None:
    """The floor: the least a reliable list consumer can do per message, in one process."""
    from bench.handlers import noop

    r = redis.Redis.from_url(url)
    while True:
        msg = r.blmove(QUEUE, RAW_PROC, 1, "RIGHT", "LEFT")
        if msg is None:
            continue
        noop(msg)
        r.lrem(RAW_PROC, 1, msg)  # type: ignore[arg-type]  # bytes work; the stub says str


def rq_preload(r: redis.Redis, n: int) -> None:
    from rq import Queue

    from bench.handlers import rq_noop

    q = Queue(QUEUE, connection=r)
    for off in range(0, n, 1000):
        q.enqueue_many([Queue.prepare_data(rq_noop) for _ in range(min(1000, n - off))])


def rq_done(r: redis.Redis, n: int) -> bool:
    return int(r.zcard(f"rq:finished:{QUEUE}")) >= n


def rq_worker(url: str) -> None:
    from rq import Queue, SimpleWorker

    r = redis.Redis.from_url(url)
    SimpleWorker([Queue(QUEUE, connection=r)], connection=r).work(burst=True, logging_level="WARNING")


def rq_default_command(url: str) -> list[str]:
    """``rq worker`` as it comes: the forking Worker (a work horse process per job)."""
    return [str(BIN / "rq"), "worker", "--url", url, "--logging_level", "WARNING", QUEUE]


def dramatiq_preload(r: redis.Redis, n: int) -> None:
    from bench.dramatiq_app import noop

    for _ in range(n):
        noop.send()


def dramatiq_done(r: redis.Redis, n: int) -> bool:
    return r.llen(f"dramatiq:{QUEUE}") == 0 and r.hlen(f"dramatiq:{QUEUE}.msgs") == 0


def dramatiq_config(n: int, threads: int | None, prefetch: int | None = None) -> Config:
    """``threads`` None: ``dramatiq bench.dramatiq_app`` as it comes (one process per core, 8 threads
    each, prefetch 2 x threads). Otherwise one process with that many threads, and with ``prefetch``
    the tuned ``dramatiq_queue_prefetch``."""

    def cmd(url: str) -> list[str]:
        tuning = ["--processes", "1", "--threads", str(threads)] if threads is not None else []
        return [str(BIN / "dramatiq"), "bench.dramatiq_app", *tuning]

    if threads is None:
        procs = os.cpu_count() or 1
        mode = f"as it comes: {procs} process{'es' if procs > 1 else ''} (1 per core), 8 threads, prefetch 16"
    else:
        mode = f"1 process, {threads} thread{'s' if threads > 1 else ''}"
        mode += f", prefetch {prefetch}" if prefetch else f", prefetch {2 * threads} (default)"
    env = {"dramatiq_queue_prefetch": str(prefetch)} if prefetch else {}
    return Config(
        "dramatiq",
        mode,
        n,
        dramatiq_preload,
        cmd,
        list_started(f"dramatiq:{QUEUE}"),
        dramatiq_done,
        env=env,
        defaults=threads is None,
    )


def celery_preload(r: redis.Redis, n: int) -> None:
    from bench.celery_app import app, noop

    with app.producer_pool.acquire(block=True) as producer:
        for i in range(n):
            noop.apply_async(kwargs={"last": i == n - 1}, producer=producer)


def celery_done(r: redis.Redis, n: int) -> bool:
    return bool(r.exists("bench:celery:done"))


def celery_config(n: int, prefetch: int) -> Config:
    def cmd(url: str) -> list[str]:
        return [
            str(BIN / "celery"), "-A", "bench.celery_app", "worker", "-P", "solo", "-c", "1",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", QUEUE, "-l", "WARNING",
        ]  # fmt: skip

    return Config(
        "celery",
        f"solo pool, prefetch multiplier {prefetch}, acks_late=False",
        n,
        celery_preload,
        cmd,
        list_started(QUEUE),
        celery_done,
        env={"BENCH_CELERY_PREFETCH": str(prefetch)},
    )


def celery_default_config(n: int) -> Config:
    """``celery worker`` as it comes: the prefork pool, one child per core, prefetch multiplier 4,
    acks_late=False, gossip, mingle and heartbeat on. The last message's task sets the done key; with
    two children the other may still run the few messages it was handed before (at most its prefetch,
    a no-op each), so the time is short by at most that much."""

    def cmd(url: str) -> list[str]:
        return [str(BIN / "celery"), "-A", "bench.celery_app", "worker", "-Q", QUEUE, "-l", "WARNING"]

    procs = os.cpu_count() or 1
    return Config(
        "celery",
        f"as it comes: prefork pool, {procs} child{'ren' if procs > 1 else ''} (1 per core), prefetch multiplier 4",
        n,
        celery_preload,
        cmd,
        list_started(QUEUE),
        celery_done,
        defaults=True,
    )


ASYNC_BIN = ROOT / ".cache" / "bench-async" / "bin"  # arq and SAQ: their own venv (hack/extra-venv.sh)


def async_preload(system: str) -> Callable[[redis.Redis, int], None]:
    def preload(r: redis.Redis, n: int) -> None:
        subprocess.run(
            [str(ASYNC_BIN / "python"), str(ROOT / "bench" / "async_peers.py"), "preload", system, str(n)],
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
        )

    return preload


def arq_config(n: int, max_jobs: int | None = None, poll_delay: float | None = None) -> Config:
    """arq keeps a job in its ``arq:queue`` sorted set until the job finishes (then ZREM, and the result
    is stored): the set's size is both signals. ``None``: arq's default (max_jobs 10, poll_delay 0.5 s)."""

    def cmd(url: str) -> list[str]:
        return [str(ASYNC_BIN / "arq"), "bench.arq_app.WorkerSettings"]

    env = {}
    if max_jobs is not None:
        env["BENCH_ARQ_MAX_JOBS"] = str(max_jobs)
    if poll_delay is not None:
        env["BENCH_ARQ_POLL_DELAY"] = str(poll_delay)
    mode = f"max_jobs {max_jobs or 10}, poll_delay {poll_delay if poll_delay is not None else 0.5} s"
    return Config(
        "arq",
        mode + (" (defaults)" if not env else ""),
        n,
        async_preload("arq"),
        cmd,
        lambda r, n: int(r.zcard("arq:queue")) < n,
        lambda r, n: int(r.zcard("arq:queue")) == 0,
        env=env,
        defaults=not env,
    )


def saq_config(n: int, concurrency: int | None = None) -> Config:
    """SAQ moves a job from ``saq:<q>:queued`` to ``:active`` and removes it from the ``:incomplete``
    sorted set when it finishes: an empty set means every job ran."""

    def cmd(url: str) -> list[str]:
        return [str(ASYNC_BIN / "saq"), "bench.saq_app.settings", "--quiet"]

    env = {"BENCH_SAQ_CONCURRENCY": str(concurrency)} if concurrency is not None else {}
    return Config(
        "saq",
        f"1 worker, concurrency {concurrency or 10}" + (" (defaults)" if concurrency is None else ""),
        n,
        async_preload("saq"),
        cmd,
        list_started(f"saq:{QUEUE}:queued"),
        lambda r, n: int(r.zcard(f"saq:{QUEUE}:incomplete")) == 0,
        env=env,
        defaults=concurrency is None,
    )


def bullmq_preload(r: redis.Redis, n: int) -> None:
    from bench import bullmq_peer

    subprocess.run(
        bullmq_peer.command("producer.js", "preload", str(n)),
        check=True,
        env={**os.environ},
        capture_output=True,
    )


def bullmq_config(n: int, concurrency: int | None = None) -> Config:
    """BullMQ keeps completed jobs in ``bull:<q>:completed`` by default (removeOnComplete off)."""
    from bench import bullmq_peer

    env = {"BENCH_BULLMQ_CONCURRENCY": str(concurrency)} if concurrency is not None else {}
    return Config(
        "bullmq",
        f"Worker, concurrency {concurrency or 1}" + (" (defaults)" if concurrency is None else ""),
        n,
        bullmq_preload,
        lambda url: bullmq_peer.command("worker.js"),
        list_started(f"bull:{QUEUE}:wait"),
        lambda r, n: int(r.zcard(f"bull:{QUEUE}:completed")) >= n,
        env=env,
        defaults=concurrency is None,
    )


def configs(n: int, peer_n: dict[str, int], baseline: tuple[str, Path] | None = None) -> list[Config]:
    def self_cmd(kind: str) -> Callable[[str], list[str]]:
        return lambda url: [sys.executable, str(Path(__file__).resolve()), "--serve", kind, url]

    before = []
    if baseline:
        ref, src = baseline
        before = [tide_config(f"unbatched (--batch-size 1 --concurrency 1) at {ref}", n, 1, 1, src=src)]
    return [
        Config("raw", "blmove+lrem", n, tide_preload, self_cmd("raw"), list_started(QUEUE), raw_done),
        *before,
        tide_config("defaults (no --batch-size, no --concurrency)", n, None, None),
        tide_config("unbatched (--batch-size 1 --concurrency 1)", n, 1, 1),
        tide_config(
            f"batched (--batch-size {TIDE_BATCH} --concurrency {TIDE_CONC})", n, TIDE_CONC, TIDE_BATCH
        ),
        # Bigger batches go faster still, at the price of more messages held per worker.
        tide_config("batched, big batches (--batch-size 500 --concurrency 1)", n, 1, 500),
        tide_config(
            f"batched, async handler (--batch-size {TIDE_BATCH} --concurrency {TIDE_BATCH})",
            n,
            TIDE_BATCH,
            TIDE_BATCH,
            "anoop",
        ),
        Config(
            "rq",
            "as it comes: rq worker (forks a work horse per job)",
            peer_n["slow"],
            rq_preload,
            rq_default_command,
            list_started(f"rq:queue:{QUEUE}"),
            rq_done,
            defaults=True,
        ),
        Config(
            "rq",
            "SimpleWorker, burst",
            peer_n["slow"],
            rq_preload,
            self_cmd("rq"),
            list_started(f"rq:queue:{QUEUE}"),
            rq_done,
        ),
        dramatiq_config(peer_n["peer"], None),
        dramatiq_config(peer_n["peer"], 8),
        dramatiq_config(peer_n["peer"], 8, DRAMATIQ_PREFETCH),
        dramatiq_config(peer_n["slow"], 1),
        celery_default_config(peer_n["slow"]),
        celery_config(peer_n["slow"], 4),
        celery_config(peer_n["peer"], 100),
        arq_config(peer_n["slow"]),
        arq_config(peer_n["peer"], ARQ_MAX_JOBS, ARQ_POLL_DELAY),
        saq_config(peer_n["peer"]),
        saq_config(peer_n["peer"], SAQ_CONCURRENCY),
        bullmq_config(peer_n["peer"]),
        bullmq_config(peer_n["peer"], BULLMQ_CONCURRENCY),
    ]


# --- harness ---------------------------------------------------------------------------------------


def wait_for(cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes]) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return time.perf_counter()
        if proc.poll() is not None and not cond():
            raise RuntimeError(f"worker exited with {proc.returncode} before {what}")
        time.sleep(POLL)
    raise TimeoutError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        # Celery wants SIGQUIT for a quick exit; the others stop on SIGTERM; SIGKILL if they dawdle.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass


def run_once(cfg: Config, server: RedisServer, log: Path) -> float:
    r = server.client()
    r.flushall()
    cfg.preload(r, cfg.messages)
    env = {k: v for k, v in os.environ.items() if k not in APP_KNOBS}
    env |= {"BENCH_REDIS_URL": server.url, **cfg.env}
    env["PYTHONPATH"] = os.pathsep.join([*filter(None, [cfg.env.get("PYTHONPATH")]), str(ROOT)])
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cfg.command(server.url),
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        n = cfg.messages
        t0 = wait_for(lambda: cfg.started(r, n), 60, "consumption to start", proc)
        t1 = wait_for(lambda: cfg.done(r, n), 600, "the last message to be acked", proc)
    finally:
        stop(proc)
        r.close()
    return n / (t1 - t0)


def label(rec: dict[str, Any]) -> str:
    """A record's bar label in the plots of the worker benches: system, mode, and whether at its defaults."""
    return f"{rec['system']}: {rec['mode']}" + ("  [defaults]" if rec.get("defaults") else "")


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(records, key=lambda rec: rec["msgs_per_s"])
    labels = [label(rec) for rec in rows]
    colors = {"tide": "#1f77b4", "raw": "#7f7f7f"}
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    bars = ax.barh(
        labels,
        [rec["msgs_per_s"] for rec in rows],
        color=[colors.get(rec["system"], "#ff7f0e") for rec in rows],
        hatch=["//" if rec.get("defaults") else "" for rec in rows],
        edgecolor="black",
        linewidth=0.3,
    )
    ax.bar_label(bars, labels=[f"{rec['msgs_per_s']:,.0f}" for rec in rows], padding=3, fontsize=8)
    ax.set_xlabel("messages per second, one worker process, no-op handler (median of runs)")
    ax.set_title("Worker throughput on one redis-server (hatched: the system at its defaults)")
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(records: list[dict[str, Any]]) -> None:
    """The issue's two ratios: tide at its defaults / the fastest peer at its defaults, and the fastest
    tide mode / the fastest peer mode of any setting (tuned vs tuned)."""
    peers = [rec for rec in records if rec["system"] not in {"tide", "raw"}]
    tide = [rec for rec in records if rec["system"] == "tide" and " at " not in rec["mode"]]
    for label, pick in (("at defaults", lambda rec: rec["defaults"]), ("tuned (any mode)", lambda rec: True)):
        ours = [rec for rec in tide if pick(rec)]
        theirs = [rec for rec in peers if pick(rec)]
        if not ours or not theirs:
            continue
        a = max(ours, key=lambda rec: rec["msgs_per_s"])
        b = max(theirs, key=lambda rec: rec["msgs_per_s"])
        print(
            f"{label}: tide ({a['mode']}) / fastest peer ({b['system']}: {b['mode']}): "
            f"{a['msgs_per_s']:,.0f} / {b['msgs_per_s']:,.0f} = {a['msgs_per_s'] / b['msgs_per_s']:.2f}x"
            " (goal >= 3x)"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=int(os.environ.get("BENCH_MESSAGES", "20000")))
    p.add_argument(
        "--peer-messages",
        type=int,
        default=int(os.environ.get("BENCH_PEER_MESSAGES", "5000")),
        help="messages for the faster peer modes (dramatiq 8 threads, celery prefetch 100)",
    )
    p.add_argument(
        "--slow-messages",
        type=int,
        default=int(os.environ.get("BENCH_SLOW_MESSAGES", "2000")),
        help="messages for the slow peer modes (rq, dramatiq 1 thread, celery prefetch 4)",
    )
    p.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")))
    p.add_argument("--only", help="comma-separated systems (tide,raw,rq,dramatiq,celery,arq,saq,bullmq)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help="also run the unbatched mode with tide_worker as of this commit, to compare in one run",
    )
    p.add_argument("--serve", nargs=2, metavar=("KIND", "URL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.serve:
        kind, url = args.serve
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        {"raw": raw_worker, "rq": rq_worker}[kind](url)
        return 0

    # SIGTERM must unwind through the finally blocks: they stop the worker and the redis-server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = set(args.only.split(",")) if args.only else None
    baseline = None
    if args.baseline:
        tmp = Path(tempfile.mkdtemp(prefix="tide-baseline-"))
        baseline = (args.baseline, checkout_package(args.baseline, tmp))
    todo = [
        c
        for c in configs(
            args.messages,
            {"peer": args.peer_messages, "slow": args.slow_messages},
            baseline,
        )
        if only is None or c.system in only
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "worker-bench.log"
    log.write_bytes(b"")
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    with RedisServer() as server:
        os.environ["BENCH_REDIS_URL"] = server.url  # the peers' app modules read it on import
        for cfg in todo:
            runs = []
            for i in range(args.runs):
                try:
                    rate = run_once(cfg, server, log)
                except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
                    # One broken system must not cost the others' numbers: report it and move on.
                    print(
                        f"  {cfg.system:9} {cfg.mode:55} run {i + 1}: FAILED: {exc} (see {log})", flush=True
                    )
                    failures.append(f"{cfg.system} {cfg.mode}: {exc}")
                    break
                runs.append(round(rate, 1))
                print(f"  {cfg.system:9} {cfg.mode:55} run {i + 1}: {rate:10,.0f} msg/s", flush=True)
            if len(runs) < args.runs:
                continue
            rec = {
                "system": cfg.system,
                "mode": cfg.mode,
                "defaults": cfg.defaults,
                "messages": cfg.messages,
                "msgs_per_s": round(statistics.median(runs), 1),
                "runs": runs,
                # The machine is shared: its 1-minute load average as this system's runs ended.
                "load_avg": round(os.getloadavg()[0], 2),
            }
            records.append(rec)
            print(f"{cfg.system:9} {cfg.mode:55} median {rec['msgs_per_s']:10,.0f} msg/s (N={cfg.messages})")

    meta_path = args.out / "worker.json"
    meta_path.write_text(json.dumps(records, indent=2) + "\n")
    plot(records, args.out / "worker.png")
    print(f"wrote {meta_path} and {args.out / 'worker.png'}")

    summarize(records)
    # The unbatched mode against the floor (raw) and against the baseline commit, from this run.
    now = [
        r
        for r in records
        if r["system"] == "tide" and r["mode"].startswith("unbatched") and " at " not in r["mode"]
    ]
    refs = [r for r in records if r["system"] == "raw" or " at " in r["mode"]]
    for rec in now:
        for ref in refs:
            ratio = rec["msgs_per_s"] / ref["msgs_per_s"]
            print(
                f"tide {rec['mode']} / {ref['system']} {ref['mode']}: "
                f"{rec['msgs_per_s']:,.0f} / {ref['msgs_per_s']:,.0f} = {ratio:.2f}x"
            )
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
