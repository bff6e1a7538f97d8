"""Unit tests: backoff math, handler loading and adaptation, options from the environment, records."""

from __future__ import annotations

import argparse
import random

import pytest
from tide_worker import Message, Reject, RetryAfter, worker_cli
from tide_worker.config import WorkerConfig, backoff_delay, default_worker_id
from tide_worker.handler import adapt, load
from tide_worker.runtime import RateMeter
from tide_worker.settle import traceback_summary


def test_backoff_full_jitter_bounds_and_cap():
    rng = random.Random(7)
    for attempts in range(12):
        ceiling = min(300.0, 1.0 * 2**attempts)
        samples = [backoff_delay(attempts, 1.0, 300.0, rng) for _ in range(300)]
        assert all(0.0 <= s <= ceiling for s in samples)
        # Full jitter spreads over the whole range, not just near the ceiling.
        assert min(samples) < ceiling * 0.2 and max(samples) > ceiling * 0.8
    assert backoff_delay(10_000, 1.0, 5.0, rng) <= 5.0
    assert backoff_delay(3, 0.0, 300.0, rng) == 0.0


def test_handler_adaptation_sync_async_and_callable_objects():
    def sync(msg):
        return None

    async def coro(msg):
        return None

    class AsyncCallable:
        async def __call__(self, msg):
            return None

    assert adapt(sync).is_async is False
    assert adapt(coro).is_async is True
    assert adapt(AsyncCallable()).is_async is True
    assert load("tests.worker.handlers:noop").is_async is False
    assert load("tests.worker.handlers:anoop").is_async is True
    with pytest.raises(ValueError):
        load("no_colon_here")
    with pytest.raises(ImportError):
        load("tests.worker.no_such_module:f")
    with pytest.raises(AttributeError):
        load("tests.worker.handlers:no_such_function")
    with pytest.raises(TypeError):
        adapt(42)  # type: ignore[arg-type]


def test_public_api_exports():
    assert Reject("x").reason == "x"
    assert RetryAfter(2.5).seconds == 2.5
    with pytest.raises(ValueError):
        RetryAfter(-1)
    m = Message(id="a", body="b", attempts=0, enqueued_at=None, raw=b"b")
    assert b'"a":1' in m.retried()


def _parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    worker_cli.register(sub)
    return parser.parse_args(["worker", *argv])


