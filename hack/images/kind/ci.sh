#!/usr/bin/env bash
# The last step of `make test` (what CI runs): `make e2e-kind` wherever it can run, after pytest, so that
# its engine runtime switch (hack/docker.sh --privileged) comes after the container tests of the same run.
# Where it cannot run (no Docker engine, no root for the runc wrapper, neither kind nor Go to build it)
# it prints one line saying why and exits 0. TIDE_SKIP_KIND=1 skips it on purpose (also one line).
# The kind cluster is deleted by the test's backend (tests/e2e/backends.py) whether it passes or not.
set -euo pipefail
cd "$(dirname "$0")/../../.."
skip() { echo "make test: make e2e-kind skipped: $1"; exit 0; }
[ "${TIDE_SKIP_KIND:-0}" = 1 ] && skip "TIDE_SKIP_KIND=1"
if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  skip "no Docker engine ($(cat .cache/docker/unavailable 2>/dev/null || echo 'docker info fails'))"
fi
bnd=$((16#$(awk '/^CapBnd:/ {print $2}' /proc/self/status)))
if ! (( bnd & (1 << 24) )) && [ "$(id -u)" -ne 0 ]; then
  skip "this machine lacks CAP_SYS_RESOURCE, and the runc wrapper for privileged containers needs root"
fi
if ! command -v kind >/dev/null 2>&1 && [ -z "${TIDE_KIND_NODE_IMAGE:-}" ] && ! command -v go >/dev/null 2>&1; then
  skip "kind is not installed and there is no Go to build it"
fi
start=$SECONDS
echo "==> make e2e-kind (the e2e scenario on a kind cluster; TIDE_SKIP_KIND=1 skips it)"
make --no-print-directory e2e-kind
echo "==> make e2e-kind passed in $((SECONDS - start)) s"
