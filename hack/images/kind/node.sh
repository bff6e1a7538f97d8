#!/usr/bin/env bash
# Step 3 of issue 10: a kind node image made here from source, for where kindest/node cannot be pulled.
# tide-kind-node:$K8S = the base of hack/images/kind/base.sh, plus kubelet, kubeadm and kubectl from the
# pinned k8s.io/kubernetes, and preloaded into its containerd: the control-plane images (from the same
# binaries), etcd, CoreDNS (from the module proxy), pause (gcc, the pinned pause.c) and a stand-in for
# kindnetd (hack/images/kind/cni). Rebuilt when its inputs change. `kind create cluster --image` it.
set -euo pipefail
cd "$(dirname "$0")/../../.."
K8S="$(awk '$1 == "k8s.io/kubernetes" {print $2}' hack/controlplane/go.mod)" COREDNS=v1.14.2 PAUSE=3.10.2 ETCD_TAG=3.6.8-0
KINDNET=docker.io/kindest/kindnetd:v20260820-69b56db7
NODE_IMAGE="tide-kind-node:$K8S"
BIN=.cache/kind/bin
hack/images/kind/base.sh
BASE="$(docker images --format '{{.Repository}}:{{.Tag}}' tide-kind-base | head -1)"
# kube-apiserver, kube-controller-manager, kubectl and etcd: the local control plane's (built if missing)
CP="$(.venv/bin/python -c 'from tide_local.build import ensure_binaries; print(ensure_binaries())' | tail -1)"

if [ ! -x "$BIN/coredns" ]; then
  echo "==> building coredns $COREDNS"; start=$SECONDS
  GOBIN="$PWD/$BIN" CGO_ENABLED=0 go install "github.com/coredns/coredns@$COREDNS"
  echo "==> coredns built in $((SECONDS - start)) s"
fi
if [ ! -x "$BIN/pause" ]; then
  gcc -Os -static -Wall -Werror -DVERSION="v$PAUSE" -o "$BIN/pause" \
    "$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S/build/pause/linux/pause.c"
  strip "$BIN/pause"
fi

HASH="$( { docker image inspect -f '{{.Id}}' "$BASE"; cat hack/images/kind/node.sh hack/images/kind/tide-kubelet-cgroups.sh \
  hack/images/kind/cni/*; for b in kubelet kubeadm kube-scheduler kube-proxy coredns pause; do sha256sum <"$BIN/$b"; done
  for b in kube-apiserver kube-controller-manager kubectl etcd; do sha256sum <"$CP/$b"; done; } | sha256sum | cut -c1-16)"
if [ "$(docker image inspect -f '{{index .Config.Labels "dev.tide.inputs"}}' "$NODE_IMAGE" 2>/dev/null)" = "$HASH" ]; then
  echo "==> $NODE_IMAGE is up to date"
  exit 0
fi

work="$(mktemp -d)"
cid=""
trap '[ -n "$cid" ] && docker rm -f "$cid" >/dev/null 2>&1; rm -rf "$work"' EXIT
image() {  # tag, binary, path in the image, [extra Dockerfile lines]
  local tag="$1" bin="$2" dest="$3" extra="${4:-}" ctx="$work/$(basename "$2")"
  mkdir -p "$ctx" && cp "$bin" "$ctx/"
  printf 'FROM debian:bookworm-slim\n%s\nCOPY %s %s\n' "$extra" "$(basename "$bin")" "$dest" >"$ctx/Dockerfile"
  docker build -q -t "$tag" "$ctx" >/dev/null
}
echo "==> building the control-plane, etcd, CoreDNS, pause and CNI images"
image "registry.k8s.io/kube-apiserver:$K8S" "$CP/kube-apiserver" /usr/local/bin/
image "registry.k8s.io/kube-controller-manager:$K8S" "$CP/kube-controller-manager" /usr/local/bin/
image "registry.k8s.io/kube-scheduler:$K8S" "$BIN/kube-scheduler" /usr/local/bin/
image "registry.k8s.io/kube-proxy:$K8S" "$BIN/kube-proxy" /usr/local/bin/ \
  'RUN apt-get update && apt-get install -y --no-install-recommends iptables conntrack ipset kmod && rm -rf /var/lib/apt/lists/*'
