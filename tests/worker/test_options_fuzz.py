"""Every numeric option of ``tide worker``, at and past its bounds: a one-line refusal (exit 2) naming
the option, or a worker that consumes everything.

The accepted ranges are spelled here again, independently of config.BOUNDS, as the documented contract.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tide_worker import worker_cli
from tide_worker.config import WorkerConfig
from tide_worker.envelope import encode_envelope
from tide_worker.keys import QueueKeys

from .conftest import wait_until

YEAR = 365 * 24 * 3600
# option -> (lowest, highest, integer?)
CONTRACT: dict[str, tuple[float, float, bool]] = {
    "concurrency": (1, 10_000, True),
    "batch_size": (1, 100_000, True),
    "max_attempts": (1, 10**9, True),
    "max_interrupts": (1, 10**9, True),
    "dedupe_ttl": (0, YEAR, True),
    "metrics_port": (-1, 65535, True),
    "backoff_base": (0, YEAR, False),
    "backoff_cap": (0, YEAR, False),
    "handler_timeout": (0, YEAR, False),
    "shutdown_grace": (0, YEAR, False),
    "heartbeat_ttl": (0.01, YEAR, False),
    "reaper_interval": (0.01, YEAR, False),
    "claim_idle": (0.01, YEAR, False),
    "block_timeout": (0.01, YEAR, False),
    "promote_interval": (0.01, YEAR, False),
}
K = QueueKeys("q")


def accepted(name: str, value: Any) -> bool:
    low, high, integer = CONTRACT[name]
    if isinstance(value, bool) or (integer and not isinstance(value, int)):
        return False
    return math.isfinite(value) and low <= value <= high


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def edges(name: str) -> st.SearchStrategy[Any]:
    """Values at and around the bounds, huge ones, and the wrong kinds."""
    low, high, _ = CONTRACT[name]
    near = [low, high, low - 1, high + 1, 0, -1]
    ints = st.one_of(st.sampled_from([int(x) for x in near]), st.integers(-(2**70), 2**70))
    floats = st.one_of(
        st.sampled_from([float(low), float(high), low / 2, high * 2, 0.0, -0.0, 1.5]),
        st.floats(allow_nan=True, allow_infinity=True),
    )
    return st.one_of(ints, floats, st.booleans())


options = st.sampled_from(sorted(CONTRACT)).flatmap(lambda n: st.tuples(st.just(n), edges(n)))
FLAGS = sorted(n for n in CONTRACT if n in {o.dest for o in worker_cli.OPTIONS})  # promote_interval: none
flag_options = st.sampled_from(FLAGS).flatmap(lambda n: st.tuples(st.just(n), edges(n)))


@pytest.mark.fuzz
@given(options)
def test_config_accepts_exactly_the_contract(option: tuple[str, Any]) -> None:
    name, value = option
    cfg = WorkerConfig(handler="m:f", queue="q", **{name: value})
    if accepted(name, value):
        cfg.validate()
        return
    with pytest.raises(ValueError) as info:
        cfg.validate()
    text = str(info.value)
    assert text.startswith(flag(name) + " ") and "\n" not in text


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = worker_cli.main(argv)
        except SystemExit as exc:  # argparse: a value that is not a number at all
            rc = int(exc.code or 0)
    return rc, err.getvalue()


@pytest.mark.fuzz
@given(flag_options)
def test_cli_refuses_in_one_line_or_takes_the_value(option: tuple[str, Any]) -> None:
    name, value = option
    text = repr(value) if isinstance(value, float) else str(value)
    # --opt=value: argparse would take "-1e+16" after a space for an option
    argv = ["--queue", "q", "--handler", "tests.worker.handlers:noop", f"{flag(name)}={text}"]
    _, _, integer = CONTRACT[name]
    parsed: Any = value
    if isinstance(value, bool) or (integer and isinstance(value, float)):
        parsed = None  # "True" is no number, "1.5" no integer: argparse refuses them
    if parsed is not None and accepted(name, parsed):
        cfg = worker_cli.config_from_args(worker_cli_args(argv))
        assert getattr(cfg, name) == parsed or (math.isnan(parsed) if isinstance(parsed, float) else False)
        return
    rc, err = run_cli(argv)
    assert rc == 2, err
    last = err.strip().splitlines()[-1]
    assert flag(name) in last, err
    if parsed is not None:  # refused by validation, not by argparse: the whole message is one line
        assert err.strip() == last


def worker_cli_args(argv: list[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    worker_cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.fuzz
@given(st.sampled_from(FLAGS), st.sampled_from(["abc", "nan", "-inf", "1.5x", "1e3", "1.5", "99999999999"]))
def test_bad_environment_values_are_refused_in_one_line(name: str, text: str) -> None:
    _, _, integer = CONTRACT[name]
    try:
        value: Any = int(text) if integer else float(text)
    except ValueError:
        value = None
    if value is not None and accepted(name, value):
        return  # a good value (1e3 for a float option): nothing to refuse
    env = "TIDE_" + name.upper()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(env, text)
        rc, err = run_cli(["--queue", "q", "--handler", "tests.worker.handlers:noop"])
    assert rc == 2 and err.count("\n") == 1 and (env in err or flag(name) in err), err


def test_a_worker_at_the_highest_bounds_consumes_everything(r, start_worker):
    # 9,000 queued: past what one unpack() took, so the highest batch size moves more than that at once
    bodies = [f"m{i}" for i in range(9000)]
    for i in range(0, len(bodies), 1000):
        r.lpush("q", *[encode_envelope(b) for b in bodies[i : i + 1000]])
    seen: list[str] = []
    w = start_worker(
        lambda m: seen.append(m.body),
        batch_size=100_000, concurrency=10_000, max_attempts=10**9, max_interrupts=10**9,
        dedupe_ttl=YEAR, handler_timeout=YEAR, backoff_base=YEAR, backoff_cap=YEAR, shutdown_grace=YEAR,
        heartbeat_ttl=YEAR, reaper_interval=YEAR, claim_idle=YEAR, promote_interval=YEAR,
    )  # fmt: skip
    wait_until(lambda: len(seen) >= len(bodies), timeout=60, what="all processed")
    assert w.stop(60) == 0
    assert sorted(seen) == sorted(bodies)  # each once
    assert r.llen("q") == 0 and r.llen(K.dead) == 0 and not r.keys(K.prefix + ":processing:*")
    assert int(r.hget(K.stats, "processed")) == len(bodies)
