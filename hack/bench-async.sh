#!/usr/bin/env bash
# Idempotent: .cache/bench-async, a venv of its own for the async Python peers of the worker benchmark
# (the bench-async extra: arq and SAQ). They pin redis-py below 6 and 8, which Celery's transport
# (kombu >= 5.7, redis-py >= 6.1) cannot share; the main .venv keeps its redis-py.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.cache/bench-async
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "==> installing tide[bench-async] into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[bench-async]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
