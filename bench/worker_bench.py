"""Worker throughput: one `tide worker` process with a no-op handler next to RQ, Dramatiq, Celery and a
raw redis-py BLMOVE+LREM loop, all on one private redis-server started for the run.

For every system and mode: preload N messages, start one worker process, and time from the moment the
ready list first shrinks (consumption started: imports and connection set-up are not counted) until the
system's own signal says every message was processed and acked:

- tide: ``{Q}:stats`` processed == N, the ready list and every processing list empty
- raw: the ready list and its processing list empty (ack = LREM)
- rq: N jobs in rq's FinishedJobRegistry
- dramatiq: its ``.msgs`` hash empty (the broker deletes a message there on ack)
- celery: the last message's task ran (solo pool, in order; see bench/celery_app.py)

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


def tide_config(
    mode: str, n: int, concurrency: int, batch: int, handler: str = "noop", src: Path | None = None
) -> Config:
    """``src``: a folder holding another ``tide_worker`` package (an older commit) to run instead."""

    def cmd(url: str) -> list[str]:
        return [
            sys.executable, "-m", "tide_worker.cli", "worker", "--redis-url", url, "--queue", QUEUE,
            "--handler", f"bench.handlers:{handler}", "--concurrency", str(concurrency),
            "--batch-size", str(batch), "--metrics-port", "-1", "--log-level", "WARNING",
        ]  # fmt: skip

    env = {"PYTHONPATH": str(src)} if src else {}
    return Config("tide", mode, n, tide_preload, cmd, list_started(QUEUE), tide_done, env=env)


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


def dramatiq_preload(r: redis.Redis, n: int) -> None:
    from bench.dramatiq_app import noop

    for _ in range(n):
        noop.send()


def dramatiq_done(r: redis.Redis, n: int) -> bool:
    return r.llen(f"dramatiq:{QUEUE}") == 0 and r.hlen(f"dramatiq:{QUEUE}.msgs") == 0


def dramatiq_config(n: int, threads: int) -> Config:
    def cmd(url: str) -> list[str]:
        return [str(BIN / "dramatiq"), "bench.dramatiq_app", "--processes", "1", "--threads", str(threads)]

    mode = f"1 process, {threads} thread{'s' if threads > 1 else ''}" + (" (default)" if threads == 8 else "")
    return Config(
        "dramatiq", mode, n, dramatiq_preload, cmd, list_started(f"dramatiq:{QUEUE}"), dramatiq_done
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
            "SimpleWorker, burst",
            peer_n["slow"],
            rq_preload,
            self_cmd("rq"),
            list_started(f"rq:queue:{QUEUE}"),
            rq_done,
        ),
        dramatiq_config(peer_n["peer"], 8),
        dramatiq_config(peer_n["slow"], 1),
        celery_config(peer_n["slow"], 4),
        celery_config(peer_n["peer"], 100),
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
    env = {**os.environ, "BENCH_REDIS_URL": server.url, **cfg.env}
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


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(records, key=lambda rec: rec["msgs_per_s"])
    labels = [f"{rec['system']}: {rec['mode']}" for rec in rows]
    colors = {"tide": "#1f77b4", "raw": "#7f7f7f"}
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    bars = ax.barh(
        labels,
        [rec["msgs_per_s"] for rec in rows],
        color=[colors.get(rec["system"], "#ff7f0e") for rec in rows],
    )
    ax.bar_label(bars, labels=[f"{rec['msgs_per_s']:,.0f}" for rec in rows], padding=3, fontsize=8)
    ax.set_xlabel("messages per second, one worker process, no-op handler (median of runs)")
    ax.set_title("Worker throughput on one redis-server")
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    p.add_argument("--only", help="comma-separated systems (tide,raw,rq,dramatiq,celery)")
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
                except (RuntimeError, TimeoutError) as exc:
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
                "messages": cfg.messages,
                "msgs_per_s": round(statistics.median(runs), 1),
                "runs": runs,
            }
            records.append(rec)
            print(f"{cfg.system:9} {cfg.mode:55} median {rec['msgs_per_s']:10,.0f} msg/s (N={cfg.messages})")

    meta_path = args.out / "worker.json"
    meta_path.write_text(json.dumps(records, indent=2) + "\n")
    plot(records, args.out / "worker.png")
    print(f"wrote {meta_path} and {args.out / 'worker.png'}")

    peers = [rec for rec in records if rec["system"] in {"rq", "dramatiq", "celery"}]
    batched = [rec for rec in records if rec["system"] == "tide" and rec["mode"].startswith("batched")]
    if peers:
        best = max(peers, key=lambda rec: rec["msgs_per_s"])
        for rec in batched:
            ratio = rec["msgs_per_s"] / best["msgs_per_s"]
            print(
                f"tide {rec['mode']} / fastest peer ({best['system']}: {best['mode']}): "
                f"{rec['msgs_per_s']:,.0f} / {best['msgs_per_s']:,.0f} = {ratio:.2f}x (goal >= 3x)"
            )
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
