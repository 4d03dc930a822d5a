#!/usr/bin/env bash
# The README's test command: ruff, then the whole test suite against a real, throwaway PostgreSQL
# of each major in PG_MAJORS (default "15 17": Supabase runs both). Extra arguments go to pytest.
#
# The majors run side by side, each with its own server; the first one's output streams live and
# the others' follows it. The suite mostly waits on PostgreSQL (locks, timeouts, child processes),
# so this takes little longer than one major, where one after the other would not fit CI's
# budget. PARALLEL_MAJORS=0 runs them one after the other, all live: slower, but tests that bound
# waits in milliseconds then have the two cores to themselves. The exit status is non-zero when
# ruff finds anything or any major's run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_MAJORS="${PG_MAJORS:-15 17}"
BOOTSTRAP_PG_MAJORS="$PG_MAJORS"
BOOTSTRAP_PGBOUNCER=1
BOOTSTRAP_SUPABASE_CLI=1
source scripts/bootstrap.sh

# Lint first, but a finding does not hide the tests' results: both count in the exit status.
lint_status=0
ruff check . || lint_status=$?
ruff format --check . || lint_status=$?

started=$SECONDS
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# A script's background jobs start with SIGINT ignored, and Python would keep ignoring it: put
# the default back, so Ctrl-C stops every run through pytest's teardown (which stops its server).
PYTEST_INTERRUPTIBLE='import signal, sys, pytest
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main(sys.argv[1:]))'

run_pytest() { # major, then pytest's arguments
  local major="$1"
  shift
  # Each run has its own pytest temp root, so runs side by side keep out of each other's way.
  mkdir -p "$scratch/tmp-$major"
  PG_MAJOR="$major" PYTEST_DEBUG_TEMPROOT="$scratch/tmp-$major" \
    python -c "$PYTEST_INTERRUPTIBLE" "$@"
}

read -r -a majors <<<"$PG_MAJORS"
declare -A pid_of status_of

alongside=""
if [ "${PARALLEL_MAJORS:-1}" = 1 ] && [ "${#majors[@]}" -gt 1 ]; then
  alongside=" (${majors[*]:1} alongside, shown after)"
  for major in "${majors[@]:1}"; do
    run_pytest "$major" "$@" >"$scratch/$major.log" 2>&1 &
    pid_of[$major]=$!
  done
fi

for major in "${majors[@]}"; do
  if [ -z "${pid_of[$major]:-}" ]; then
    echo "== PostgreSQL $major$alongside =="
    alongside=""
    if run_pytest "$major" "$@"; then status_of[$major]=0; else status_of[$major]=$?; fi
  else
    if wait "${pid_of[$major]}"; then status_of[$major]=0; else status_of[$major]=$?; fi
    echo "== PostgreSQL $major =="
    cat "$scratch/$major.log"
  fi
  echo
done

failed=0
if [ "$lint_status" != 0 ]; then
  echo "test.sh: ruff FAILED (its findings are above the tests)"
  failed=1
fi
for major in "${majors[@]}"; do
  if [ "${status_of[$major]}" = 0 ]; then
    echo "test.sh: PostgreSQL $major passed"
  else
    echo "test.sh: PostgreSQL $major FAILED (pytest exit ${status_of[$major]})"
    failed=1
  fi
done
echo "test.sh: pytest on ${#majors[@]} major(s) took $((SECONDS - started)) s"
exit "$failed"
