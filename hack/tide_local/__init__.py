"""A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager built from source)
and a node agent that runs pods as local processes, for Tide's tests and demo."""

from tide_local.paths import CACHE_DIR, CLUSTER_DIR, REPO_ROOT

__all__ = ["CACHE_DIR", "CLUSTER_DIR", "REPO_ROOT"]
