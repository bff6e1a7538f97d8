#!/usr/bin/env bash
# Idempotent: make sure a Docker engine answers `docker info`, for `make images` and the container tests.
#   - one already runs (a user's Docker Desktop, a CI service, a dockerd started earlier): nothing to do;
#   - else, as root or with passwordless sudo on Debian: install Debian's `docker.io` (and `debootstrap`,
#     which hack/images/base.sh needs), then start `dockerd` in the background, logging to
#     .cache/docker/dockerd.log; overlay2 when the kernel allows it, vfs otherwise;
#   - else: print one line saying why and exit 1 (`--optional`: exit 0, and the container tests skip).
# `--privileged` (kind's nodes need privileged containers): where this machine's capability bounding set
# lacks CAP_SYS_RESOURCE, register hack/images/runc-wrapper as the engine's default runtime (it drops
# the missing capability from each container's spec; the engine reloads daemon.json on SIGHUP).
set -euo pipefail
cd "$(dirname "$0")/.."
OPTIONAL=0; PRIVILEGED=0
for arg in "$@"; do
  case "$arg" in
    --optional) OPTIONAL=1 ;;
    --privileged) PRIVILEGED=1 ;;
    *) echo "usage: hack/docker.sh [--optional] [--privileged]" >&2; exit 2 ;;
  esac
done
LOG_DIR=.cache/docker
mkdir -p "$LOG_DIR"

give_up() {
  echo "hack/docker.sh: no Docker engine: $1" | tee "$LOG_DIR/unavailable" >&2
  [ "$OPTIONAL" -eq 1 ] && exit 0
  exit 1
}
engine_up() { docker info >/dev/null 2>&1; }

privileged_runtime() {
  [ "$PRIVILEGED" -eq 1 ] || return 0
  local bnd; bnd=$((16#$(awk '/^CapBnd:/ {print $2}' /proc/self/status)))
  (( bnd & (1 << 24) )) && return 0  # CAP_SYS_RESOURCE present: runc works as it is
  [ "$(id -u)" -eq 0 ] || { echo "hack/docker.sh: privileged containers need the runc wrapper, which needs root" >&2; exit 1; }
  install -D -m 755 hack/images/runc-wrapper /usr/local/lib/tide/runc-wrapper
  local changed
  changed="$(python3 - <<'PY'
import json, os
path = "/etc/docker/daemon.json"
doc = json.load(open(path)) if os.path.exists(path) else {}
want = {"runtimes": {**doc.get("runtimes", {}), "tide-runc": {"path": "/usr/local/lib/tide/runc-wrapper"}},
        "default-runtime": "tide-runc"}
if any(doc.get(k) != v for k, v in want.items()):
    doc.update(want)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    json.dump(doc, open(path, "w"), indent=2)
    print("changed")
PY
)"
  if [ -n "$changed" ] && [ -f /var/run/docker.pid ]; then
    echo "==> registering hack/images/runc-wrapper as the default runtime (this machine lacks CAP_SYS_RESOURCE)"
    kill -HUP "$(cat /var/run/docker.pid)"
    sleep 1
  fi
}

if command -v docker >/dev/null 2>&1 && engine_up; then
  rm -f "$LOG_DIR/unavailable"
  privileged_runtime
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  sudo -n true 2>/dev/null || give_up "docker info fails, and starting dockerd needs root (or passwordless sudo)"
  SUDO="sudo -n"
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || give_up "dockerd is not installed and this is not a Debian-like system"
  echo "==> installing docker.io and debootstrap from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null \
    || give_up "apt-get install docker.io debootstrap failed"
fi

# Another make may be starting it right now: one starter at a time.
exec 9>"$LOG_DIR/start.lock"
flock 9
if engine_up; then rm -f "$LOG_DIR/unavailable"; privileged_runtime; exit 0; fi

start() {  # $1: storage driver
  echo "==> starting dockerd (storage driver $1; log: $LOG_DIR/dockerd.log)"
  # setsid: the engine outlives this make; later runs find it running and reuse its image cache.
  $SUDO setsid dockerd --storage-driver="$1" --log-level=warn >>"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    engine_up && return 0
    # it exited (e.g. overlay2 refused): try the next driver
    kill -0 $! 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}
start overlay2 || start vfs || give_up "dockerd did not start (see $LOG_DIR/dockerd.log)"
rm -f "$LOG_DIR/unavailable"
privileged_runtime
