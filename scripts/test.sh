#!/usr/bin/env bash
# Set up (with test extras) and run the whole test suite, browser tests included when chromium exists.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --dev
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser tests will be skipped"
fi
export GRADIO_ANALYTICS_ENABLED=False DEEPFACE_BACKEND_ENGINE=pytorch
# Tests start worker processes, a studio and a browser beside the test process: one BLAS/OpenMP
# thread each avoids oversubscribing small machines (2 threads per process slowed runs 10x here).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/python -m pytest -q "$@" tests
