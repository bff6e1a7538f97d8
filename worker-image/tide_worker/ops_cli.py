"""`tide enqueue`, `tide stats` and `tide dlq list|requeue|purge`.

Expected failures (Redis unreachable, wrong password, bad arguments) print one line on stderr and exit
with 1 (Redis or runtime trouble) or 2 (bad usage), never a traceback. URLs in messages never show the
password.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any, TextIO
from urllib.parse import urlparse, urlunparse

import redis
from redis.exceptions import AskError, MovedError, RedisClusterException

from tide_worker import ops
from tide_worker.connection import (
    SENTINEL_ERRORS,
    SENTINEL_SCHEMES,
    RedisSettings,
    parse_sentinel_url,
    refusal_hint,
    sync_client,
)
from tide_worker.connection import redact as redact_text
from tide_worker.keys import QueueKeys, StreamKeys
from tide_worker.producer import NotReplicated, Producer

EXIT_FAILURE = 1
EXIT_USAGE = 2
MAX_SECONDS = 365 * 24 * 3600  # --delay, --watch
MAX_INT64 = 2**63 - 1  # Redis counts and indexes are signed 64-bit
PROGRESS_MIN = 1000  # lists shorter than this finish too fast for a bar to help


class UsageError(Exception):
    """Bad arguments: exit code 2."""


class Failure(Exception):
    """An expected runtime failure: exit code 1."""


def redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (the user kept, so a refusal says whose). A URL
    ``urlparse`` cannot split (a Sentinel URL's host list) goes through ``connection.redact``."""
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError:
        return redact_text(url)
    if parsed.password is None:
        return url
    user = parsed.username or ""
    host = parsed.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{port}" if port else "")
    return urlunparse(parsed._replace(netloc=netloc))


# --- arguments -----------------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("redis")
    g.add_argument("--redis-url", help="redis:// or rediss:// URL (env TIDE_REDIS_URL)")
    g.add_argument(
        "--redis-cluster",
        action=argparse.BooleanOptionalAction,
        default=None,  # neither flag: TIDE_REDIS_CLUSTER decides
        help="the URL names a Redis Cluster node (env TIDE_REDIS_CLUSTER)",
    )
    g.add_argument("--redis-ca-file", help="CA bundle for rediss:// (env TIDE_REDIS_CA_FILE)")
    return p


def _source(p: argparse.ArgumentParser, *, group: bool) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--queue", "-q", help="list queue name")
    src.add_argument("--stream", "-s", help="stream name")
    if group:
        p.add_argument("--group", "-g", help="consumer group (required with --stream)")


def _progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"progress bar on stderr (default: when stderr is a terminal and >= {PROGRESS_MIN} letters)",
    )


def register(sub: Any) -> None:
    common = _common()

    p = sub.add_parser(
        "enqueue",
        parents=[common],
        help="put messages on a queue or stream",
        description="Put messages on a list queue (LPUSH, or RPUSH with --side left) or a stream (XADD).",
    )
    _source(p, group=False)
    p.add_argument("bodies", nargs="*", metavar="BODY", help="message bodies (one message each)")
    p.add_argument("--file", "-f", help="read one message per line from this file ('-' = stdin)")
    p.add_argument("--json", action="store_true", help="parse each body as JSON")
    p.add_argument("--id", dest="message_id", help="message id (a single BODY only; default: random)")
    p.add_argument(
        "--side",
        choices=["right", "left"],
        default="right",
        help="the end workers take from (as `tide worker --side`); we push to the other (default right)",
    )
    p.add_argument("--delay", type=float, help="seconds until due (queue only): goes to the retry set")
    p.add_argument("--maxlen", type=int, help="trim the stream to about this many entries (MAXLEN ~)")
    p.add_argument(
        "--wait-replicas",
        type=int,
        default=0,
        metavar="N",
        help="durable: after each push, WAIT until N replicas have it, else exit 1 (default 0: no wait)",
    )
    p.add_argument(
        "--wait-timeout", type=float, default=1.0, help="seconds --wait-replicas waits (default 1)"
    )
    p.set_defaults(func=_guard(cmd_enqueue, "enqueue"))

    p = sub.add_parser(
        "stats", parents=[common], help="backlog, workers and dead letters of a queue or stream"
    )
    _source(p, group=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--side",
        choices=["right", "left"],
        default="right",
        help="the end workers take from (as `tide worker --side`): its message is the oldest",
    )
    p.add_argument("--watch", type=float, metavar="SECONDS", help="repeat every SECONDS until interrupted")
    p.set_defaults(func=_guard(cmd_stats, "stats"))

    dlq = sub.add_parser("dlq", help="list, requeue or purge dead letters")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    p = dsub.add_parser("list", parents=[common], help="show dead letters, newest first")
    _source(p, group=False)
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--offset", type=int, default=0, help="skip this many of the newest")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_guard(cmd_dlq_list, "dlq list"))

    p = dsub.add_parser(
        "requeue", parents=[common], help="move dead letters back to the queue, attempts reset"
    )
    _source(p, group=False)
    p.add_argument("--count", type=int, help="at most this many (oldest first; default all)")
    p.add_argument("--id", dest="ids", action="append", metavar="MESSAGE_ID", help="only these ids")
    p.add_argument("--side", choices=["right", "left"], default="right", help="the end workers take from")
    _progress_flag(p)
    p.set_defaults(func=_guard(cmd_dlq_requeue, "dlq requeue"))

    p = dsub.add_parser("purge", parents=[common], help="delete dead letters")
    _source(p, group=False)
    p.add_argument("--yes", "-y", action="store_true", help="confirm: purge really deletes")
    _progress_flag(p)
    p.set_defaults(func=_guard(cmd_dlq_purge, "dlq purge"))


