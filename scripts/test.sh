#!/usr/bin/env bash
# The README's test command: ruff and mypy, then the whole test suite against a real, throwaway
# PostgreSQL of each major in PG_MAJORS (default "15 17": Supabase runs both), then the version
# matrix (a focused subset on the oldest and the newest Python, SQLAlchemy and Alembic; see
# below) and, beside it, the tests marked pg18 on PostgreSQL 18. Extra arguments go to pytest,
# and then the matrix and the 18 subset are left out.
#
# The majors run side by side, each with its own server; the first one's output streams live and
# the others' follows it. The suite mostly waits on PostgreSQL (locks, timeouts, child processes),
# so this takes little longer than one major, where one after the other would not fit CI's
# budget. PARALLEL_MAJORS=0 runs them one after the other, all live: slower, but tests that bound
# waits in milliseconds then have the two cores to themselves. The exit status is non-zero when
# ruff or mypy finds anything or any major's run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_MAJORS="${PG_MAJORS:-15 17}"
BOOTSTRAP_PG_MAJORS="$PG_MAJORS"
# PostgreSQL 18 runs the tests marked pg18 only (tests/conftest.py says which and why), beside
# the version matrix: the whole suite on a third major would not fit CI's budget. PG18_SUBSET=0
# leaves it out; PG_MAJORS="15 17 18" runs the whole suite on 18 instead.
pg18_subset=0
if [ "${PG18_SUBSET:-1}" = 1 ] && [ "$#" = 0 ] && [[ " $PG_MAJORS " != *" 18 "* ]]; then
  pg18_subset=1
  BOOTSTRAP_PG_MAJORS="$PG_MAJORS 18"
fi
BOOTSTRAP_PGBOUNCER=1
BOOTSTRAP_SUPABASE_CLI=1
source scripts/bootstrap.sh

# Lint and the library's strict type check ([tool.mypy] in pyproject.toml) first, but a finding
# does not hide the tests' results: both count in the exit status.
checks_started=$SECONDS
lint_status=0
ruff check . || lint_status=$?
ruff format --check . || lint_status=$?
type_status=0
mypy || type_status=$?

started=$SECONDS
checks_took=$((started - checks_started))
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# A script's background jobs start with SIGINT ignored, and Python would keep ignoring it: put
# the default back, so Ctrl-C stops every run through pytest's teardown (which stops its server).
PYTEST_INTERRUPTIBLE='import signal, sys, pytest
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main(sys.argv[1:]))'

run_pytest() { # python, label, major, then pytest's arguments
  local python="$1" label="$2" major="$3"
  shift 3
  # Each run has its own pytest temp root, so runs side by side keep out of each other's way.
  mkdir -p "$scratch/tmp-$label-$major"
  PATH="$(dirname "$python"):$PATH" PG_MAJOR="$major" \
    PYTEST_DEBUG_TEMPROOT="$scratch/tmp-$label-$major" \
    ANY_MAJOR_SPLIT_OVER="${any_major_split_over:-}" \
    "$python" -c "$PYTEST_INTERRUPTIBLE" "$@"
}

read -r -a majors <<<"$PG_MAJORS"
declare -A status_of
summary=()

record() { # a run's name (as the summary says it), its exit status
  status_of["$1"]=$2
  summary+=("$1")
}

report_background_run() { # its pid, its name, its log: waits, shows the log, records it
  if wait "$1"; then status=0; else status=$?; fi
  echo "== $2 =="
  cat "$3"
  echo
  record "$2" "$status"
}

run_majors() { # python, label (as the summary names it), then pytest's arguments
  local python="$1" label="$2" major alongside=""
  shift 2
  declare -A pid_of=()
  if [ "${PARALLEL_MAJORS:-1}" = 1 ] && [ "${#majors[@]}" -gt 1 ]; then
    alongside=" (${majors[*]:1} alongside, shown after)"
    for major in "${majors[@]:1}"; do
      run_pytest "$python" "$label" "$major" "$@" >"$scratch/$label-$major.log" 2>&1 &
      pid_of[$major]=$!
    done
  fi
  for major in "${majors[@]}"; do
    if [ -z "${pid_of[$major]:-}" ]; then
      echo "== $label, PostgreSQL $major$alongside =="
      alongside=""
      if run_pytest "$python" "$label" "$major" "$@"; then status=0; else status=$?; fi
      echo
      record "$label, PostgreSQL $major" "$status"
    else
      report_background_run "${pid_of[$major]}" "$label, PostgreSQL $major" \
        "$scratch/$label-$major.log"
    fi
  done
}

