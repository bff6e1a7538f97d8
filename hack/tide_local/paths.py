"""Where things live: everything the control plane writes is under ``<repo>/.cache``."""

from __future__ import annotations

import os
from pathlib import Path


def _repo_root() -> Path:
    override = os.environ.get("TIDE_ROOT")
    if override:
        return Path(override).resolve()
    return Path(__file__).resolve().parents[2]


REPO_ROOT = _repo_root()
GO_MODULE_DIR = REPO_ROOT / "hack" / "controlplane"
CACHE_DIR = REPO_ROOT / ".cache"
BIN_CACHE_DIR = CACHE_DIR / "controlplane"
# TIDE_CLUSTER_DIR gives a run (a benchmark, say) a cluster of its own, apart from the shared one.
CLUSTER_DIR = Path(os.environ.get("TIDE_CLUSTER_DIR") or CACHE_DIR / "cluster").resolve()
CLUSTER_LOCK = CLUSTER_DIR.parent / f"{CLUSTER_DIR.name}.lock"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
