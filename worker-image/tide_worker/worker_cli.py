"""``tide worker``: every option also reads a ``TIDE_*`` environment variable (the image is configured so).

Precedence: command-line option, then environment variable, then the default.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tide_worker import environment as E
from tide_worker.config import WorkerConfig, parse_batch_size, parse_queues


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _batch(text: str) -> str | int:
    """``--batch-size``: checked here (an argparse error naming the option), split in config_from_args."""
    try:
        size, _ = parse_batch_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip().lower() if size is None else size


@dataclass(frozen=True)
class Opt:
    flag: str
    env: str
    type: Callable[[str], Any]
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS: tuple[Opt, ...] = (
    Opt("--redis-url", E.REDIS_URL, str, E.DEFAULT_REDIS_URL, "Redis URL (rediss:// for TLS)"),
    Opt("--redis-cluster", E.REDIS_CLUSTER, _bool, False, "connect to a Redis Cluster"),
    Opt("--queue", E.QUEUE, str, None, "list queue to consume; repeat for several: in strict priority, or"
        " by weight as name:N each"),
    Opt("--stream", E.STREAM, str, None, "stream to consume (with --group)"),
    Opt("--group", E.GROUP, str, None, "consumer group of --stream (created if missing)"),
    Opt("--handler", E.HANDLER, str, None, "handler as module:function (sync or async)"),
    Opt("--concurrency", E.CONCURRENCY, int, E.DEFAULT_CONCURRENCY, "handlers running at once"),
    Opt("--batch-size", E.BATCH_SIZE, _batch, E.DEFAULT_BATCH_SIZE, "messages per fetch: N (fixed), or auto / auto:N (adaptive, at most N; auto = auto:100)"),
    Opt("--max-attempts", E.MAX_ATTEMPTS, int, E.DEFAULT_MAX_ATTEMPTS, "handler runs before a message is dead-lettered"),
    Opt("--backoff-base", E.BACKOFF_BASE, float, E.DEFAULT_BACKOFF_BASE, "retry delay base, seconds (full jitter)"),
    Opt("--backoff-cap", E.BACKOFF_CAP, float, E.DEFAULT_BACKOFF_CAP, "retry delay cap, seconds"),
    Opt("--handler-timeout", E.HANDLER_TIMEOUT, float, E.DEFAULT_HANDLER_TIMEOUT, "seconds per handler run; 0 = no limit"),
    Opt("--heartbeat-ttl", E.HEARTBEAT_TTL, float, E.DEFAULT_HEARTBEAT_TTL, "heartbeat key TTL, seconds (refreshed at TTL/3)"),
    Opt("--shutdown-grace", E.SHUTDOWN_GRACE, float, E.DEFAULT_SHUTDOWN_GRACE, "seconds in-flight work gets after SIGTERM"),
    Opt("--dedupe-ttl", E.DEDUPE_TTL, int, E.DEFAULT_DEDUPE_TTL, "skip message ids that succeeded within N seconds; 0 = off"),
    Opt("--metrics-port", E.METRICS_PORT, int, E.DEFAULT_METRICS_PORT, "/metrics, /healthz, /readyz port; 0 = any, -1 = off"),
    Opt("--side", E.SIDE, str, E.DEFAULT_SIDE, "end taken from: right for LPUSH producers, left for RPUSH", ("right", "left")),
    Opt("--log-level", E.LOG_LEVEL, str, E.DEFAULT_LOG_LEVEL, "log level", ("DEBUG", "INFO", "WARNING", "ERROR")),
    Opt("--worker-id", E.WORKER_ID, str, None, "worker id (default <POD_NAME or host>-<pid>-<hex>)"),
    Opt("--max-interrupts", E.MAX_INTERRUPTS, int, E.DEFAULT_MAX_INTERRUPTS, "worker deaths a message survives before dead letter"),
    Opt("--reaper-interval", E.REAPER_INTERVAL, float, E.DEFAULT_REAPER_INTERVAL, "seconds between reaper passes"),
    Opt("--claim-idle", E.CLAIM_IDLE, float, E.DEFAULT_CLAIM_IDLE, "streams: claim entries idle this long, seconds"),
    Opt("--block-timeout", E.BLOCK_TIMEOUT, float, E.DEFAULT_BLOCK_TIMEOUT, "seconds a blocking fetch waits server-side"),
    Opt("--fetch-command", E.FETCH_COMMAND, str, E.DEFAULT_FETCH_COMMAND, "blocking fetch: auto, blmove or brpoplpush", ("auto", "blmove", "brpoplpush")),
)  # fmt: skip


@dataclass(frozen=True)
class BadEnv:
    """An unreadable ``TIDE_*`` value: refused when ``tide worker`` runs (exit 2, one line), not when any
    ``tide`` command builds its parser."""

    message: str


def _env_default(opt: Opt) -> Any:
    text = os.environ.get(opt.env)
    if text is None or text == "":
        return opt.default
    try:
        value = opt.type(text)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        return BadEnv(f"bad {opt.env}={text!r} (for {opt.flag}): {exc}")
    if isinstance(value, str) and opt.choices:
        value = value.lower() if opt.dest == "side" else value.upper() if opt.dest == "log_level" else value
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for opt in OPTIONS:
        kw: dict[str, Any] = {
            "dest": opt.dest,
            "default": _env_default(opt),
            "help": f"{opt.help} [env {opt.env}]",
        }
        if opt.type is _bool:
            # A plain flag (--redis-cluster / --no-redis-cluster): it never takes the next word as its value.
            parser.add_argument(opt.flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        kw["type"] = (
            (lambda t: lambda s: t(s.upper()) if isinstance(s, str) else s)(opt.type)
            if opt.dest == "log_level"
            else opt.type
        )
        if opt.choices:
            kw["choices"] = opt.choices
        if opt.dest == "queue":
            # Repeatable: the environment's queues (TIDE_QUEUE, or TIDE_QUEUES) apply when none is given.
            kw.update(action="append", default=None)
        parser.add_argument(opt.flag, **kw)


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="consume a list queue or a stream with a handler",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    for opt in OPTIONS:
        value = getattr(args, opt.dest, None)
        if isinstance(value, BadEnv):
            raise ValueError(value.message)
    if not args.handler:
        raise ValueError(f"--handler (or {E.HANDLER}) is required")
    given = [args.queue] if isinstance(args.queue, str) else args.queue
    if not given:
        many = os.environ.get(E.QUEUES, "")
        given = [q for q in many.split(",") if q] if many else [os.environ.get(E.QUEUE, "")]
    names, weights = parse_queues([q for q in given if q])
    batch_size, batch_max = parse_batch_size(str(args.batch_size))
    cfg = WorkerConfig(
        handler=args.handler,
        queue=names[0] if len(names) == 1 else None,
        queues=names if len(names) > 1 else [],
        weights=weights,
        stream=args.stream or None,
        group=args.group or None,
        redis_url=args.redis_url,
        cluster=args.redis_cluster,
        concurrency=args.concurrency,
        batch_size=batch_size,
        batch_max=batch_max,
        max_attempts=args.max_attempts,
        backoff_base=args.backoff_base,
        backoff_cap=args.backoff_cap,
        handler_timeout=args.handler_timeout,
        heartbeat_ttl=args.heartbeat_ttl,
        shutdown_grace=args.shutdown_grace,
        dedupe_ttl=args.dedupe_ttl,
        metrics_port=args.metrics_port,
        side=args.side,
        log_level=args.log_level,
        max_interrupts=args.max_interrupts,
        reaper_interval=args.reaper_interval,
        claim_idle=args.claim_idle,
        block_timeout=args.block_timeout,
        fetch_command=args.fetch_command,
    )
    if args.worker_id:
        cfg.worker_id = args.worker_id
    cfg.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    from tide_worker import handler as handler_mod
    from tide_worker import logs
    from tide_worker.runtime import run_worker

    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"tide worker: {exc}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level, worker=cfg.worker_id, queue=cfg.source_name)
    # The handler module is usually next to where the worker starts (examples/, tests).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        handler = handler_mod.load(cfg.handler)
    except handler_mod.HandlerLoadError as exc:
        logs.get().error("cannot load the handler", extra=logs.kv(handler=cfg.handler, error=str(exc)))
        return 2
    return run_worker(cfg, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tide_worker.worker_cli`` runs the worker without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="tide worker", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    from tide_worker.cli import exit_with

    exit_with(main())
