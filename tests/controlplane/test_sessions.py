"""Session bookkeeping: a cluster started for test sessions stops only when its last user leaves."""

from __future__ import annotations

import os

import pytest
from tide_local import cluster as local_cluster


@pytest.fixture
def cluster_dir(tmp_path, monkeypatch):
    """An empty cluster directory of our own, so stopping it touches nothing real."""
    directory = tmp_path / "cluster"
    directory.mkdir()
    monkeypatch.setattr(local_cluster, "CLUSTER_DIR", directory)
    monkeypatch.setattr(local_cluster, "CLUSTER_LOCK", tmp_path / "cluster.lock")
    monkeypatch.delenv("TIDE_KEEP_CLUSTER", raising=False)
    (directory / local_cluster.AUTO_STOP).touch()
    (directory / "kubeconfig").write_text("stand-in")
    return directory


def test_two_sessions_of_one_process_are_counted_apart(cluster_dir):
    # the e2e scenario registers a session inside the pytest session's own process: its release must not
    # stop the cluster under the tests that follow (it did, and every later cluster test failed)
    outer = local_cluster.register_session(os.getpid())
    inner = local_cluster.register_session(os.getpid())
    assert outer != inner
    assert local_cluster.release(inner, verbose=False) is False
    assert (cluster_dir / "kubeconfig").exists()
    assert local_cluster.live_sessions() == [os.getpid()]
    assert local_cluster.release(outer, verbose=False) is True
    assert not (cluster_dir / "kubeconfig").exists()


def test_entries_of_dead_processes_are_dropped(cluster_dir):
    sessions = cluster_dir / "sessions"
    sessions.mkdir()
    (sessions / "999999999-deadbeef").write_text("gone")
    (sessions / "999999999").write_text("old format")
    assert local_cluster.live_sessions() == []
    assert list(sessions.iterdir()) == []
