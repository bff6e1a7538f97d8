#!/usr/bin/env bash
# Step 3 of issue 10, first part: kind's node *base* image made here (kindest/base cannot be pulled):
# debian:bookworm-slim with systemd, Debian's runc and CNI plugins, and containerd and crictl built from
# the Go module proxy, plus kind's own node files (entrypoint, systemd units, containerd config) from
# the kind module. Tagged tide-kind-base:$KIND_VERSION-$CONTAINERD_VERSION, rebuilt when its inputs change.
# Also builds kind itself and kubelet, kubeadm, kube-scheduler and kube-proxy from the pinned
# k8s.io/kubernetes (hack/controlplane/go.mod), for the node image that is still to come
# (docs/images.md, "Toward kind"). Not used by `make test`.
set -euo pipefail
cd "$(dirname "$0")/../../.."
KIND_VERSION=v0.33.0 CONTAINERD_VERSION=v2.4.2 CRICTL_VERSION=v1.37.0
BIN=.cache/kind/bin
IMAGE="tide-kind-base:$KIND_VERSION-$CONTAINERD_VERSION"
mkdir -p "$BIN"
hack/docker.sh --privileged
hack/images/base.sh

step() {  # name, then a command that makes $BIN/name; skipped when the binary exists
  local name="$1"; shift
  [ -x "$BIN/$name" ] && return 0
  echo "==> building $name"
  local start=$SECONDS
  "$@"
  echo "==> $name built in $((SECONDS - start)) s"
}
export GOBIN="$PWD/$BIN" CGO_ENABLED=0
step kind go install "sigs.k8s.io/kind@$KIND_VERSION"
step containerd go install "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
step crictl go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
# the node binaries from the control plane's pins (a copy of its go.mod: kubelet needs more modules,
# which go.sum gains in the copy only)
src=.cache/kind/src
mkdir -p "$src"
sed 's|^module .*|module tide.dev/cache/kindnode|' hack/controlplane/go.mod >"$src/go.mod"
[ -f "$src/go.sum" ] || cp hack/controlplane/go.sum "$src/go.sum"
printf '//go:build tools\n\npackage tools\n' >"$src/tools.go"
# versioned as the control plane's binaries are (hack/tide_local/build.py), so nodes report v1.36.3
K8S="$(awk '$1 == "k8s.io/kubernetes" {print $2}' hack/controlplane/go.mod)"
minor="${K8S#v*.}"; minor="${minor%%.*}"; major="${K8S#v}"; major="${major%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
if [ "$(cat "$BIN/.k8s-ldflags" 2>/dev/null)" != "$ldflags" ]; then
  rm -f "$BIN"/{kubelet,kubeadm,kube-scheduler,kube-proxy}
  echo "$ldflags" >"$BIN/.k8s-ldflags"
fi
for cmd in kubelet kubeadm kube-scheduler kube-proxy; do
  step "$cmd" bash -c "cd $src && go build -mod=mod -trimpath -ldflags '$ldflags' -o ../bin/$cmd k8s.io/kubernetes/cmd/$cmd"
done

HASH="$(cat hack/images/kind/base.Dockerfile "$BIN"/{containerd,containerd-shim-runc-v2,ctr,crictl} | sha256sum | cut -c1-16)"
if [ "$(docker image inspect -f '{{index .Config.Labels "dev.tide.inputs"}}' "$IMAGE" 2>/dev/null)" = "$HASH" ]; then
  echo "==> $IMAGE is up to date"
  exit 0
fi
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
kind_src="$(go env GOMODCACHE)/sigs.k8s.io/kind@$KIND_VERSION/images/base/files"
cp -r "$kind_src" "$ctx/files" && chmod -R u+w "$ctx/files"
mkdir "$ctx/bin" && cp "$BIN"/{containerd,containerd-shim-runc-v2,ctr,crictl} "$ctx/bin/"
echo "==> building $IMAGE"
docker build -q --label "dev.tide.inputs=$HASH" -t "$IMAGE" -f hack/images/kind/base.Dockerfile "$ctx" >/dev/null
echo "==> $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
