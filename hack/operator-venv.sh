#!/usr/bin/env bash
# Idempotent: .cache/operator-venv, the operator as its image installs it (the project with the operator
# extra, nothing else), for the operator benchmarks. The test venv also holds the kubernetes client the
# local stack uses, and kopf imports it wherever it is installed (16 MB of the operator's memory).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.cache/operator-venv
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "==> installing tide[operator] into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[operator]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
