"""Deleting a namespace whose QueueConsumers outlived their operator.

kopf puts a finalizer on every resource it runs a daemon for, so the daemon is stopped before the object
goes. When the operator is already gone (a test or a benchmark stopped it first), nothing removes that
finalizer and the namespace stays ``Terminating`` for ever; a cluster-wide operator started later then
inherits thousands of half-deleted resources. Tests and benchmarks therefore delete the namespace and drop
the finalizers of what is left in it.
"""

from __future__ import annotations

from typing import Any

GROUP, VERSION, PLURAL = "tide.dev", "v1alpha1", "queueconsumers"


def delete_namespace(api_client: Any, namespace: str) -> int:
    """Delete ``namespace`` and drop the finalizers of its QueueConsumers; returns how many were released."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    try:
        core.delete_namespace(namespace, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise
    released = 0
    try:
        listing: Any = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    except ApiException as exc:
        if exc.status == 404:  # no CRD, or the namespace is already gone
            return 0
        raise
    for item in listing.get("items", []):
        if not item["metadata"].get("finalizers"):
            continue
        try:
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
            )
            released += 1
        except ApiException as exc:
            if exc.status != 404:
                raise
    return released
