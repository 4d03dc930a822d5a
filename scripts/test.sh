#!/usr/bin/env bash
# The whole test suite against a real, throwaway PostgreSQL. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
ruff check . && ruff format --check .
python -m pytest "$@"