# Tests marked any_major (what they prove does not depend on the server's major: the wheel in
# a foreign project, the benchmark's smoke runs) run once, shared out between the majors' runs.
any_major_split_over="$PG_MAJORS"
run_majors "$(command -v python)" "the suite" "$@"
any_major_split_over=""
suite_took=$((SECONDS - started))
second_stage_started=$SECONDS

if [ "$pg18_subset" = 1 ]; then
  # Less what does not depend on the server's major (any_major: the drivers' variants).
  run_pytest "$(command -v python)" "pg18" 18 -q -m "pg18 and not any_major" \
    >"$scratch/pg18.log" 2>&1 &
  pg18_pid=$!
fi

# The version matrix: the oldest and the newest Python, SQLAlchemy and Alembic the library
# supports (scripts/matrix/*.txt), each in a virtual environment of its own, on the tests that
# exercise what differs between releases (scripts/matrix/subset.txt). MATRIX=0 leaves it out.
# The suite above covers each PostgreSQL major; here the oldest releases run against the oldest
# major and the newest against the newest, side by side.
matrix_status=0
if [ "${MATRIX:-1}" = 1 ] && [ "$#" = 0 ]; then
  source scripts/matrix_env.sh
  read -r -a subset <<<"$(grep -v '^#' scripts/matrix/subset.txt | tr '\n' ' ')"
  declare -A matrix_major=([lowest]="${majors[0]}" [newest]="${majors[${#majors[@]}-1]}")
  declare -A matrix_pid=() matrix_label=()
  for entry in lowest newest; do
    if ! python="$(matrix_python "$entry")"; then
      echo "test.sh: the $entry matrix entry's environment could not be made (see above)"
      matrix_status=1
      continue
    fi
    if [ -z "$python" ]; then
      version="$(sed -n 's/^# python: //p' "scripts/matrix/$entry.txt")"
      echo "test.sh: no Python $version on this machine: the $entry matrix entry is left out"
      if [ "${CI:-}" = true ]; then matrix_status=1; fi
      continue
    fi
    matrix_label[$entry]="$entry ($("$python" -c 'import platform, sqlalchemy, alembic; print(f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, Alembic {alembic.__version__}")'))"
    run_pytest "$python" "$entry" "${matrix_major[$entry]}" -q "${subset[@]}" \
      >"$scratch/matrix-$entry.log" 2>&1 &
    matrix_pid[$entry]=$!
  done
  for entry in lowest newest; do
    [ -n "${matrix_pid[$entry]:-}" ] || continue
    report_background_run "${matrix_pid[$entry]}" \
      "${matrix_label[$entry]}, PostgreSQL ${matrix_major[$entry]}" "$scratch/matrix-$entry.log"
  done
fi

if [ "$pg18_subset" = 1 ]; then
  report_background_run "$pg18_pid" "the tests marked pg18, PostgreSQL 18" "$scratch/pg18.log"
fi

failed=$matrix_status
if [ "$lint_status" != 0 ]; then
  echo "test.sh: ruff FAILED (its findings are above the tests)"
  failed=1
fi
if [ "$type_status" != 0 ]; then
  echo "test.sh: mypy FAILED (its findings are above the tests)"
  failed=1
fi
for run in "${summary[@]}"; do
  if [ "${status_of[$run]}" = 0 ]; then
    echo "test.sh: $run passed"
  else
    echo "test.sh: $run FAILED (pytest exit ${status_of[$run]})"
    failed=1
  fi
done
echo "test.sh: pytest took $((SECONDS - started)) s (the suite $suite_took s, then the matrix" \
  "and the 18 subset side by side $((SECONDS - second_stage_started)) s); ruff and mypy" \
  "$checks_took s"
exit "$failed"
