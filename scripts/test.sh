#!/usr/bin/env bash
# Set up (with test extras) and run the whole test suite: browser tests when chromium exists, and the
# database tests on SQLite and on a throwaway PostgreSQL cluster when PostgreSQL's server is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --dev
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser tests will be skipped"
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null \
    && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
    || echo "postgresql not installed: the PostgreSQL variants of the database tests will be skipped"
fi
export GRADIO_ANALYTICS_ENABLED=False DEEPFACE_BACKEND_ENGINE=pytorch
# Tests start worker processes, a studio and a browser beside the test process: one BLAS/OpenMP
# thread each avoids oversubscribing small machines (2 threads per process slowed runs 10x here).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# A throwaway PostgreSQL cluster in a temp folder on a free local port (as the `postgres` user when
# run as root), stopped and deleted at exit; the tests read its URL from SIMS_TEST_PG_URL.
if [ -z "${SIMS_TEST_PG_URL:-}" ]; then
  eval "$(.venv/bin/python tests/pgcluster.py start)"
  if [ -n "${SIMS_TEST_PG_DIR:-}" ]; then
    trap '.venv/bin/python tests/pgcluster.py stop "$SIMS_TEST_PG_DIR"' EXIT
    echo "PostgreSQL for the tests: $SIMS_TEST_PG_URL"
  fi
fi
.venv/bin/python -m pytest -q "$@" tests
