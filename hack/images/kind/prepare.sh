#!/usr/bin/env bash
# What `make e2e-kind` needs before the test: an engine that runs privileged containers, the images of
# `make images`, and a kind node image. Where kind is installed (a normal machine) it runs unchanged,
# with its own kindest/node; otherwise kind itself and a node image are built here
# (hack/images/kind/node.sh; TIDE_KIND_NODE_IMAGE picks another). Prints the environment the test needs
# (eval it).
set -euo pipefail
cd "$(dirname "$0")/../../.."
{
  hack/docker.sh --privileged
  hack/images/build.sh
  node_image="${TIDE_KIND_NODE_IMAGE:-}"
  if [ -z "$node_image" ] && ! command -v kind >/dev/null 2>&1; then
    # no kind installed: kind, and a node image, from source (kindest/node cannot be assumed pullable)
    hack/images/kind/node.sh
    node_image="$(docker images --format '{{.Repository}}:{{.Tag}}' tide-kind-node | head -1)"
  fi
} >&2
kubectl_dir="$(.venv/bin/python -c 'from tide_local.build import ensure_binaries; print(ensure_binaries())' | tail -1)"
echo "export PATH=\"$PWD/.cache/kind/bin:$kubectl_dir:\$PATH\""
[ -n "$node_image" ] && echo "export TIDE_KIND_NODE_IMAGE=$node_image"
true
