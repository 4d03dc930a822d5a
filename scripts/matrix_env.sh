# Sourced by scripts/test.sh: `matrix_python ENTRY` prints the interpreter of a matrix entry
# (scripts/matrix/ENTRY.txt names its Python version) with its own virtual environment made
# (.venv-matrix/ENTRY: requirements-dev.txt under the entry's constraints), or prints nothing
# when this machine has no such Python.

matrix_interpreter() { # version: python3.13 on PATH (one that runs: a pyenv shim may not), else pyenv's
  local version="$1" candidate
  for candidate in "python$version" "$(pyenv root 2>/dev/null)/versions/$version"*/bin/"python$version" \
    "${PYENV_ROOT:-$HOME/.pyenv}/versions/$version"*/bin/"python$version"; do
    if "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$version'.split('.'))))" 2>/dev/null; then
      "$candidate" -c "import sys; print(sys.executable)"
      return
    fi
  done
}

matrix_python() { # entry; fails when its environment cannot be made
  local entry="$1" constraints="scripts/matrix/$1.txt" version interpreter venv stamp
  version="$(sed -n 's/^# python: //p' "$constraints")"
  interpreter="$(matrix_interpreter "$version")"
  [ -n "$interpreter" ] || return 0
  venv=".venv-matrix/$entry"
  stamp="$venv/.installed-$(cat pyproject.toml requirements.txt requirements-dev.txt "$constraints" | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "bootstrap: creating $venv (Python $version, $(grep -v '^#' "$constraints" | tr '\n' ' '))" >&2
    rm -rf "$venv"
    "$interpreter" -m venv "$venv" &&
      "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null &&
      "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -r requirements-dev.txt -c "$constraints" >&2 &&
      touch "$stamp" || return 1
  fi
  echo "$PWD/$venv/bin/python"
}
