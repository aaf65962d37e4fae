#!/usr/bin/env bash
# Set up .venv (first run only takes long) and start the studio on its offline demo (SQLite in ./data).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export GRADIO_ANALYTICS_ENABLED=False DEEPFACE_BACKEND_ENGINE=pytorch
exec .venv/bin/python app.py "$@"
