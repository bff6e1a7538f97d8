"""Load the cluster fixtures here too until ``tests/conftest.py`` lists ``tests.conftest_cluster`` in
``pytest_plugins`` (then this import is skipped, so the fixtures are defined once)."""

import sys

if "tests.conftest_cluster" not in sys.modules:
    from tests.conftest_cluster import cluster, k8s, namespace, node_agent, sa_kubeconfig  # noqa: F401
