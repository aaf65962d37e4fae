#!/usr/bin/env bash
# Create .venv and install everything the studio, the engine and the tests need (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -r requirements.txt
# facenet-pytorch pins torch<2.3 / Pillow<10.3 but works with ours: install it without its pins.
.venv/bin/pip install -q --no-deps facenet-pytorch==2.6.0
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/pip install -q -r requirements-dev.txt
fi
