"""CPU the operator spends per polling tick on backlog reads: N list resources on one real redis-server,
read through one shared ReadBatcher (one pipeline per tick), or each in its own pipeline (--unbatched).

    python bench/operator/read_cost.py [--resources 1000] [--workers 4] [--ticks 20] [--unbatched]

Prints JSON: CPU milliseconds of this process per tick (median over ticks), round trips per tick.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "hack"), str(ROOT / "worker-image")]

from tide_local.redisproc import RedisServer  # noqa: E402
from tide_operator.redis_reader import (  # noqa: E402
    MAX_CONNECTIONS,
    ClientPool,
    Credentials,
    ListReader,
    StreamReader,
    make_reader,
)
from tide_operator.spec import Source  # noqa: E402
from tide_worker.keys import QueueKeys  # noqa: E402
from tide_worker.records import Heartbeat  # noqa: E402


def populate(url: str, n: int, workers: int) -> None:
    r = redis.Redis.from_url(url)
    pipe = r.pipeline(transaction=False)
    now = time.time()
    for i in range(n):
        k = QueueKeys(f"q{i}")
        pipe.lpush(k.ready, *range(i % 7 + 1))
        for w in range(workers):
            wid = f"w{w}"
            pipe.zadd(k.workers, {wid: now})
            pipe.lpush(k.processing(wid), "m")
            hb = Heartbeat(id=wid, host="h", pid=1, started=now, ts=now, concurrency=1, rate=2.0)
            pipe.set(k.worker(wid), hb.encode(), ex=300)
    pipe.execute()
    r.close()


async def measure(url: str, n: int, ticks: int, batched: bool) -> dict[str, float]:
    pool = ClientPool()
    client = pool.get(url, False, Credentials())
    batcher = pool.batcher(client) if batched else None
    readers = [make_reader(client, Source("list", f"q{i}"), batcher) for i in range(n)]
    gate = asyncio.Semaphore(MAX_CONNECTIONS)  # unbatched: as many pipelines in flight as connections

    async def read(reader: ListReader | StreamReader) -> None:
        if batcher is not None:
            await reader.read(time.time())
            return
        async with gate:
            await reader.read(time.time())

    await asyncio.gather(*(read(x) for x in readers))  # warm: registries cached, script loaded
    costs, trips = [], []
    for _ in range(ticks):
        before = sum(x.round_trips for x in readers) if batcher is None else batcher.round_trips
        c0 = time.process_time()
        await asyncio.gather(*(read(x) for x in readers))
        costs.append((time.process_time() - c0) * 1000)
        after = sum(x.round_trips for x in readers) if batcher is None else batcher.round_trips
        trips.append(after - before)
    await pool.close()
    return {
        "resources": n,
        "batched": batched,
        "cpu_ms_per_tick": round(statistics.median(costs), 1),
        "cpu_us_per_read": round(statistics.median(costs) * 1000 / n, 1),
        "round_trips_per_tick": statistics.median(trips),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resources", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4, help="registered workers per queue")
    ap.add_argument("--ticks", type=int, default=20)
    ap.add_argument("--unbatched", action="store_true", help="every read in its own pipeline")
    args = ap.parse_args()
    with RedisServer() as server:
        populate(server.url, args.resources, args.workers)
        out = asyncio.run(measure(server.url, args.resources, args.ticks, not args.unbatched))
    out["workers_per_queue"] = args.workers
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
