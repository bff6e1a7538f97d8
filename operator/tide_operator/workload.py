"""The Deployment a ``worker:`` section asks for: the Tide worker, configured from spec.redis and spec.source.

Owned by the QueueConsumer (controller ownerReference), so deleting the resource garbage-collects it.
Redis credentials reach the pod as ``secretKeyRef`` env vars and the CA as a mounted Secret, never as
plaintext in the pod spec. With spec.redis.sentinel the pods get the ``redis+sentinel://`` URL the
operator connects with (so they ask the same sentinels) and the sentinels' password as a ``secretKeyRef``.

The pods pass Pod Security "restricted" as generated: non-root, no privilege escalation, every capability
dropped, the runtime's default seccomp profile, a read-only root with an ``emptyDir`` on ``/tmp``, no
ServiceAccount token (the worker never calls the API server). They have default resources and probes on
the worker's ``/healthz`` and ``/readyz``. ``podTemplate`` can override any of it; a ``podTemplate`` whose
shape cannot be merged (a string where the template has an object, a container without a name) is a
``SpecError``, never a crash.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from tide_worker import environment as E

from tide_operator.spec import GROUP, KIND, VERSION, QueueConsumerSpec, SpecError, TargetRef

CA_MOUNT = "/etc/tide/redis-ca"
# The worker's /metrics, /healthz and /readyz port (tide worker --metrics-port, env TIDE_METRICS_PORT).
METRICS_PORT = E.DEFAULT_METRICS_PORT
# What one worker process needs at rest (about 60 MiB resident); the memory limit leaves room for handlers.
DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}
# Pod Security "restricted": https://kubernetes.io/docs/concepts/security/pod-security-standards/
POD_SECURITY: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
TEMPLATE_PATH = "spec.worker.podTemplate"
# Seconds past the worker's shutdown grace before the kubelet kills it: to hand back what is left.
GRACE_MARGIN = 15


def deployment_name(qc_name: str) -> str:
    return f"{qc_name}-worker"


def target_for(qc_name: str) -> TargetRef:
    return TargetRef("apps/v1", "Deployment", deployment_name(qc_name))


def merge(base: Any, override: Any) -> Any:
    """Deep merge; lists of named items (containers, env, volumes) merge by name, other lists replace."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(override, list):
        if all(isinstance(x, Mapping) and "name" in x for x in [*base, *override]):
            merged = {x["name"]: x for x in base}
            for item in override:
                merged[item["name"]] = merge(merged[item["name"]], item) if item["name"] in merged else item
            return list(merged.values())
        return copy.deepcopy(override)
    return copy.deepcopy(override)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def _named(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(x, Mapping) and "name" in x for x in items)


def check_mergeable(base: Any, override: Any, path: str) -> None:
    """Raise ``SpecError`` where ``merge(base, override)`` would put a value of the wrong shape over the
    generated template: an object replaced by a scalar (``metadata: "x"``), a list of named items
    (containers, env, volumes) by a non-list, or an item of such a list without a string name (which
    would make the whole list replace the generated one, the worker container with it). Everything else
    is for the API server to judge."""
    if isinstance(base, Mapping):
        if not isinstance(override, Mapping):
            raise SpecError(f"{path} must be an object, not {_kind(override)}")
        for key, value in override.items():
            if key in base:
                check_mergeable(base[key], value, f"{path}.{key}")
        return
    if base and _named(base):
        if not isinstance(override, list):
            raise SpecError(f"{path} must be a list, not {_kind(override)}")
        by_name = {x["name"]: x for x in base}
        for i, item in enumerate(override):
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"]:
                raise SpecError(f"{path}[{i}] must be an object with a name")
            if item["name"] in by_name:
                check_mergeable(by_name[item["name"]], item, f"{path}[{i}]")


def metrics_port(env: list[dict[str, Any]], command: tuple[str, ...]) -> int | None:
    """The port the worker serves /healthz on, or None when it cannot be known from the pod spec (set on
    the command line, from a ``valueFrom``, 0 for any port, -1 for off): then the pod gets no probes."""
    if any(arg == "--metrics-port" or str(arg).startswith("--metrics-port=") for arg in command):
        return None
    for e in env:
        if e.get("name") == E.METRICS_PORT:
            try:
                port = int(str(e.get("value")))
            except ValueError:
                return None
            return port if 0 < port < 65536 and "valueFrom" not in e else None
    return METRICS_PORT


