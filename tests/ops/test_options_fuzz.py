"""Numeric options of the ops CLI at and past their bounds: a one-line refusal (exit 2) naming the
option, or the right result with nothing lost."""

from __future__ import annotations

import contextlib
import io
import json
import math
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from tide_worker import cli
from tide_worker.keys import QueueKeys

from .conftest import seed_dead

# (--count of dlq requeue already refused negatives in one line and took any count: no test needed)

YEAR = 365 * 24 * 3600
INT64 = 2**63 - 1
K = QueueKeys("q")
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, INT64, INT64 + 1, YEAR, YEAR + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:  # argparse: not a number of the option's kind
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()


def text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def refused(rc: int, err: str, option: str, by_argparse: bool) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert option in lines[-1], err
    if not by_argparse:
        assert len(lines) == 1, err


@pytest.mark.fuzz
@given(limit=numbers, offset=numbers)
def test_dlq_list_limit_and_offset(r: redis.Redis, redis_url: str, limit: Any, offset: Any) -> None:
    r.flushall()
    seed_dead(r, "q", 3)
    argv = ["dlq", "list", "--redis-url", redis_url, "-q", "q", "--json"]
    rc, out, err = run([*argv, f"--limit={text(limit)}", f"--offset={text(offset)}"])
    if isinstance(limit, float) or isinstance(offset, float):
        assert rc == 2 and ("--limit" in err or "--offset" in err), err
        return
    if limit < 0 or offset < 0:
        return refused(rc, err, "--limit and --offset", by_argparse=False)
    assert rc == 0, err
    assert len(json.loads(out)) == max(0, min(limit, 3 - offset))
    assert r.llen(K.dead) == 3


@pytest.mark.fuzz
@given(delay=numbers)
def test_enqueue_delay(r: redis.Redis, redis_url: str, delay: Any) -> None:
    r.flushall()
    rc, _, err = run(["enqueue", "--redis-url", redis_url, "-q", "q", f"--delay={text(delay)}", "body"])
    if not (math.isfinite(delay) and 0 <= delay <= YEAR):
        return refused(rc, err, "--delay", by_argparse=False)
    assert rc == 0, err
    assert r.zcard(K.delayed) + r.llen("q") == 1  # due later, or now when the delay is 0


@pytest.mark.fuzz
@given(maxlen=numbers)
def test_enqueue_maxlen(r: redis.Redis, redis_url: str, maxlen: Any) -> None:
    r.flushall()
    rc, _, err = run(["enqueue", "--redis-url", redis_url, "-s", "s", f"--maxlen={text(maxlen)}", "a", "b"])
    if isinstance(maxlen, float):
        return refused(rc, err, "--maxlen", by_argparse=True)
    if not 0 <= maxlen <= INT64:
        return refused(rc, err, "--maxlen", by_argparse=False)
    assert rc == 0, err
    assert r.xlen("s") >= min(2, maxlen)  # "~" trims whole nodes only: never below maxlen


@pytest.mark.fuzz
@given(watch=st.floats(allow_nan=True, allow_infinity=True).filter(lambda w: not 0 < w <= YEAR))
def test_stats_watch_refused_past_its_bounds(redis_url: str, watch: float) -> None:
    rc, _, err = run(["stats", "--redis-url", redis_url, "-q", "q", f"--watch={text(watch)}"])
    refused(rc, err, "--watch", by_argparse=False)
