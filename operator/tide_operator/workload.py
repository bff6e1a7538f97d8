"""The Deployment a ``worker:`` section asks for: the Tide worker, configured from spec.redis and spec.source.

Owned by the QueueConsumer (controller ownerReference), so deleting the resource garbage-collects it.
Redis credentials reach the pod as ``secretKeyRef`` env vars and the CA as a mounted Secret, never as
plaintext in the pod spec.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tide_operator.spec import GROUP, KIND, VERSION, QueueConsumerSpec, TargetRef

CA_MOUNT = "/etc/tide/redis-ca"


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


def _env(spec: QueueConsumerSpec) -> list[dict[str, Any]]:
    r, s = spec.redis, spec.source
    assert spec.worker is not None
    env: list[dict[str, Any]] = [
        {"name": "TIDE_REDIS_URL", "value": r.url},
        {"name": "TIDE_REDIS_CLUSTER", "value": "true" if r.cluster else "false"},
        {"name": "TIDE_HANDLER", "value": spec.worker.handler},
        {"name": "TIDE_CONCURRENCY", "value": str(spec.worker.concurrency)},
        {"name": "TIDE_MAX_ATTEMPTS", "value": str(spec.worker.max_attempts)},
    ]
    if s.kind == "list":
        env += [{"name": "TIDE_QUEUE", "value": s.key}, {"name": "TIDE_SIDE", "value": s.side}]
    else:
        env += [{"name": "TIDE_STREAM", "value": s.key}, {"name": "TIDE_GROUP", "value": s.group}]
    if r.username:
        env.append({"name": "TIDE_REDIS_USERNAME", "value": r.username})
    for var, ref in (("TIDE_REDIS_USERNAME", r.username_secret), ("TIDE_REDIS_PASSWORD", r.password_secret)):
        if ref is not None:
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if r.ca_secret is not None:
        env.append({"name": "TIDE_REDIS_CA_FILE", "value": f"{CA_MOUNT}/{r.ca_secret.key}"})
    if r.tls_insecure:
        env.append({"name": "TIDE_REDIS_TLS_INSECURE", "value": "true"})
    return merge(env, [dict(e) for e in spec.worker.env])  # type: ignore[no-any-return]


def build_deployment(qc: Mapping[str, Any], spec: QueueConsumerSpec) -> dict[str, Any]:
    """The Deployment manifest for a QueueConsumer with a ``worker:`` section."""
    assert spec.worker is not None
    meta = qc["metadata"]
    name = deployment_name(meta["name"])
    labels = {
        "app.kubernetes.io/name": "tide-worker",
        "app.kubernetes.io/managed-by": "tide-operator",
        "tide.dev/queueconsumer": meta["name"],
    }
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.worker.image,
        "command": list(spec.worker.command),
        "env": _env(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
        },
    }
    if spec.worker.resources:
        container["resources"] = spec.worker.resources
    pod_spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": 30}
    if spec.redis.ca_secret is not None:
        container["volumeMounts"] = [{"name": "redis-ca", "mountPath": CA_MOUNT, "readOnly": True}]
        pod_spec["volumes"] = [{"name": "redis-ca", "secret": {"secretName": spec.redis.ca_secret.name}}]
    template = merge({"metadata": {"labels": labels}, "spec": pod_spec}, spec.worker.pod_template)
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
