"""The helm CLI for tests and make targets, built from the pinned Go module in ``hack/helm``.

There is no prebuilt download here: like the control plane, helm is built once through the Go module
proxy into ``.cache/helm/<version>/helm`` (a relink when Go's build cache is warm).

Usage: ``python -m tide_local.helmbin [helm args...]`` runs helm; with no args prints its path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tide_local.build import _build_one, _go, file_lock, pinned_version
from tide_local.paths import CACHE_DIR, REPO_ROOT

HELM_MODULE_DIR = REPO_ROOT / "hack" / "helm"
PACKAGE = "helm.sh/helm/v3/cmd/helm"


def helm_version() -> str:
    return pinned_version(HELM_MODULE_DIR, "helm.sh/helm/v3")


def ensure_helm() -> Path:
    """Path of the pinned helm binary, building it first if needed."""
    version = helm_version()
    out = CACHE_DIR / "helm" / version / "helm"
    if os.access(out, os.X_OK):
        return out
    with file_lock(CACHE_DIR / "helm" / ".build.lock", "building helm"):
        if not os.access(out, os.X_OK):
            out.parent.mkdir(parents=True, exist_ok=True)
            ldflags = f"-s -w -X helm.sh/helm/v3/internal/version.version={version}"
            _build_one(_go(), "helm", PACKAGE, out, ldflags, cwd=HELM_MODULE_DIR)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    helm = ensure_helm()
    if not args:
        print(helm)
        return 0
    return subprocess.call([str(helm), *args])


if __name__ == "__main__":
    sys.exit(main())
