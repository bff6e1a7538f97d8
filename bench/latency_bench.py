"""Light-load latency: the time from enqueue to handler start at 100 messages/s into one worker, p50 and
p99, for every system of the worker benchmark at its defaults (and a few tuned modes), all on one private
redis-server started for the run.

For each system and mode: start one worker whose handler appends ``<enqueued> <started>`` (Unix seconds,
``time.time()``; ``performance.timeOrigin + performance.now()`` in Node) to a file as the first thing it
does (bench/latency_record.py, bench/bullmq/worker.js). The producer takes the enqueue timestamp right
before its enqueue call and puts it in the message: the harness itself for tide, RQ, Dramatiq and
Celery; for arq and SAQ (their own venv) and BullMQ (Node.js) a producer process that reads one line per
message from the harness and stamps the time itself. Warm-up: one message every 50 ms until the first
reaches a handler (imports and connecting are not counted). Then ``--seconds`` of messages at
``--rate`` per second, paced on a fixed schedule; only those count. Results go to
bench/results/latency.json (records {"system", "mode", "defaults", "p50_ms", "p99_ms", ...}) and
bench/results/latency.png. Usage:

    .venv/bin/python bench/latency_bench.py [--rate 100] [--seconds 20] [--only tide,rq,...]
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "hack"), str(ROOT / "worker-image")]

from tide_local.redisproc import RedisServer  # noqa: E402

from bench import bullmq_peer  # noqa: E402
from bench.worker_bench import (  # noqa: E402
    APP_KNOBS,
    ASYNC_BIN,
    BIN,
    QUEUE,
    RESULTS,
    rq_default_command,
    stop,
    tide_command,
)


class Sender(Protocol):
    def send(self) -> None: ...
    def close(self) -> None: ...


class Direct:
    """The harness enqueues through the system's own API; the timestamp is taken right before."""

    def __init__(self, enqueue: Callable[[float], Any]) -> None:
        self.enqueue = enqueue

    def send(self) -> None:
        self.enqueue(time.time())

    def close(self) -> None:
        pass


