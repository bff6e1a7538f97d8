"""Build etcd, kube-apiserver, kube-controller-manager and kubectl from the pinned Go module.

The binaries land in ``.cache/controlplane/k8s-<version>-etcd-<version>/`` together with a stamp
that records what was built; a matching stamp means nothing is rebuilt. A lock file makes concurrent
callers (two pytest sessions, ``make cluster-up`` in another terminal) wait for one build.

Usage: ``python -m tide_local.build [--force]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tide_local.paths import BIN_CACHE_DIR, GO_MODULE_DIR

# name of the binary -> Go package that builds it
BINARIES: dict[str, str] = {
    "etcd": "go.etcd.io/etcd/server/v3",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
STAMP = ".complete.json"
# Rough wall times on 2 cores, shown while building.
COLD_BUILD_HINT = "a first build with an empty Go build cache takes ~8 min on 2 cores"
WARM_BUILD_HINT = "with a warm Go build cache this is a relink, ~30 s"


@dataclass(frozen=True)
class Versions:
    kubernetes: str
    etcd: str

    @property
    def k8s_minor(self) -> str:
        return self.kubernetes.lstrip("v").split(".")[1]

    @property
    def k8s_major(self) -> str:
        return self.kubernetes.lstrip("v").split(".")[0]


def versions() -> Versions:
    """The Kubernetes and etcd versions pinned in ``hack/controlplane/go.mod``."""
    text = (GO_MODULE_DIR / "go.mod").read_text()
    k8s = re.search(r"^\s*k8s\.io/kubernetes\s+(v\S+)", text, re.M)
    etcd = re.search(r"^\s*go\.etcd\.io/etcd/server/v3\s+(v\S+)", text, re.M)
    if not k8s or not etcd:
        raise RuntimeError(f"cannot find the pinned versions in {GO_MODULE_DIR / 'go.mod'}")
    return Versions(kubernetes=k8s.group(1), etcd=etcd.group(1))


def pinned_version(module_dir: Path, module: str) -> str:
    """The version ``module_dir/go.mod`` requires of ``module`` (the tools pinned under ``hack/``)."""
    found = re.search(rf"^require\s+{re.escape(module)}\s+(v\S+)", (module_dir / "go.mod").read_text(), re.M)
    if not found:
        raise RuntimeError(f"cannot find the pinned version of {module} in {module_dir / 'go.mod'}")
    return found.group(1)


def bin_dir(v: Versions | None = None) -> Path:
    v = v or versions()
    return BIN_CACHE_DIR / f"k8s-{v.kubernetes}-etcd-{v.etcd}"


def _ldflags(v: Versions) -> str:
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={v.kubernetes}",
            f"-X {pkg}.gitMajor={v.k8s_major}",
            f"-X {pkg}.gitMinor={v.k8s_minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _spec(v: Versions) -> dict[str, object]:
    """Everything that, when changed, calls for a rebuild."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((GO_MODULE_DIR / name).read_bytes())
    return {
        "kubernetes": v.kubernetes,
        "etcd": v.etcd,
        "binaries": BINARIES,
        "ldflags": _ldflags(v),
        "module_sha256": digest.hexdigest(),
    }


def _is_complete(directory: Path, spec: dict[str, object]) -> bool:
    try:
        stamp = json.loads((directory / STAMP).read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("spec") != spec:
        return False
    return all(os.access(directory / name, os.X_OK) for name in BINARIES)


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"==> waiting for another process holding {path.name} ({what})", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if go is None:
        raise RuntimeError(
            "Go is needed to build the control plane (https://go.dev/dl/); `go` is not on PATH"
        )
    return go


def _build_one(go: str, name: str, package: str, out: Path, ldflags: str, cwd: Path = GO_MODULE_DIR) -> None:
    started = time.monotonic()
    print(f"==> building {name} from {package}", flush=True)
    tmp = out.with_name(out.name + ".tmp")
    cmd = [go, "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), package]
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert proc.stdout is not None
    compiled = 0
    tail: list[str] = []
    last_report = time.monotonic()
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-40:], line]
        if line and " " not in line and not line.startswith("#"):
            compiled += 1  # `go build -v` prints each package it compiles
        now = time.monotonic()
        if now - last_report >= 15:
            last_report = now
            print(f"    {name}: {compiled} packages compiled, {now - started:.0f}s", flush=True)
    if proc.wait() != 0:
        print("\n".join(tail), file=sys.stderr)
        raise RuntimeError(f"go build of {name} failed (exit {proc.returncode})")
    tmp.replace(out)
    print(f"    {name}: done in {time.monotonic() - started:.0f}s ({compiled} packages compiled)", flush=True)


def ensure_binaries(force: bool = False) -> Path:
    """Return the directory holding the four binaries, building them first if needed."""
    v = versions()
    spec = _spec(v)
    directory = bin_dir(v)
    if not force and _is_complete(directory, spec):
        return directory
    with file_lock(BIN_CACHE_DIR / ".build.lock", "building the control plane"):
        if not force and _is_complete(directory, spec):
            return directory
        go = _go()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STAMP).unlink(missing_ok=True)
        print(
            f"==> building the control plane: Kubernetes {v.kubernetes}, etcd {v.etcd} into {directory}\n"
            f"    ({COLD_BUILD_HINT}; {WARM_BUILD_HINT})",
            flush=True,
        )
        started = time.monotonic()
        ldflags = _ldflags(v)
        for name, package in BINARIES.items():
            _build_one(go, name, package, directory / name, ldflags)
        elapsed = time.monotonic() - started
        (directory / STAMP).write_text(
            json.dumps({"spec": spec, "build_seconds": round(elapsed, 1)}, indent=2)
        )
        print(f"==> control plane built in {elapsed:.0f}s", flush=True)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tide_local.build", description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if the cached binaries match")
    args = parser.parse_args(argv)
    print(ensure_binaries(force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
