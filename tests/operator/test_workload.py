"""The generated worker Deployment (pure: no cluster): restricted Pod Security defaults that survive any
``podTemplate`` unless it overrides them, probes on the port the worker serves, env entries replaced whole,
a typed ``SpecError`` for a template of the wrong shape; and the one URL redaction."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from tide_operator.policy import decide
from tide_operator.spec import Fallback, Scaling, SecretKeyRef, SpecError, parse_spec
from tide_operator.workload import build_deployment, merge
from tide_worker.connection import redact

QC = {"metadata": {"name": "orders", "uid": "0000"}}
BASE_SPEC = {
    "redis": {"url": "redis://redis:6379/0"},
    "source": {"list": {"key": "q"}},
    "worker": {"image": "tide-worker:1", "handler": "app:handle"},
}

# Pod Security "restricted" as generated: path under the pod spec / under the worker container -> value
POD_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("automountServiceAccountToken",): False,
    ("securityContext", "runAsNonRoot"): True,
    ("securityContext", "seccompProfile", "type"): "RuntimeDefault",
}
CONTAINER_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("securityContext", "runAsNonRoot"): True,
    ("securityContext", "allowPrivilegeEscalation"): False,
    ("securityContext", "readOnlyRootFilesystem"): True,
    ("securityContext", "capabilities", "drop"): ["ALL"],
    ("securityContext", "seccompProfile", "type"): "RuntimeDefault",
}

_MISSING = object()


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def _spec(worker: dict[str, Any], ca: bool = False) -> Any:
    spec = parse_spec({**BASE_SPEC, "worker": {**BASE_SPEC["worker"], **worker}})
    if ca:
        from dataclasses import replace

        spec = replace(spec, redis=replace(spec.redis, ca_secret=SecretKeyRef("ca", "ca.crt")))
    return spec


def _worker_container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "worker")


def test_generated_pod_is_restricted_with_probes_resources_and_tmp() -> None:
    manifest = build_deployment(QC, _spec({}))
    pod = manifest["spec"]["template"]["spec"]
    c = _worker_container(manifest)
    for path, value in POD_DEFAULTS.items():
        assert _at(pod, path) == value, path
    for path, value in CONTAINER_DEFAULTS.items():
        assert _at(c, path) == value, path
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    assert {"name": "TIDE_METRICS_PORT", "value": "9100"} in c["env"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]


@pytest.mark.parametrize(
    ("worker", "port"),
    [
        ({"env": [{"name": "TIDE_METRICS_PORT", "value": "9200"}]}, 9200),
        ({"env": [{"name": "TIDE_METRICS_PORT", "value": "0"}]}, None),  # any port: cannot be probed
        ({"env": [{"name": "TIDE_METRICS_PORT", "value": "-1"}]}, None),  # off
        (
            {
                "env": [
                    {"name": "TIDE_METRICS_PORT", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}
                ]
            },
            None,
        ),
        ({"command": ["tide", "worker", "--metrics-port", "9300"]}, None),
    ],
)
def test_probes_follow_the_port_the_worker_serves(worker: dict[str, Any], port: int | None) -> None:
    c = _worker_container(build_deployment(QC, _spec(worker)))
    if port is None:
        assert "livenessProbe" not in c and "readinessProbe" not in c and "ports" not in c
    else:
        assert c["ports"][0]["containerPort"] == port and c["livenessProbe"]["httpGet"]["port"] == "metrics"


def test_an_env_entry_replaces_the_generated_one_whole() -> None:
    """A URL from a Secret: merged, ``valueFrom`` would sit beside the generated ``value`` (refused)."""
    ref = {"secretKeyRef": {"name": "redis", "key": "url"}}
    c = _worker_container(
        build_deployment(QC, _spec({"env": [{"name": "TIDE_REDIS_URL", "valueFrom": ref}]}))
    )
    assert [e for e in c["env"] if e["name"] == "TIDE_REDIS_URL"] == [
        {"name": "TIDE_REDIS_URL", "valueFrom": ref}
    ]


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ({"metadata": "x"}, "spec.worker.podTemplate.metadata must be an object, not a string"),
        ({"metadata": {"labels": ["a"]}}, "spec.worker.podTemplate.metadata.labels must be an object"),
        ({"spec": {"containers": "worker"}}, "spec.worker.podTemplate.spec.containers must be a list"),
        (
            {"spec": {"containers": [{"image": "x"}]}},
            "spec.worker.podTemplate.spec.containers[0] must be an object with a name",
        ),
        (
            {"spec": {"securityContext": None}},
            "spec.worker.podTemplate.spec.securityContext must be an object, not null",
        ),
    ],
)
def test_a_template_of_the_wrong_shape_is_a_spec_error(template: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError) as err:
        build_deployment(QC, _spec({"podTemplate": template}))
    assert words in str(err.value)


# --- generated worker sections ------------------------------------------------------------------------

# Keys and strings of the pod spec's vocabulary, so generated templates hit the generated structure often.
WORDS = st.sampled_from(
    [
        "metadata", "labels", "spec", "containers", "name", "worker", "securityContext", "runAsNonRoot",
        "seccompProfile", "type", "capabilities", "drop", "add", "allowPrivilegeEscalation",
        "readOnlyRootFilesystem", "automountServiceAccountToken", "volumes", "volumeMounts", "tmp", "env",
        "value", "valueFrom", "resources", "limits", "requests", "livenessProbe", "ALL", "redis-ca",
    ]
) | st.text(max_size=3)  # fmt: skip
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | WORDS
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(WORDS, inner, max_size=4),
    max_leaves=12,
)


def _objects(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(WORDS, values, max_size=3)


ENV = st.fixed_dictionaries(
    {"name": WORDS | st.sampled_from(["TIDE_METRICS_PORT", "TIDE_REDIS_URL"])},
    optional={"value": WORDS | st.integers().map(str), "valueFrom": JSON},
)


# a securityContext-like object: the restricted keys, with garbage or plausible values
SECURITY = st.fixed_dictionaries(
    {},
    optional={
        "runAsNonRoot": JSON,
        "allowPrivilegeEscalation": JSON,
        "readOnlyRootFilesystem": JSON,
        "capabilities": st.fixed_dictionaries({}, optional={"drop": JSON, "add": JSON}) | JSON,
        "seccompProfile": st.fixed_dictionaries({}, optional={"type": JSON}) | JSON,
    },
)


def _mostly(good: st.SearchStrategy[Any], garbage: st.SearchStrategy[Any] = JSON) -> st.SearchStrategy[Any]:
    """``good`` three times in four, ``garbage`` otherwise."""
    return st.one_of(good, good, good, garbage)


@st.composite
def templates(draw: st.DrawFn) -> Any:
    """Garbage of every JSON type, and (more often) templates shaped like a pod template with garbage
    at any depth."""
    container = st.fixed_dictionaries(
        {"name": st.sampled_from(["worker", "worker", "sidecar"])},
        optional={
            "securityContext": _mostly(SECURITY),
            "env": _mostly(st.lists(ENV, max_size=2)),
            "volumeMounts": _mostly(
                st.lists(st.fixed_dictionaries({"name": WORDS, "mountPath": WORDS}), max_size=2)
            ),
            "image": JSON,
        },
    )
    spec = st.fixed_dictionaries(
        {},
        optional={
            "containers": _mostly(st.lists(container, min_size=1, max_size=2)),
            "securityContext": _mostly(SECURITY),
            "automountServiceAccountToken": JSON,
            "volumes": _mostly(
                st.lists(st.fixed_dictionaries({"name": WORDS, "emptyDir": JSON}), max_size=2)
            ),
            "hostNetwork": JSON,
        },
    )
    metadata = st.fixed_dictionaries({}, optional={"labels": _mostly(_objects(WORDS)), "annotations": JSON})
    shaped = st.fixed_dictionaries({}, optional={"metadata": _mostly(metadata), "spec": _mostly(spec)})
    # the restricted settings themselves overridden, at pod and container level
    worker = st.fixed_dictionaries({"name": st.just("worker"), "securityContext": SECURITY})
    overriding = st.fixed_dictionaries(
        {
            "spec": st.fixed_dictionaries(
                {"containers": st.lists(worker, min_size=1, max_size=2)},
                optional={"securityContext": SECURITY, "automountServiceAccountToken": JSON},
            )
        }
    )
    return draw(st.one_of(JSON, shaped, overriding))


@pytest.mark.fuzz
@given(
    template=templates(),
    env=_mostly(st.lists(ENV, max_size=3), st.lists(ENV | _objects(JSON), max_size=2)),
    resources=_mostly(_objects(_objects(WORDS))),
    command=st.lists(WORDS, max_size=3),
    ca=st.booleans(),
)
def test_generated_worker_sections_give_a_spec_error_or_a_restricted_pod(
    template: Any, env: list[dict[str, Any]], resources: Any, command: list[str], ca: bool
) -> None:
    from dataclasses import replace

    spec = _spec({}, ca=ca)
    assert spec.worker is not None
    # past parse_worker's own checks: build_deployment must cope with whatever shapes reach it
    worker = replace(
        spec.worker, pod_template=template, env=tuple(env), resources=resources, command=tuple(command)
    )
    try:
        manifest = build_deployment(QC, replace(spec, worker=worker))
    except SpecError as exc:
        assert str(exc)
        event(f"SpecError {str(exc)[:60]}")
        return
    json.dumps(manifest)  # what goes to the API server
    pod = manifest["spec"]["template"]["spec"]
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert labels["tide.dev/queueconsumer"] == "orders"
    c = _worker_container(manifest)
    user_pod = _at(template, ("spec",))
    user_containers = _at(user_pod, ("containers",))
    user_workers = [
        x for x in (user_containers if isinstance(user_containers, list) else []) if x.get("name") == "worker"
    ]
    for path, default in POD_DEFAULTS.items():
        given_value = _at(user_pod, path)
        assert _at(pod, path) == (default if given_value is _MISSING else given_value), path
    for path, default in CONTAINER_DEFAULTS.items():
        # worker entries merge over the generated container in order: each that sets the path wins
        values = [v for v in (_at(x, path) for x in user_workers) if v is not _MISSING]
        expected = default
        for v in values:
            expected = merge(expected, v)
        assert _at(c, path) == expected, path
        event(f"container {'.'.join(path)} {'overridden' if values else 'default'}")
    assert {e["name"] for e in c["env"]} >= {"TIDE_REDIS_URL", "TIDE_HANDLER", "TIDE_QUEUE"}


# --- redaction ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://user:pw@host:6379/0", "redis://***@host:6379/0"),
        ("rediss://:p@ss@host", "rediss://***@host"),  # an unescaped @ in the password
        (
            "Error at redis://h:1, then redis://a:b@c:2/0 failed",
            "Error at redis://h:1, then redis://***@c:2/0 failed",
        ),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("no url here: a@b", "no url here: a@b"),
    ],
)
def test_redact_hides_the_userinfo_of_every_url(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_a_url_redis_py_cannot_parse_is_named_redacted() -> None:
    from tide_worker.connection import RedisSettings, async_client, sync_client

    for cluster in (False, True):
        for make in (async_client, sync_client):
            with pytest.raises(ValueError) as err:
                make(RedisSettings(url="redis://u:hunter2@h:99999/0", cluster=cluster))
            assert str(err.value) == "bad Redis URL redis://***@h:99999/0: Port out of range 0-65535"
            assert err.value.__cause__ is None and err.value.__suppress_context__


# --- Fallback words -----------------------------------------------------------------------------------


def test_read_failures_without_a_fallback_count_hold_and_do_not_claim_a_fallback() -> None:
    scaling = Scaling(fallback=Fallback(failure_threshold=2, replicas=None))
    from tide_operator.policy import PolicyState

    d = decide(scaling, None, [], 3, PolicyState(failures=5), 0.0)
    assert (d.desired, d.rule, d.fallback) == (3, "read-failed", False)
    assert "no fallback.replicas set" in d.reason and "holding 3" in d.reason


@pytest.mark.parametrize(
    ("lists", "value"),
    [
        ([{"key": "high"}, {"key": "low"}], "high,low"),
        ([{"key": "queue:a", "weight": 3}, {"key": "b", "weight": 1}], "queue:a:3,b:1"),
    ],
)
def test_lists_go_to_the_worker_as_tide_queues_which_the_worker_reads_back(lists, value, monkeypatch) -> None:
    import argparse

    from tide_worker import worker_cli

    spec = parse_spec({**BASE_SPEC, "source": {"lists": lists}})
    env = {e["name"]: e.get("value") for e in _worker_container(build_deployment(QC, spec))["env"]}
    assert env["TIDE_QUEUES"] == value and "TIDE_QUEUE" not in env
    parser = argparse.ArgumentParser()
    worker_cli.add_arguments(parser)
    monkeypatch.delenv("TIDE_QUEUE", raising=False)
    monkeypatch.setenv("TIDE_QUEUES", value)
    cfg = worker_cli.config_from_args(parser.parse_args(["--handler", "m:f"]))
    assert cfg.queues == [x["key"] for x in lists]
    assert cfg.weights == [x["weight"] for x in lists if "weight" in x]


# --- the pod in the heartbeat, and a grace period a busy worker can finish in ----------------------------


def _env_of(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _worker_container(manifest)["env"]}


def test_the_worker_learns_its_pod_from_the_downward_api() -> None:
    env = _env_of(build_deployment(QC, _spec({})))
    assert env["TIDE_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["TIDE_POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


@pytest.mark.parametrize(
    ("env", "template", "shutdown_grace", "grace"),
    [
        ([], {}, "300", 315),  # the worker's default handler timeout, plus the margin
        ([{"name": "TIDE_HANDLER_TIMEOUT", "value": "45"}], {}, "45", 60),
        ([{"name": "TIDE_HANDLER_TIMEOUT", "value": "2.5"}], {}, "2.5", 18),
        ([{"name": "TIDE_HANDLER_TIMEOUT", "value": "oops"}], {}, "300", 315),  # the worker refuses it
        ([{"name": "TIDE_SHUTDOWN_GRACE", "value": "10"}], {}, "10", 25),  # the user's shutdown grace
        ([{"name": "TIDE_HANDLER_TIMEOUT", "value": "0"}], {}, "300", 315),  # no timeout: the default
        ([{"name": "TIDE_SHUTDOWN_GRACE", "value": "0"}], {}, "0", 15),
        ([{"name": "TIDE_HANDLER_TIMEOUT", "value": "45"}], {"spec": {"terminationGracePeriodSeconds": 7}}, "45", 7),
    ],
)  # fmt: skip
def test_termination_grace_follows_the_handler_timeout_unless_set(
    env: list[dict[str, Any]], template: dict[str, Any], shutdown_grace: str, grace: int
) -> None:
    manifest = build_deployment(QC, _spec({"env": env, "podTemplate": template}))
    assert manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace
    assert _env_of(manifest)["TIDE_SHUTDOWN_GRACE"]["value"] == shutdown_grace


def test_sentinel_pods_get_the_same_sentinels_and_both_passwords_by_reference() -> None:
    spec = parse_spec(
        {
            **BASE_SPEC,
            "redis": {
                "sentinel": {
                    "masterName": "mymaster",
                    "sentinels": ["s0:26379", "s1:26379"],
                    "passwordSecretRef": {"name": "sentinel", "key": "pw"},
                },
                "passwordSecretRef": {"name": "redis", "key": "password"},
                "tls": {"enabled": True, "caSecretRef": {"name": "ca", "key": "ca.crt"}},
            },
        }
    )
    manifest = build_deployment(QC, spec)
    env = {e["name"]: e for e in _worker_container(manifest)["env"]}
    assert (
        env["TIDE_REDIS_URL"]["value"] == spec.redis.url == "rediss+sentinel://s0:26379,s1:26379/mymaster/0"
    )
    assert env["TIDE_REDIS_CLUSTER"]["value"] == "false"
    assert env["TIDE_REDIS_SENTINEL_PASSWORD"] == {
        "name": "TIDE_REDIS_SENTINEL_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "sentinel", "key": "pw"}},
    }
    assert env["TIDE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "password"}
    assert env["TIDE_REDIS_CA_FILE"]["value"].endswith("/ca.crt")
