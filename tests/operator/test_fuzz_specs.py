"""QueueConsumer specs generated from the CRD's own schema, applied to the real API server with a real
operator running: each is refused with a message that names what is wrong, or served, with a status and
conditions written within a few polls, by an operator whose loops never crash.

Two kinds of spec come out of one generator (``schema_strategy``): *strict* ones that follow the schema's
types, bounds, enums and patterns (the cross-field CEL rules are left to chance, so both sides of each are
tried), and *loose* ones where any leaf may be a value of another type or out of bounds. Specs are
generated from ``crds/queueconsumer.yaml`` itself, so a field added there is fuzzed without a change here.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import time
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.operator.conftest import CRDS
from tests.operator.operator_harness import Api, run_operator

FUZZING = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
pytestmark = [pytest.mark.cluster, pytest.mark.fuzz, pytest.mark.slow]

SCHEMA: dict[str, Any] = yaml.safe_load((CRDS / "queueconsumer.yaml").read_text())["spec"]["versions"][0][
    "schema"
]["openAPIV3Schema"]["properties"]["spec"]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
NAMES = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)


def schema_strategy(node: dict[str, Any], loose: bool) -> st.SearchStrategy[Any]:
    """Values for one node of an OpenAPI v3 structural schema (the subset CRDs use)."""
    strict = _strict(node, loose)
    return st.one_of(strict, JSON) if loose else strict


def _strict(node: dict[str, Any], loose: bool) -> st.SearchStrategy[Any]:
    if node.get("x-kubernetes-int-or-string") or "anyOf" in node:
        return st.one_of(
            st.integers(min_value=0, max_value=10**6), st.from_regex(r"[0-9]{1,4}(m|Mi|Gi)?", fullmatch=True)
        )
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties")
        if props is None:
            extra = node.get("additionalProperties")
            if isinstance(extra, dict):
                return st.dictionaries(NAMES, schema_strategy(extra, loose), max_size=2)
            return st.dictionaries(st.text(max_size=8), JSON, max_size=3)  # preserve-unknown-fields
        required = set(node.get("required", ()))
        return st.fixed_dictionaries(
            {k: schema_strategy(v, loose) for k, v in props.items() if k in required},
            optional={k: schema_strategy(v, loose) for k, v in props.items() if k not in required},
        )
    if kind == "array":
        return st.lists(schema_strategy(node.get("items", {}), loose), max_size=3)
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(min_value=node.get("minimum"), max_value=node.get("maximum"))
    if kind == "number":
        low = node.get("minimum")
        return st.floats(
            min_value=low,
            max_value=node.get("maximum"),
            exclude_min=bool(node.get("exclusiveMinimum")) and low is not None,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "string":
        if "enum" in node:
            return st.sampled_from(node["enum"])
        high = node.get("maxLength", 40)
        if "pattern" in node:
            return st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: 0 < len(s) <= high)
        return st.text(min_size=node.get("minLength", 0), max_size=min(high, 40))
    return JSON


def _redis(url: str) -> st.SearchStrategy[dict[str, Any]]:
    """spec.redis that can be served: the test's server, a closed port, a name that does not resolve, or
    sentinels that are not there."""
    sentinel = {"masterName": "mymaster", "sentinels": ["127.0.0.1:1", "nowhere.invalid:26379"]}
    return st.one_of(
        st.fixed_dictionaries(
            {"url": st.sampled_from([url, "redis://127.0.0.1:1/0", "redis://nowhere.invalid:6379"])},
            optional={"cluster": st.booleans()},
        ),
        st.just({"sentinel": sentinel}),
    )


def specs(url: str) -> st.SearchStrategy[dict[str, Any]]:
    """A third each: servable (the schema's parts, one of each exclusive pair, a reachable or a failing
    Redis, a short polling interval), strict (the whole schema, cross-field rules left to chance), loose."""
    props = SCHEMA["properties"]

    def part(*path: str) -> st.SearchStrategy[Any]:
        node = SCHEMA
        for key in path:
            node = node["properties"][key]
        return schema_strategy(node, loose=False)

    servable = st.builds(
        lambda redis, source, scaling, interval, workload: {
            "redis": redis,
            "source": source,
            "scaling": {**scaling, "pollingIntervalSeconds": interval},
            **workload,
        },
        _redis(url),
        st.one_of(
            st.builds(lambda v: {"list": v}, part("source", "list")),
            st.builds(lambda v: {"stream": v}, part("source", "stream")),
        ),
        part("scaling"),
        st.floats(min_value=0.05, max_value=1.0),
        st.one_of(
            st.builds(lambda v: {"scaleTargetRef": v}, part("scaleTargetRef")),
            st.builds(lambda v: {"worker": v}, part("worker")),
        ),
    )
    assert set(props) == {"redis", "source", "scaling", "scaleTargetRef", "worker"}, (
        "a new field: serve it here"
    )
    return st.one_of(servable, schema_strategy(SCHEMA, loose=False), schema_strategy(SCHEMA, loose=True))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# what the API server says of a refused field; every refusal must also name the field (spec....)
ERROR_WORDS = re.compile(
    r"Invalid value|Required value|Unsupported value|Too long|Too many|Forbidden|unknown field|must|should"
)


def _interval(spec: Any) -> float:
    scaling = _dict(_dict(spec).get("scaling"))
    value = scaling.get("pollingIntervalSeconds", 1.0)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 1.0


def test_generated_specs_are_refused_with_a_message_or_served(
    crds, namespace, k8s, sa_kubeconfig, tmp_path, redis_url
):
    api = Api(k8s, namespace)
    names = (f"f{i}" for i in itertools.count())
    outcomes = {"refused": 0, "served": 0}
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
        # each served spec costs a poll or two: a smaller budget than the profile's in make test
        @settings(max_examples=settings().max_examples if FUZZING else min(settings().max_examples, 25))
        @given(spec=specs(redis_url))
        def check(spec: dict[str, Any]) -> None:
            name = next(names)
            obj = {
                "apiVersion": "tide.dev/v1alpha1",
                "kind": "QueueConsumer",
                "metadata": {"name": name},
                "spec": spec,
            }
            res = subprocess.run(
                [str(crds.kubectl), "--kubeconfig", str(crds.kubeconfig), "-n", namespace, "create", "-f", "-"],
                input=json.dumps(obj), capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if res.returncode != 0:
                outcomes["refused"] += 1
                assert "InternalError" not in res.stderr and "Internal error" not in res.stderr, res.stderr
                assert ERROR_WORDS.search(res.stderr) and "spec" in res.stderr, res.stderr
                return
            outcomes["served"] += 1
            # a status with conditions within a few polls (the first poll waits for the next grid point)
            deadline = time.monotonic() + 10 + 3 * _interval(spec)
            status: dict[str, Any] = {}
            while time.monotonic() < deadline:
                status = api.get_qc(name).get("status") or {}
                if status.get("conditions"):
                    break
                time.sleep(0.1)
            assert status.get("conditions"), f"no status for {json.dumps(spec)}:\n{op.log()[-3000:]}"
            ready = {c["type"]: c for c in status["conditions"]}.get("Ready")
            assert ready and ready.get("reason"), status
            assert op.proc.poll() is None, op.log()[-3000:]

        check()
        log = op.log()
        assert op.proc.poll() is None
    # no loop died: kopf logs an unexpected exception of a daemon with its traceback
    assert "Traceback" not in log, log[-5000:]
    print("generated specs:", outcomes)
    assert outcomes["refused"] and outcomes["served"], outcomes
