#!/usr/bin/env bash
# Idempotent setup: redis-server from Debian's packages, then .venv with the project and the local stack
# (hack/pyproject.toml) installed editable.
# pip's cache stays in ~/.cache/pip, so a clean clone reinstalls from warm wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${TIDE_EXTRAS:-operator,dev}"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "==> installing redis-server from Debian's packages"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml hack/pyproject.toml | sha256sum | cut -c1-16)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "==> installing tide[$EXTRAS] into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  # the product, and apart from it the local test stack (hack/pyproject.toml)
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]" -e hack/
  rm -f .venv/.installed-*
  touch "$stamp"
fi
