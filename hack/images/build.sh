#!/usr/bin/env bash
# `make images`: build operator/Dockerfile and worker-image/Dockerfile, unchanged, as tide-operator:$TAG
# and tide-worker:$TAG (TAG defaults to dev). Cached: each image carries a hash of its inputs (the
# Dockerfiles, the sources, the base image) as a label, and is rebuilt only when that hash changed.
# The base, debian:bookworm-slim, is pulled or made locally first (hack/images/base.sh).
# pip in the build stage gets this machine's CA bundle (PIP_CERT, else /etc/ssl/certs/ca-certificates.crt)
# through hack/images/build-ca/, which only the build stage reads.
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG="${TAG:-dev}"
hack/docker.sh
mkdir -p .cache/images
exec 9>.cache/images/build.lock
flock 9  # one build at a time (make images and a test session may race)
hack/images/base.sh

inputs_hash() {
  {
    docker image inspect -f '{{.Id}}' debian:bookworm-slim
    inputs=(pyproject.toml README.md .dockerignore worker-image operator crds hack/images/base.sh hack/images/pack.py hack/images/build-ca)
    if git rev-parse --git-dir >/dev/null 2>&1; then
      git ls-files -co --exclude-standard -- "${inputs[@]}"
    else  # an unpacked tarball: every file, ignored ones included
      find "${inputs[@]}" -type f
    fi | grep -v -e '__pycache__' -e '/examples/' -e '\.crt$' | sort | while read -r f; do
        if [ -f "$f" ]; then echo "$f $(sha256sum <"$f" | cut -c1-64)"; fi
      done
  } | sha256sum | cut -c1-16
}
HASH="$(inputs_hash)"

ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
cleanup() { rm -f hack/images/build-ca/ca-certificates.crt; }
trap cleanup EXIT

for spec in "tide-worker worker-image/Dockerfile" "tide-operator operator/Dockerfile"; do
  read -r name dockerfile <<<"$spec"
  image="$name:$TAG"
  have="$(docker image inspect -f '{{index .Config.Labels "dev.tide.inputs"}}' "$image" 2>/dev/null || true)"
  if [ "$have" = "$HASH" ]; then
    echo "==> $image is up to date (inputs $HASH)"
    continue
  fi
  [ -f "$ca" ] && [ ! -f hack/images/build-ca/ca-certificates.crt ] && cp "$ca" hack/images/build-ca/ca-certificates.crt
  echo "==> building $image from $dockerfile"
  start=$SECONDS
  # the legacy builder prints a deprecation notice where buildx is missing; the Dockerfiles suit both
  docker build -q --label "dev.tide.inputs=$HASH" -t "$image" -f "$dockerfile" . >/dev/null
  echo "==> $image built in $((SECONDS - start)) s: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}')"
done
