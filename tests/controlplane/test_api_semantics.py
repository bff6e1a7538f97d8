"""What mocks get wrong and the real API server gets right: structural schemas with validation messages
and pruning, the scale subresource, garbage collection of owned objects, and RBAC."""

from __future__ import annotations

import time

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests import waiting

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "test.tide.dev", "v1", "widgets"

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                        "labelSelectorPath": ".status.selector",
                    },
                },
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["queue"],
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.minReplicas <= self.maxReplicas",
                                        "message": "minReplicas must not exceed maxReplicas",
                                    }
                                ],
                                "properties": {
                                    "queue": {"type": "string", "minLength": 1},
                                    "replicas": {"type": "integer", "minimum": 0, "default": 1},
                                    "minReplicas": {"type": "integer", "minimum": 0, "default": 0},
                                    "maxReplicas": {"type": "integer", "minimum": 0, "default": 10},
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "replicas": {"type": "integer"},
                                    "selector": {"type": "string"},
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def widget_crd(cluster):
    api_client = cluster.api_client()
    ext = client.ApiextensionsV1Api(api_client)
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except ApiException as exc:
        if exc.status != 409:
            raise
    deadline = time.monotonic() + 30
    while True:
        crd = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        conditions = {c.type: c.status for c in (crd.status.conditions or [])}
        if conditions.get("Established") == "True":
            break
        assert time.monotonic() < deadline, f"CRD not established: {conditions}"
        time.sleep(0.1)
    # discovery for the new group can lag establishment by a moment
    custom = client.CustomObjectsApi(api_client)
    while True:
        try:
            custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
            break
        except ApiException:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    yield
    api_client.close()


def widget(name, **spec):
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def wait_until(predicate, timeout=90.0, interval=0.1, what="condition"):
    # generous bounds: these take well under a second on an idle machine, but the cluster may be shared
    # with benchmarks and other test sessions on 2 cores
    return waiting.wait_until(predicate, timeout, interval, what)


def test_invalid_object_rejected_with_the_schemas_message(widget_crd, k8s, namespace):
    custom = client.CustomObjectsApi(k8s)
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, widget("bad", queue="jobs", minReplicas=5, maxReplicas=2)
        )
    assert err.value.status == 422
    assert "minReplicas must not exceed maxReplicas" in err.value.body

    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, widget("bad", queue="jobs", replicas=-1)
        )
    assert err.value.status == 422
    assert "spec.replicas" in err.value.body and "greater than or equal to 0" in err.value.body


def test_unknown_fields_are_pruned_and_defaults_applied(widget_crd, k8s, namespace):
    custom = client.CustomObjectsApi(k8s)
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("pruned", queue="jobs", colour="blue")
    )
    assert "colour" not in created["spec"]
    assert created["spec"]["replicas"] == 1 and created["spec"]["maxReplicas"] == 10


def test_scale_subresource(widget_crd, k8s, namespace):
    custom = client.CustomObjectsApi(k8s)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("scaled", queue="jobs", replicas=2)
    )
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "scaled", {"status": {"replicas": 2, "selector": "app=scaled"}}
    )
    scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "scaled")
    assert scale["spec"]["replicas"] == 2
    assert scale["status"] == {"replicas": 2, "selector": "app=scaled"}

    custom.patch_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, PLURAL, "scaled", {"spec": {"replicas": 7}}
    )
    assert (
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "scaled")["spec"]["replicas"]
        == 7
    )

    # a status write through the main resource is ignored: status is a subresource
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "scaled", {"status": {"replicas": 99}}
    )
    assert (
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "scaled")["status"]["replicas"]
        == 2
    )


def test_stale_resource_version_conflicts(k8s, namespace):
    core = client.CoreV1Api(k8s)
    cm = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm"), data={"a": "1"})
    )
    core.patch_namespaced_config_map("cm", namespace, {"data": {"a": "2"}})
    cm.data = {"a": "3"}
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map("cm", namespace, cm)
    assert err.value.status == 409


def deployment(name, labels, replicas=1, owner=None, command=("sleep", "3600")):
    meta = client.V1ObjectMeta(name=name, labels=labels)
    if owner is not None:
        meta.owner_references = [owner]
    return client.V1Deployment(
        metadata=meta,
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="main", image="none", command=list(command))]
                ),
            ),
        ),
    )


def test_owned_deployment_is_garbage_collected(k8s, namespace):
    core, apps = client.CoreV1Api(k8s), client.AppsV1Api(k8s)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid, controller=True
    )
    apps.create_namespaced_deployment(namespace, deployment("owned", {"app": "owned"}, replicas=0, owner=ref))
    wait_until(lambda: apps.list_namespaced_replica_set(namespace).items, what="the ReplicaSet")

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def gone():
        try:
            apps.read_namespaced_deployment("owned", namespace)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_until(gone, what="the owned Deployment to be garbage-collected")
    wait_until(lambda: not apps.list_namespaced_replica_set(namespace).items, what="its ReplicaSet")


def test_service_account_without_permission_is_refused(cluster, k8s, namespace, sa_kubeconfig):
    from tide_local.kubeconfig import admin_api_client

    path = sa_kubeconfig(namespace, "robot")
    robot = admin_api_client(path)
    try:
        robot_core = client.CoreV1Api(robot)
        with pytest.raises(ApiException) as err:
            robot_core.list_namespaced_pod(namespace)
        assert err.value.status == 403
        assert f"system:serviceaccount:{namespace}:robot" in err.value.body

        rbac = client.RbacAuthorizationV1Api(k8s)
        rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="pod-reader"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="robot-reads-pods"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"
                ),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name="robot", namespace=namespace)],
            ),
        )

        def allowed():
            try:
                robot_core.list_namespaced_pod(namespace)
                return True
            except ApiException as exc:
                assert exc.status == 403
                return False

        wait_until(allowed, timeout=30, what="the RoleBinding to take effect")
        # ... and no more than that
        with pytest.raises(ApiException) as err:
            robot_core.list_namespaced_secret(namespace)
        assert err.value.status == 403
        with pytest.raises(ApiException) as err:
            robot_core.delete_collection_namespaced_pod(namespace)
        assert err.value.status == 403
    finally:
        robot.close()


def test_watch_sends_initial_events_then_a_bookmark(cluster, k8s, namespace):
    """Streaming lists (sendInitialEvents) end the initial state with a bookmark; the API server relies on
    etcd's watch progress requests for this (etcd >= 3.5.13)."""
    from tide_local.kube import Kube

    core = client.CoreV1Api(k8s)
    for i in range(3):
        core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"cm{i}"))
        )
    kube = Kube(cluster.kubeconfig)
    params = {
        "sendInitialEvents": "true",
        "resourceVersionMatch": "NotOlderThan",
        "allowWatchBookmarks": "true",
    }
    added = []
    for event in kube.watch(f"/api/v1/namespaces/{namespace}/configmaps", params, timeout_seconds=20):
        if event["type"] == "ADDED":
            added.append(event["object"]["metadata"]["name"])
        elif event["type"] == "BOOKMARK":
            annotations = event["object"]["metadata"].get("annotations") or {}
            assert annotations.get("k8s.io/initial-events-end") == "true"
            break
    else:
        pytest.fail("the watch ended without the initial-events-end bookmark")
    assert {"cm0", "cm1", "cm2"} <= set(added)