# --- error handling --------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> RedisSettings:
    ca = args.redis_ca_file
    if ca and not os.path.isfile(ca):
        raise UsageError(f"--redis-ca-file {ca}: no such file")
    settings = RedisSettings.from_env(url=args.redis_url, cluster=args.redis_cluster, ca_file=ca)
    scheme = settings.url.partition("://")[0].lower()
    if scheme not in {"redis", "rediss", "unix", *SENTINEL_SCHEMES}:
        raise UsageError(
            "Redis URL must start with redis://, rediss://, redis+sentinel:// or rediss+sentinel://, "
            f"not {redact(settings.url)!r}"
        )
    if settings.sentinel:
        try:
            parse_sentinel_url(settings.url)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if settings.ca_file and not os.path.isfile(settings.ca_file):
        raise UsageError(f"TIDE_REDIS_CA_FILE {settings.ca_file}: no such file")
    return settings


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _guard(fn: Callable[[argparse.Namespace], int], label: str) -> Callable[[argparse.Namespace], int]:
    """Run a command; turn expected failures into one line on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        url = "<unset>"
        try:
            settings = _settings(args)
            url = redact(settings.url)
            args.settings = settings
            return fn(args)
        except UsageError as exc:
            _err(f"tide {label}: {exc}")
            return EXIT_USAGE
        except Failure as exc:
            _err(f"tide {label}: {exc}")
            return EXIT_FAILURE
        except redis.AuthenticationError as exc:
            given: RedisSettings | None = getattr(args, "settings", None)
            if given is not None and not (given.password or urlparse(given.url).password):
                _err(
                    f"tide {label}: Redis at {url} refused the credentials: it needs a password"
                    " (put it in the URL or in TIDE_REDIS_USERNAME/TIDE_REDIS_PASSWORD)"
                )
            else:
                _err(f"tide {label}: Redis at {url} refused the credentials: {_one_line(exc)}")
            return EXIT_FAILURE
        except SENTINEL_ERRORS as exc:
            _err(f"tide {label}: {refusal_hint(exc)}")
            return EXIT_FAILURE
        except (redis.ConnectionError, redis.TimeoutError, RedisClusterException, OSError) as exc:
            _err(f"tide {label}: cannot reach Redis at {url}: {_one_line(exc)}")
            return EXIT_FAILURE
        except (MovedError, AskError) as exc:
            _err(
                f"tide {label}: Redis at {url} is a Cluster node that does not own the key's slot"
                f" ({type(exc).__name__} {_one_line(exc)}): add --redis-cluster or TIDE_REDIS_CLUSTER=true"
            )
            return EXIT_FAILURE
        except redis.ResponseError as exc:
            msg = _one_line(exc)
            if msg.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
                _err(f"tide {label}: Redis at {url} refused the credentials: {msg}")
            else:
                _err(f"tide {label}: Redis at {url} answered with an error: {msg}")
            return EXIT_FAILURE
        except redis.RedisError as exc:
            _err(f"tide {label}: Redis at {url}: {_one_line(exc)}")
            return EXIT_FAILURE
        except KeyboardInterrupt:
            _err("")
            return 130

    return run


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _client(args: argparse.Namespace) -> Any:
    client = sync_client(args.settings)
    client.ping()  # fail here, with the URL in the message, rather than midway
    return client


# --- enqueue ---------------------------------------------------------------------------------------


def _bodies(args: argparse.Namespace) -> Iterator[str]:
    yield from args.bodies
    if args.file:
        stream: TextIO
        if args.file == "-":
            stream = sys.stdin
        else:
            try:
                stream = open(args.file, encoding="utf-8")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise UsageError(f"--file {args.file}: {exc.strerror}") from None
        try:
            for line in stream:
                line = line.rstrip("\r\n")
                if line:
                    yield line
        finally:
            if stream is not sys.stdin:
                stream.close()


def _parsed(bodies: Iterator[str], as_json: bool) -> Iterator[Any]:
    for n, body in enumerate(bodies, 1):
        if not as_json:
            yield body
            continue
        try:
            yield json.loads(body)
        except json.JSONDecodeError as exc:
            raise UsageError(f"message {n} is not valid JSON ({exc.msg}): {body[:60]!r}") from None
        except RecursionError:
            raise UsageError(f"message {n} is JSON nested too deep to decode: {body[:60]!r}") from None


def cmd_enqueue(args: argparse.Namespace) -> int:
    if not args.bodies and not args.file:
        raise UsageError("nothing to enqueue: give BODY arguments or --file")
    if args.stream and args.delay is not None:
        raise UsageError("--delay works with --queue only")
    if args.queue and args.maxlen is not None:
        raise UsageError("--maxlen works with --stream only")
    if args.message_id and (len(args.bodies) != 1 or args.file):
        raise UsageError("--id needs exactly one BODY")
    if args.delay is not None and not (math.isfinite(args.delay) and 0 <= args.delay <= MAX_SECONDS):
        raise UsageError(f"--delay must be from 0 to {MAX_SECONDS} seconds, not {args.delay!r}")
    if args.maxlen is not None and not 0 <= args.maxlen <= MAX_INT64:
        raise UsageError(f"--maxlen must be from 0 to {MAX_INT64}, not {args.maxlen}")
    if not 0 <= args.wait_replicas <= 1000:
        raise UsageError(f"--wait-replicas must be from 0 to 1000, not {args.wait_replicas}")
    if not (math.isfinite(args.wait_timeout) and 0 < args.wait_timeout <= MAX_SECONDS):
        raise UsageError(f"--wait-timeout must be more than 0 and at most {MAX_SECONDS} seconds")
    # Parse everything before connecting, so a bad line enqueues nothing.
    bodies = list(_parsed(_bodies(args), args.json))
    client = _client(args)
    try:
        try:
            producer = Producer(
                client, side=args.side, wait_replicas=args.wait_replicas, wait_timeout=args.wait_timeout
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.stream:
            ids = producer.xadd_many(args.stream, bodies, maxlen=args.maxlen)
        elif args.message_id or args.delay:
            ids = [producer.enqueue(args.queue, b, id=args.message_id, delay=args.delay) for b in bodies]
        else:
            ids = producer.enqueue_many(args.queue, bodies)
    except NotReplicated as exc:
        raise Failure(f"enqueued, not durable: {exc}") from None
    finally:
        client.close()
    for i in ids:
        print(i)
    return 0


# --- stats -----------------------------------------------------------------------------------------


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    return f"{max(0.0, now - ts):.1f}s ago"


def _waited(oldest: float | None, waiting: int) -> str:
    if oldest is not None:
        return f"waiting {oldest:.1f}s"
    return "unknown (a plain string: no enqueue time)" if waiting else "-"


def render_stats(s: dict[str, Any]) -> str:
    now = s["time"]
    lines = []
    if s["kind"] == "queue":
        lines.append(f"queue {s['queue']}: backlog {s['backlog']}")
        lines.append(f"  ready      {s['ready']}")
        lines.append(f"  in-flight  {s['in_flight']}")
        lines.append(f"  delayed    {s['delayed']} ({s['delayed_due']} due)")
        lines.append(f"  dead       {s['dead']}")
        lines.append(f"  oldest     {_waited(s['oldest_age'], s['ready'])}")
    else:
        est = " (estimated)" if s["lag_estimated"] else ""
        group = s["group"] + ("" if s["group_exists"] else " (not created yet)")
        lines.append(f"stream {s['stream']} group {group}: backlog {s['backlog']}")
        lines.append(f"  length     {s['length']}")
        lines.append(f"  lag        {s['lag']}{est}")
        lines.append(f"  pending    {s['pending']}")
        lines.append(f"  dead       {s['dead']}")
        lines.append(f"  oldest     {_waited(s['oldest_age'], 0)}")
        lines.append(f"  consumers  {len(s['consumers'])}")
    lines.append(f"  workers    {s['workers_alive']} alive, {s['rate']:.1f} msg/s")
    if s["workers"]:
        rows = [("WORKER", "ALIVE", "RATE/S", "INFLIGHT", "HELD", "PROCESSED", "LAST SEEN")]
        for w in s["workers"]:
            alive = "yes" if w["alive"] else ("no" if w["registered"] else "orphan")
            rows.append(
                (
                    w["id"],
                    alive,
                    f"{w['rate']:.1f}",
                    str(w["inflight"]),
                    str(w["processing"]),
                    str(w["processed"]),
                    _ago(w["last_seen"], now),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines += ["  ".join(c.ljust(wd) for c, wd in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def cmd_stats(args: argparse.Namespace) -> int:
    if args.stream and not args.group:
        raise UsageError("--stream needs --group")
    if args.queue and args.group:
        raise UsageError("--group works with --stream only")
    if args.watch is not None and not (math.isfinite(args.watch) and 0 < args.watch <= MAX_SECONDS):
        raise UsageError(f"--watch must be more than 0 and at most {MAX_SECONDS} seconds, not {args.watch!r}")
    client = _client(args)
    stop = threading.Event()
    previous = None
    if args.watch and threading.current_thread() is threading.main_thread():
        # Ctrl-C ends the watch after the current read: a KeyboardInterrupt raised inside redis-py's
        # reply handling could be lost there and leave the loop running. A second one interrupts at once.
        def interrupted(signum: int, frame: Any) -> None:
            stop.set()
            signal.signal(signal.SIGINT, signal.default_int_handler)

        previous = signal.signal(signal.SIGINT, interrupted)
    try:
        while not stop.is_set():
            if args.queue:
                s = ops.queue_stats(client, args.queue, side=args.side)
            else:
                s = ops.stream_stats(client, args.stream, args.group)
            if args.json:
                print(json.dumps(s, separators=(",", ":") if args.watch else (", ", ": ")), flush=True)
            else:
                if args.watch and sys.stdout.isatty():
                    print("\x1b[H\x1b[2J", end="")
                print(render_stats(s), flush=True)
            if not args.watch:
                return 0
            stop.wait(args.watch)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        client.close()


# --- dlq -------------------------------------------------------------------------------------------


class ProgressBar:
    """A hand-written bar on stderr: ``[#####.....] 12000/20000 60%``, redrawn at most 10 times a second."""

    def __init__(self, label: str, enabled: bool | None, out: TextIO | None = None) -> None:
        self.label = label
        self.out = out or sys.stderr
        self.enabled = enabled
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if self.enabled is None:
            self.enabled = self.out.isatty() and total >= PROGRESS_MIN
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        width = 30
        frac = done / total if total else 1.0
        bar = "#" * int(frac * width)
        self.out.write(f"\r{self.label} [{bar.ljust(width, '.')}] {done}/{total} {frac:4.0%}")
        self.out.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.out.write("\n")
            self.out.flush()


def _letter_json(dl: Any, entry_id: str | None = None) -> dict[str, Any]:
    obj = asdict(dl)
    if entry_id is not None:
        obj["entry_id"] = entry_id
    return obj


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def cmd_dlq_list(args: argparse.Namespace) -> int:
    if args.limit < 0 or args.offset < 0:
        raise UsageError("--limit and --offset must be >= 0")
    client = _client(args)
    try:
        if args.queue:
            pairs: list[tuple[str | None, Any]] = [
                (None, dl) for dl in ops.dlq_list(client, args.queue, args.limit, args.offset)
            ]
            total = int(client.llen(QueueKeys(args.queue).dead))
        else:
            pairs = [
                (e.entry_id, e.letter)
                for e in ops.stream_dlq_list(client, args.stream, args.limit, args.offset)
            ]
            total = int(client.xlen(StreamKeys(args.stream, "").dead))
    finally:
        client.close()
    if args.json:
        print(json.dumps([_letter_json(dl, eid) for eid, dl in pairs], indent=2, ensure_ascii=False))
        return 0
    print(f"{total} dead letter(s); showing {len(pairs)} from offset {args.offset}, newest first")
    for eid, dl in pairs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dl.time))
        where = f" entry {eid}" if eid else ""
        print(
            f"{when}{where} id={dl.message_id or '-'} reason={dl.reason} attempts={dl.attempts}"
            f" worker={dl.worker or '-'}"
        )
        print(f"    error:   {_short(dl.error, 150)}")
        print(f"    message: {_short(dl.message, 150)}")
    return 0


def cmd_dlq_requeue(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 0:
        raise UsageError("--count must be >= 0")
    client = _client(args)
    bar = ProgressBar("requeue", args.progress)
    try:
        if args.queue:
            moved = ops.dlq_requeue(
                client, args.queue, count=args.count, ids=args.ids, side=args.side, progress=bar
            )
        else:
            moved = ops.stream_dlq_requeue(client, args.stream, count=args.count, ids=args.ids, progress=bar)
    finally:
        bar.close()
        client.close()
    print(f"requeued {moved} dead letter(s) to {args.queue or args.stream}")
    return 0


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        raise UsageError("purge deletes dead letters for good: add --yes to confirm")
    client = _client(args)
    bar = ProgressBar("purge", args.progress)
    try:
        if args.queue:
            removed = ops.dlq_purge(client, args.queue, progress=bar)
        else:
            removed = ops.stream_dlq_purge(client, args.stream, progress=bar)
    finally:
        bar.close()
        client.close()
    print(f"purged {removed} dead letter(s) of {args.queue or args.stream}")
    return 0
