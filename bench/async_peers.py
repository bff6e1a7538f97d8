"""The producer side of arq and SAQ, run with .cache/bench-async/bin/python (their own venv, see
hack/extra-venv.sh), the way bench/bullmq/producer.js is for BullMQ:

    python bench/async_peers.py preload arq|saq N   # N no-op jobs, 500 enqueues in flight at a time
    python bench/async_peers.py lines arq|saq       # one latency job per line read on stdin, carrying
                                                    # the time taken right before its enqueue; "ok" back
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

QUEUE = "bench"


async def enqueuer(system: str) -> tuple[Callable[..., Awaitable[Any]], Callable[[], Awaitable[None]]]:
    url = os.environ["BENCH_REDIS_URL"]
    if system == "arq":
        from arq.connections import RedisSettings, create_pool

        pool = await create_pool(RedisSettings.from_dsn(url))

        async def arq_send(name: str, **kw: Any) -> Any:
            return await pool.enqueue_job(name, *kw.values())

        return arq_send, pool.aclose
    if system == "saq":
        from saq import Queue

        queue = Queue.from_url(url, name=QUEUE)
        await queue.connect()

        async def saq_send(name: str, **kw: Any) -> Any:
            return await queue.enqueue(name, **kw)

        return saq_send, queue.disconnect
    raise SystemExit(f"unknown system {system!r} (arq or saq)")


async def main(mode: str, system: str, n: int = 0) -> None:
    send, close = await enqueuer(system)
    if mode == "preload":
        for off in range(0, n, 500):
            await asyncio.gather(*(send("noop") for _ in range(min(500, n - off))))
    elif mode == "lines":
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            await send("lat", t=time.time())
            sys.stdout.write("ok\n")
            sys.stdout.flush()
    else:
        raise SystemExit(f"unknown mode {mode!r} (preload or lines)")
    await close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