def _probes(port: int) -> dict[str, Any]:
    # /healthz fails only when the worker's event loop stalls; /readyz while Redis is unreachable or the
    # worker is stopping (no Service routes to workers, so readiness only shows in kubectl and rollouts)
    return {
        "ports": [{"name": "metrics", "containerPort": port, "protocol": "TCP"}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
    }


def _env(spec: QueueConsumerSpec) -> list[dict[str, Any]]:
    r, s = spec.redis, spec.source
    assert spec.worker is not None
    env: list[dict[str, Any]] = [
        {"name": E.REDIS_URL, "value": r.url},
        {"name": E.REDIS_CLUSTER, "value": "true" if r.cluster else "false"},
        {"name": E.HANDLER, "value": spec.worker.handler},
        {"name": E.CONCURRENCY, "value": str(spec.worker.concurrency)},
        {"name": E.MAX_ATTEMPTS, "value": str(spec.worker.max_attempts)},
        # explicit, so the probes' port is the one the worker serves whatever the image's default
        {"name": E.METRICS_PORT, "value": str(METRICS_PORT)},
        # the pod, for the heartbeat: the operator sets its deletion cost from the work it holds
        {"name": E.POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": E.POD_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    if s.lists and len(s.lists) > 1:
        value = ",".join(f"{k}:{w}" if w else k for k, w in s.lists)
        env += [{"name": E.QUEUES, "value": value}, {"name": E.SIDE, "value": s.side}]
    elif s.kind == "list":
        env += [{"name": E.QUEUE, "value": s.key}, {"name": E.SIDE, "value": s.side}]
    else:
        env += [{"name": E.STREAM, "value": s.key}, {"name": E.GROUP, "value": s.group}]
    if r.username:
        env.append({"name": E.REDIS_USERNAME, "value": r.username})
    refs = [(E.REDIS_USERNAME, r.username_secret), (E.REDIS_PASSWORD, r.password_secret)]
    if r.sentinel is not None:  # TIDE_REDIS_URL is the redis+sentinel:// URL: the same sentinels
        refs.append((E.REDIS_SENTINEL_PASSWORD, r.sentinel.password_secret))
    for var, ref in refs:
        if ref is not None:
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if r.ca_secret is not None:
        env.append({"name": E.REDIS_CA_FILE, "value": f"{CA_MOUNT}/{r.ca_secret.key}"})
    if r.tls_insecure:
        env.append({"name": E.REDIS_TLS_INSECURE, "value": "true"})
    user = list(spec.worker.env)
    check_mergeable(env, user, "spec.worker.env")
    # an entry replaces the generated one of its name whole: merged, a user's valueFrom would sit beside
    # the generated value, which the API server refuses
    merged = {e["name"]: e for e in env}
    for e in user:
        merged[e["name"]] = copy.deepcopy(dict(e))
    if E.SHUTDOWN_GRACE not in merged:  # a stopped worker may finish the job it holds
        timeout = handler_timeout(user)
        merged[E.SHUTDOWN_GRACE] = {"name": E.SHUTDOWN_GRACE, "value": f"{timeout:g}"}
    return list(merged.values())


def _seconds(env: list[dict[str, Any]], name: str, default: float) -> float:
    """A plain numeric ``value`` of the env entry ``name``, else ``default`` (a valueFrom or a bad
    number: the worker's own check reports it; here the default stands)."""
    for e in env:
        if e.get("name") == name and isinstance(e.get("value"), str):
            try:
                value = float(e["value"])
            except ValueError:
                return default
            return value if 0 <= value < float("inf") else default
    return default


def handler_timeout(env: list[dict[str, Any]]) -> float:
    """The worker's handler timeout as ``env`` sets it (0, no timeout: the worker's default stands in)."""
    return _seconds(env, E.HANDLER_TIMEOUT, E.DEFAULT_HANDLER_TIMEOUT) or E.DEFAULT_HANDLER_TIMEOUT


def termination_grace(env: list[dict[str, Any]]) -> int:
    """The pod's ``terminationGracePeriodSeconds``: the worker's shutdown grace (by default its handler
    timeout, so a stopped worker can finish the job it holds) plus GRACE_MARGIN for handing back the rest."""
    grace = _seconds(env, E.SHUTDOWN_GRACE, handler_timeout(env))
    return math.ceil(grace) + GRACE_MARGIN


def build_deployment(qc: Mapping[str, Any], spec: QueueConsumerSpec) -> dict[str, Any]:
    """The Deployment manifest for a QueueConsumer with a ``worker:`` section; ``SpecError`` when the
    section cannot be turned into one."""
    assert spec.worker is not None
    w = spec.worker
    meta = qc["metadata"]
    name = deployment_name(meta["name"])
    labels = {
        "app.kubernetes.io/name": "tide-worker",
        "app.kubernetes.io/managed-by": "tide-operator",
        "tide.dev/queueconsumer": meta["name"],
    }
    if not isinstance(w.resources, Mapping):
        raise SpecError(f"spec.worker.resources must be an object, not {_kind(w.resources)}")
    if not isinstance(w.pod_template, Mapping):
        raise SpecError(f"{TEMPLATE_PATH} must be an object, not {_kind(w.pod_template)}")
    if not all(isinstance(arg, str) for arg in w.command):
        raise SpecError("spec.worker.command must be a list of strings")
    env = _env(spec)
    container: dict[str, Any] = {
        "name": "worker",
        "image": w.image,
        "command": list(w.command),
        "env": env,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "resources": copy.deepcopy(dict(w.resources) or DEFAULT_RESOURCES),
        # the root filesystem is read-only; Python and handlers may still want a scratch directory
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    port = metrics_port(env, w.command)
    if port is not None:
        container.update(_probes(port))
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": termination_grace(env),
        "automountServiceAccountToken": False,  # the worker talks to Redis only
        "securityContext": copy.deepcopy(POD_SECURITY),
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
    }
    if spec.redis.ca_secret is not None:
        container["volumeMounts"].append({"name": "redis-ca", "mountPath": CA_MOUNT, "readOnly": True})
        pod_spec["volumes"].append({"name": "redis-ca", "secret": {"secretName": spec.redis.ca_secret.name}})
    base = {"metadata": {"labels": labels}, "spec": pod_spec}
    check_mergeable(base, w.pod_template, TEMPLATE_PATH)
    template = merge(base, w.pod_template)
    template["metadata"]["labels"].update(labels)  # the selector must keep matching
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {
            "replicas": spec.scaling.min_replicas,
            "selector": {"matchLabels": {"tide.dev/queueconsumer": meta["name"]}},
            "template": template,
        },
    }