def test_options_come_from_environment_and_flags_win(monkeypatch):
    monkeypatch.setenv("TIDE_QUEUE", "jobs")
    monkeypatch.setenv("TIDE_HANDLER", "tests.worker.handlers:noop")
    monkeypatch.setenv("TIDE_CONCURRENCY", "4")
    monkeypatch.setenv("TIDE_BATCH_SIZE", "50")
    monkeypatch.setenv("TIDE_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("TIDE_BACKOFF_BASE", "0.5")
    monkeypatch.setenv("TIDE_BACKOFF_CAP", "60")
    monkeypatch.setenv("TIDE_HANDLER_TIMEOUT", "0")
    monkeypatch.setenv("TIDE_HEARTBEAT_TTL", "6")
    monkeypatch.setenv("TIDE_SHUTDOWN_GRACE", "9")
    monkeypatch.setenv("TIDE_DEDUPE_TTL", "3600")
    monkeypatch.setenv("TIDE_METRICS_PORT", "0")
    monkeypatch.setenv("TIDE_SIDE", "left")
    monkeypatch.setenv("TIDE_REDIS_URL", "redis://example:6379/1")
    monkeypatch.setenv("TIDE_REDIS_CLUSTER", "true")
    monkeypatch.setenv("TIDE_LOG_LEVEL", "debug")
    monkeypatch.setenv("TIDE_WORKER_ID", "w-1")
    cfg = worker_cli.config_from_args(_parse(["--concurrency", "2"]))
    assert (cfg.queue, cfg.handler, cfg.concurrency, cfg.batch_size) == (
        "jobs",
        "tests.worker.handlers:noop",
        2,
        50,
    )
    assert (cfg.max_attempts, cfg.backoff_base, cfg.backoff_cap, cfg.handler_timeout) == (7, 0.5, 60.0, 0.0)
    assert (cfg.heartbeat_ttl, cfg.shutdown_grace, cfg.dedupe_ttl, cfg.metrics_port) == (6.0, 9.0, 3600, 0)
    assert (cfg.side, cfg.redis_url, cfg.cluster, cfg.log_level, cfg.worker_id) == (
        "left",
        "redis://example:6379/1",
        True,
        "DEBUG",
        "w-1",
    )


def test_config_validation():
    with pytest.raises(ValueError):
        WorkerConfig(handler="m:f").validate()  # neither queue nor stream
    with pytest.raises(ValueError):
        WorkerConfig(handler="m:f", queue="q", stream="s", group="g").validate()
    with pytest.raises(ValueError):
        WorkerConfig(handler="m:f", stream="s").validate()  # no group
    with pytest.raises(ValueError):
        WorkerConfig(handler="m:f", queue="q", side="middle").validate()
    with pytest.raises(ValueError):
        WorkerConfig(handler="m:f", queue="q", concurrency=0).validate()
    WorkerConfig(handler="m:f", stream="s", group="g").validate()


def test_worker_id_shape(monkeypatch):
    monkeypatch.setenv("POD_NAME", "orders-7d9f")
    wid = default_worker_id()
    pod, pid, suffix = wid.rsplit("-", 2)
    assert pod == "orders-7d9f" and pid.isdigit() and len(suffix) == 4
    assert default_worker_id() != wid


def test_traceback_summary_is_bounded():
    def deep(n):
        if n == 0:
            raise ValueError("bottom")
        deep(n - 1)

    try:
        deep(50)
    except ValueError as exc:
        text = traceback_summary(exc)
    assert "ValueError: bottom" in text
    assert text.count("in deep") <= 8


def test_rate_meter_over_window():
    meter = RateMeter(window=30.0)
    assert meter.sample(100.0, 0) == (0.0, 0.0)
    rate, span = meter.sample(110.0, 500)
    assert rate == pytest.approx(50.0) and span == pytest.approx(10.0)
    for t in range(120, 200, 10):
        rate, span = meter.sample(float(t), 500 + (t - 110) * 10)
    assert rate == pytest.approx(10.0)
    assert span <= 40.0


def test_example_handlers_and_image_files():
    import sys
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "worker-image" / "examples"
    sys.path.insert(0, str(examples))
    try:
        h = load("handlers:resize")
        n = load("handlers:notify")
    finally:
        sys.path.remove(str(examples))
    assert not h.is_async and n.is_async
    h.func(Message(id="1", body={"url": "http://x/y.png"}, attempts=0, enqueued_at=None, raw=b""))
    with pytest.raises(Reject):
        h.func(Message(id="2", body={}, attempts=0, enqueued_at=None, raw=b""))
    image = (examples.parent / "Dockerfile").read_text()
    assert "FROM debian:bookworm-slim AS runtime" in image and "FROM runtime AS build" in image  # multi-stage
    assert "USER 10001:10001" in image and 'ENTRYPOINT ["tide", "worker"]' in image
    assert "FROM tide-worker" in (examples / "Dockerfile").read_text()


def test_json_logs_one_object_per_line(capsys):
    import json

    from tide_worker import logs

    log = logs.setup("INFO", worker="w-1", queue="q")
    try:
        log.info("hello", extra=logs.kv(count=3))
        log.debug("hidden")
        try:
            raise ValueError("x")
        except ValueError:
            log.exception("oops")
        lines = capsys.readouterr().err.strip().splitlines()
        first, second = (json.loads(line) for line in lines)
        assert first["msg"] == "hello" and first["count"] == 3 and first["level"] == "info"
        assert first["worker"] == "w-1" and first["queue"] == "q" and first["ts"] > 0
        assert second["level"] == "error" and "ValueError: x" in second["exc"]
    finally:
        logs.setup("WARNING")


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        _parse(["--help"])
    text = capsys.readouterr().out
    for opt in worker_cli.OPTIONS:
        assert opt.flag in text and opt.env in text


def test_redis_cluster_is_a_plain_flag_that_never_takes_the_next_word(monkeypatch):
    monkeypatch.delenv("TIDE_REDIS_CLUSTER", raising=False)
    base = ["--queue", "q", "--handler", "m:f"]
    assert _parse(base).redis_cluster is False
    assert _parse(["--redis-cluster", *base]).redis_cluster is True
    with pytest.raises(SystemExit):  # a value after the flag is not a value: it is an unknown argument
        _parse(["--redis-cluster", "false", *base])
    monkeypatch.setenv("TIDE_REDIS_CLUSTER", "true")
    assert worker_cli.config_from_args(_parse(base)).cluster is True
    assert worker_cli.config_from_args(_parse(["--no-redis-cluster", *base])).cluster is False


def test_ops_redis_cluster_flag_leaves_the_body_alone(monkeypatch):
    from tide_worker.cli import build_parser

    monkeypatch.delenv("TIDE_REDIS_CLUSTER", raising=False)
    args = build_parser().parse_args(["enqueue", "-q", "jobs", "--redis-cluster", "hello", "world"])
    assert args.redis_cluster is True and args.bodies == ["hello", "world"]
    args = build_parser().parse_args(["stats", "-q", "jobs"])
    assert args.redis_cluster is None  # neither flag: TIDE_REDIS_CLUSTER decides
    assert build_parser().parse_args(["stats", "-q", "jobs", "--no-redis-cluster"]).redis_cluster is False
