#!/usr/bin/env bash
# The main job end to end on a throwaway PostgreSQL loaded with a dirty, Supabase-like table.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
python -m devtools.demo "$@"