image "registry.k8s.io/etcd:$ETCD_TAG" "$CP/etcd" /usr/local/bin/
image "registry.k8s.io/coredns/coredns:$COREDNS" "$BIN/coredns" /coredns 'ENTRYPOINT ["/coredns"]'
mkdir -p "$work/pause" && cp "$BIN/pause" "$work/pause/"
printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$work/pause/Dockerfile"
docker build -q -t "registry.k8s.io/pause:$PAUSE" "$work/pause" >/dev/null
docker build -q -t "$KINDNET" hack/images/kind/cni >/dev/null

echo "==> assembling $NODE_IMAGE from $BASE"
cid="$(docker run -d --privileged --security-opt seccomp=unconfined --tmpfs /tmp --tmpfs /run \
  -v /lib/modules:/lib/modules:ro "$BASE")"
for _ in $(seq 1 60); do docker exec "$cid" ctr version >/dev/null 2>&1 && break; sleep 0.5; done
docker cp "$BIN/kubelet" "$cid:/usr/bin/kubelet"
docker cp "$BIN/kubeadm" "$cid:/usr/bin/kubeadm"
docker cp "$CP/kubectl" "$cid:/usr/bin/kubectl"
docker cp hack/images/kind/tide-kubelet-cgroups.sh "$cid:/kind/bin/tide-kubelet-cgroups.sh"
docker exec "$cid" mkdir -p /kind/manifests
docker cp hack/images/kind/cni/default-cni.yaml "$cid:/kind/manifests/default-cni.yaml"
docker exec -i "$cid" sh -euc "
  echo $K8S >/kind/version
  sed -i 's|sandbox_image = .*|sandbox_image = \"registry.k8s.io/pause:$PAUSE\"|' /etc/containerd/config.toml
  # kubelet 1.36 refuses cgroup v1 unless told (the project's machines are cgroup v1)
  sed -i 's|^KUBELET_EXTRA_ARGS=|KUBELET_EXTRA_ARGS=--fail-cgroupv1=false |' /etc/default/kubelet
  printf '[Service]\nExecStartPre=/kind/bin/tide-kubelet-cgroups.sh\n' >/etc/systemd/system/kubelet.service.d/12-tide.conf
"
for tag in "registry.k8s.io/kube-apiserver:$K8S" "registry.k8s.io/kube-controller-manager:$K8S" \
    "registry.k8s.io/kube-scheduler:$K8S" "registry.k8s.io/kube-proxy:$K8S" "registry.k8s.io/etcd:$ETCD_TAG" \
    "registry.k8s.io/coredns/coredns:$COREDNS" "registry.k8s.io/pause:$PAUSE" "$KINDNET"; do
  docker save "$tag" | docker exec -i "$cid" ctr -n k8s.io images import --label io.cri-containerd.pinned=pinned - >/dev/null 2>&1
done
docker exec "$cid" systemctl stop containerd
docker commit "$cid" "$NODE_IMAGE-preloaded" >/dev/null
# `docker commit --change` cannot set STOPSIGNAL: one more (empty) layer does
printf 'FROM %s\nENV container=docker\nSTOPSIGNAL SIGRTMIN+3\nLABEL dev.tide.inputs=%s\nENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]\n' \
  "$NODE_IMAGE-preloaded" "$HASH" | docker build -q -t "$NODE_IMAGE" - >/dev/null
docker rmi "$NODE_IMAGE-preloaded" >/dev/null
echo "==> $NODE_IMAGE: $(docker image inspect -f '{{.Size}}' "$NODE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