class Piped:
    """A producer process in the system's own runtime: one line in, one job enqueued (stamped there), "ok"."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)

    def send(self) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(b"x\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline() != b"ok\n":
            raise RuntimeError(f"producer {self.proc.args!r} exited with {self.proc.poll()}")

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Case:
    system: str
    mode: str
    defaults: bool
    command: Callable[[str], list[str]]
    sender: Callable[[str, dict[str, str]], Sender]
    env: dict[str, str] | None = None


def tide_sender(url: str, env: dict[str, str]) -> Sender:
    from tide_worker.producer import Producer

    producer = Producer(redis_client(url))
    return Direct(lambda t: producer.enqueue(QUEUE, {"t": t}))


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def rq_sender(url: str, env: dict[str, str]) -> Sender:
    from rq import Queue

    from bench.handlers import rq_lat

    q = Queue(QUEUE, connection=redis_client(url))
    return Direct(lambda t: q.enqueue(rq_lat, t))


def dramatiq_sender(url: str, env: dict[str, str]) -> Sender:
    from bench.dramatiq_app import lat

    return Direct(lambda t: lat.send(t))


def celery_sender(url: str, env: dict[str, str]) -> Sender:
    from bench.celery_app import lat

    return Direct(lambda t: lat.apply_async(args=[t]))


def piped(system: str) -> Callable[[str, dict[str, str]], Sender]:
    def make(url: str, env: dict[str, str]) -> Sender:
        if system == "bullmq":
            return Piped(bullmq_peer.command("producer.js", "lines"), env)
        return Piped(
            [str(ASYNC_BIN / "python"), str(ROOT / "bench" / "async_peers.py"), "lines", system], env
        )

    return make


def cases() -> list[Case]:
    procs = os.cpu_count() or 1
    return [
        Case(
            "tide",
            "defaults (no --batch-size, no --concurrency)",
            True,
            lambda url: tide_command(url, "lat", None, None),
            tide_sender,
        ),
        Case(
            "tide",
            "unbatched (--batch-size 1 --concurrency 1)",
            False,
            lambda url: tide_command(url, "lat", 1, 1),
            tide_sender,
        ),
        Case(
            "tide",
            "batched (--batch-size 100 --concurrency 1)",
            False,
            lambda url: tide_command(url, "lat", 1, 100),
            tide_sender,
        ),
        Case(
            "rq", "as it comes: rq worker (forks a work horse per job)", True, rq_default_command, rq_sender
        ),
        Case(
            "dramatiq",
            f"as it comes: {procs} processes, 8 threads, prefetch 16",
            True,
            lambda url: [str(BIN / "dramatiq"), "bench.dramatiq_app"],
            dramatiq_sender,
        ),
        Case(
            "celery",
            f"as it comes: prefork pool, {procs} children, prefetch multiplier 4",
            True,
            lambda url: [
                str(BIN / "celery"),
                "-A",
                "bench.celery_app",
                "worker",
                "-Q",
                QUEUE,
                "-l",
                "WARNING",
            ],
            celery_sender,
        ),
        Case(
            "arq",
            "max_jobs 10, poll_delay 0.5 s (defaults)",
            True,
            lambda url: [str(ASYNC_BIN / "arq"), "bench.arq_app.WorkerSettings"],
            piped("arq"),
        ),
        Case(
            "arq",
            "max_jobs 100, poll_delay 0.01 s",
            False,
            lambda url: [str(ASYNC_BIN / "arq"), "bench.arq_app.WorkerSettings"],
            piped("arq"),
            env={"BENCH_ARQ_MAX_JOBS": "100", "BENCH_ARQ_POLL_DELAY": "0.01"},
        ),
        Case(
            "saq",
            "1 worker, concurrency 10 (defaults)",
            True,
            lambda url: [str(ASYNC_BIN / "saq"), "bench.saq_app.settings", "--quiet"],
            piped("saq"),
        ),
        Case(
            "bullmq",
            "Worker, concurrency 1 (defaults)",
            True,
            lambda url: bullmq_peer.command("worker.js"),
            piped("bullmq"),
        ),
    ]


def lines(path: Path) -> list[tuple[float, float]]:
    out = []
    for line in path.read_text().splitlines():
        enq, started = line.split()
        out.append((float(enq), float(started)))
    return out


def count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_until(cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


def run_case(case: Case, server: RedisServer, rate: float, seconds: float, log: Path) -> dict[str, Any]:
    r = server.client()
    r.flushall()
    fd, name = tempfile.mkstemp(prefix="tide-latency-", suffix=".txt")
    os.close(fd)
    record_file = Path(name)
    env = {k: v for k, v in os.environ.items() if k not in APP_KNOBS}
    env |= {"BENCH_REDIS_URL": server.url, "BENCH_LATENCY_FILE": str(record_file), "PYTHONPATH": str(ROOT)}
    env |= case.env or {}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            case.command(server.url),
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sender = None
    try:
        sender = case.sender(server.url, env)
        # Warm-up: until the worker has run a handler, one message every 50 ms.
        sent = 0
        deadline = time.monotonic() + 90
        while count(record_file) == 0:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode} during warm-up")
            if time.monotonic() > deadline:
                raise TimeoutError("no handler ran within 90 s of warm-up")
            sender.send()
            sent += 1
            time.sleep(0.05)
        wait_until(lambda: count(record_file) >= sent, 30, "the warm-up messages", proc)
        time.sleep(0.5)
        start = time.time()
        t0 = time.perf_counter()
        total = int(rate * seconds)
        behind = 0
        for i in range(total):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.5 / rate:
                behind += 1
            sender.send()
        sent += total
        wait_until(lambda: count(record_file) >= sent, 60, "every message to reach a handler", proc)
    finally:
        if sender is not None:
            sender.close()
        stop(proc)
        r.close()
    measured = sorted((s - e) * 1000 for e, s in lines(record_file) if e >= start)
    record_file.unlink()
    if len(measured) != total:
        raise RuntimeError(f"{len(measured)} of {total} measured messages recorded")
    q = statistics.quantiles(measured, n=100, method="inclusive")
    return {
        "system": case.system,
        "mode": case.mode,
        "defaults": case.defaults,
        "p50_ms": round(q[49], 3),
        "p99_ms": round(q[98], 3),
        "max_ms": round(measured[-1], 3),
        "messages": total,
        "rate_per_s": rate,
        # Sends that left more than half an interval late: the producer did not keep the rate.
        "late_sends": behind,
    }


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(records, key=lambda rec: rec["p50_ms"], reverse=True)
    labels = [f"{rec['system']}: {rec['mode']}" + ("  [defaults]" if rec["defaults"] else "") for rec in rows]
    ys = range(len(rows))
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(rows) + 1.5))
    h = 0.38
    p50 = ax.barh([y + h / 2 for y in ys], [rec["p50_ms"] for rec in rows], h, label="p50", color="#1f77b4")
    p99 = ax.barh([y - h / 2 for y in ys], [rec["p99_ms"] for rec in rows], h, label="p99", color="#ff7f0e")
    ax.bar_label(p50, labels=[f"{rec['p50_ms']:.2f}" for rec in rows], padding=3, fontsize=7)
    ax.bar_label(p99, labels=[f"{rec['p99_ms']:.2f}" for rec in rows], padding=3, fontsize=7)
    ax.set_yticks(list(ys), labels)
    ax.set_xscale("log")
    ax.set_xlabel("ms from enqueue to handler start (log scale)")
    rate = rows[0]["rate_per_s"] if rows else 0
    ax.set_title(f"Light-load latency: {rate:.0f} msgs/s into one worker, one redis-server", fontsize=10)
    ax.legend(loc="upper right")
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=float(os.environ.get("BENCH_LATENCY_RATE", "100")))
    p.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_LATENCY_SECONDS", "20")))
    p.add_argument("--only", help="comma-separated systems (tide,rq,dramatiq,celery,arq,saq,bullmq)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = set(args.only.split(",")) if args.only else None
    todo = [c for c in cases() if only is None or c.system in only]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "latency-bench.log"
    log.write_bytes(b"")
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    with RedisServer() as server:
        os.environ["BENCH_REDIS_URL"] = server.url  # the peers' app modules read it on import
        for case in todo:
            try:
                rec = run_case(case, server, args.rate, args.seconds, log)
            except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
                print(f"{case.system:9} {case.mode:55} FAILED: {exc} (see {log})", flush=True)
                failures.append(f"{case.system} {case.mode}: {exc}")
                continue
            rec["load_avg"] = round(os.getloadavg()[0], 2)  # the shared machine's, as the case ended
            records.append(rec)
            print(
                f"{case.system:9} {case.mode:55} p50 {rec['p50_ms']:8.2f} ms  p99 {rec['p99_ms']:8.2f} ms"
                f"  (N={rec['messages']}, late sends {rec['late_sends']})",
                flush=True,
            )
    path = args.out / "latency.json"
    path.write_text(json.dumps(records, indent=2) + "\n")
    plot(records, args.out / "latency.png")
    print(f"wrote {path} and {args.out / 'latency.png'}")
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
