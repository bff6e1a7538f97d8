#!/usr/bin/env bash
# Idempotent: hack/extra-venv.sh DIR EXTRA makes DIR a venv of its own holding the project (editable) with
# one extra and nothing else, reinstalled when pyproject.toml changes. Two use it:
#   .cache/bench-async bench-async: the async Python peers of the worker benchmark (arq and SAQ pin redis-py
#     below 6 and 8, which Celery's transport, kombu >= 5.7 with redis-py >= 6.1, cannot share);
#   .cache/operator-venv operator: the operator as its image installs it, for the operator benchmarks (the
#     test venv also holds the kubernetes client the local stack uses, which kopf imports wherever it is
#     installed: 16 MB of the operator's memory).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: hack/extra-venv.sh DIR EXTRA" >&2; exit 2; }
VENV=$1; EXTRA=$2
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "==> installing tide[$EXTRA] into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRA]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
