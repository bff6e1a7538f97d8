"""The worker image as users run it: non-root (uid 10001), read-only root filesystem, host's Redis.

The generated Deployment runs it with ``readOnlyRootFilesystem`` and an ``emptyDir`` on ``/tmp``; these
tests give it no writable ``/tmp`` at all, so any write the image needs would fail them.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import redis
from tide_worker.connection import RedisSettings
from tide_worker.keys import QueueKeys
from tide_worker.producer import Producer

from tests import waiting
from tests.containers.conftest import ROOT, Container, Images

pytestmark = pytest.mark.slow  # the first session builds the images (about a minute when cold)

RESTRICTED = (
    "--read-only",
    "--user",
    "10001:10001",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
)


def _worker(images_tag: str, redis_url: str, queue: str, *extra: str, run: tuple[str, ...] = ()) -> Container:
    # --network host: the test's redis-server listens on the host's loopback
    return Container(
        images_tag,
        "--network", "host", *RESTRICTED,
        "-e", f"TIDE_REDIS_URL={redis_url}", "-e", f"TIDE_QUEUE={queue}",
        "-e", "TIDE_METRICS_PORT=-1",  # the host's ports are shared
        *extra,
        run=run,
    )  # fmt: skip


def _processing(r: redis.Redis, keys: QueueKeys) -> dict[str, int]:
    return {k.decode(): int(r.llen(k)) for k in r.scan_iter(match=keys.processing_pattern, count=1000)}


def test_example_worker_consumes_dead_letters_and_stops_cleanly(
    images: Images, redis_url: str, r: redis.Redis, containers: list[Container]
) -> None:
    """worker-image/examples (the user's `FROM tide-worker` pattern): good messages processed, the one
    without a url dead-lettered by its handler's Reject, exit 0 on SIGTERM with nothing held."""
    example = "tide-worker-example:dev"
    # its `FROM tide-worker`, as its comment has users build it
    subprocess.run(["docker", "tag", images.worker, "tide-worker:latest"], check=True, capture_output=True)
    build = subprocess.run(
        ["docker", "build", "-q", "-t", example, str(ROOT / "worker-image" / "examples")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    queue, keys = "images", QueueKeys("images")
    with Producer(settings=RedisSettings(url=redis_url)) as producer:
        for i in range(100):
            producer.enqueue(queue, {"url": f"s3://bucket/{i}.png"})
        producer.enqueue(queue, {"path": "no-url.png"}, id="poison")
    worker = _worker(example, redis_url, queue)
    containers.append(worker)

    def drained() -> bool:
        stats = r.hgetall(keys.stats)
        return int(stats.get(b"processed", 0)) == 100 and r.llen(keys.dead) == 1 and r.llen(queue) == 0

    try:
        waiting.wait_until(drained, timeout=60, interval=0.2, what="100 processed and 1 dead letter")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.logs()}") from None
    dead = json.loads(r.lindex(keys.dead, 0) or b"{}")
    assert dead["reason"] == "rejected" and "no 'url'" in dead["error"] and "no-url.png" in dead["message"]
    code, _ = worker.stop()
    assert code == 0, worker.logs()
    assert sum(_processing(r, keys).values()) == 0
    assert int(r.hget(keys.stats, "processed") or 0) == 100


def test_worker_sigterm_returns_what_it_holds_and_exits_zero(
    images: Images, redis_url: str, r: redis.Redis, containers: list[Container]
) -> None:
    """SIGTERM (docker stop, as a kubelet does) while handlers run: exit 0 well within the grace, the
    processing list empty, every message either processed or back on the queue."""
    queue, keys, total = "jobs", QueueKeys("jobs"), 400
    with Producer(settings=RedisSettings(url=redis_url)) as producer:
        producer.enqueue_many(queue, ({"n": i} for i in range(total)))
    worker = _worker(
        images.worker, redis_url, queue,
        "-v", f"{ROOT / 'tests/containers/slow_handlers.py'}:/app/slow_handlers.py:ro",
        "-e", "TIDE_HANDLER=slow_handlers:handle", "-e", "TIDE_CONCURRENCY=8", "-e", "TIDE_BATCH_SIZE=8",
    )  # fmt: skip
    containers.append(worker)
    try:
        # messages in flight: a full batch held while others are done
        waiting.wait_until(
            lambda: int(r.hget(keys.stats, "processed") or 0) >= 16 and sum(_processing(r, keys).values()) > 0,
            timeout=60, interval=0.05, what="the worker busy with messages in flight",
        )  # fmt: skip
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.logs()}") from None
    code, seconds = worker.stop(grace=30)
    logs = worker.logs()
    assert code == 0, logs
    assert seconds < 25, f"stopping took {seconds:.1f} s: SIGTERM ignored until SIGKILL?\n{logs}"
    assert _processing(r, keys) == {}, logs  # returned and deregistered: no processing list left
    processed = int(r.hget(keys.stats, "processed") or 0)
    assert processed < total, "the SIGTERM came too late to find work in flight"
    assert processed + r.llen(queue) == total and r.llen(keys.dead) == 0
