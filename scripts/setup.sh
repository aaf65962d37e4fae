#!/usr/bin/env bash
# Create .venv and install the project (editable) with every extra; --dev adds the test and lint tools
# (idempotent). The dependency lists live in pyproject.toml; requirements*.txt name the extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
req=requirements.txt
[ "${1:-}" = "--dev" ] && req=requirements-dev.txt
.venv/bin/pip install -q -r "$req"
# facenet-pytorch pins torch<2.3 / Pillow<10.3 but works with ours: install it without its pins.
.venv/bin/pip install -q --no-deps facenet-pytorch==2.6.0
