"""Load the cluster fixtures here too until ``tests/conftest.py`` lists ``tests.conftest_cluster`` in
``pytest_plugins`` (then this import is skipped, so the fixtures are defined once)."""

import sys

if "tests.conftest_cluster" not in sys.modules:
    from tests.conftest_cluster import (  # noqa: F401
        cluster,
        k8s,
        namespace,
        node_agent,
        pytest_collection_finish,
        sa_kubeconfig,
    )
