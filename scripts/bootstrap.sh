# Sourced by the other scripts: makes sure the PostgreSQL server binaries and the project's
# virtual environment (.venv) exist. Safe to run again: it only does what is missing.

pg_binaries_present() {
  [ -n "${PG_BIN_DIR:-}" ] && [ -x "$PG_BIN_DIR/initdb" ] && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if ! pg_binaries_present; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing the PostgreSQL 15 server binaries (apt-get install postgresql-15)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq postgresql-15 >/dev/null
  else
    echo "bootstrap: PostgreSQL server binaries not found; as root run: apt-get install -y postgresql-15" >&2
    exit 1
  fi
fi

stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: creating .venv and installing the package with its test extras (first run only)" >&2
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,bench]'
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
