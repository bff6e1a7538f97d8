"""The control plane itself: health, authentication, version, and reuse of a running cluster."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.cluster


def test_readyz_answers_ok(cluster):
    result = cluster.run_kubectl("get", "--raw", "/readyz")
    assert result.stdout.strip() == "ok"


def test_version_is_the_pinned_release(cluster):
    result = cluster.run_kubectl("version", "-o", "json")
    assert '"gitVersion": "v1.36.3"' in result.stdout


def test_anonymous_requests_are_refused(cluster):
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{cluster.server}/api/v1/namespaces", context=ctx, timeout=5)
    assert err.value.code in (401, 403)


def test_second_up_reuses_the_running_cluster(cluster):
    started = time.monotonic()
    result = subprocess.run(
        # what `make cluster-up` runs, minus the CLI adopting the cluster (which would keep a cluster this
        # test session started running after the session ends)
        [sys.executable, "-c", "from tide_local.cluster import up; up()"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    elapsed = time.monotonic() - started
    assert "reusing the running cluster" in result.stdout
    assert cluster.server in result.stdout
    assert elapsed < 10, f"a second `up` took {elapsed:.1f}s"
