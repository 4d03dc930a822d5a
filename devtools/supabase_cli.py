"""The Supabase CLI that the tests push migrations with: npm's `supabase` package, pinned, in
this project's cache (.cache/supabase-cli/VERSION), installed by `npm install` on first use.

    python -m devtools.supabase_cli     # installs it when missing (scripts/test.sh runs this)

The package's bin is a small node launcher for the CLI's binary, which npm installs from the
platform package it names (@supabase/cli-linux-x64 here). Only the standard library is used, so
any Python 3 runs this module.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "supabase"
VERSION = "2.117.0"


class SupabaseCliUnavailable(RuntimeError):
    pass


def install_dir() -> Path:
    return PROJECT_ROOT / ".cache" / "supabase-cli" / VERSION


def cli_path() -> Path:
    return install_dir() / "node_modules" / ".bin" / "supabase"


def quiet_env(home: Path) -> dict[str, str]:
    """The CLI's environment: its state under `home` (it needs a writable one), no telemetry,
    no update notice."""
    return {
        **os.environ,
        "HOME": str(home),
        "SUPABASE_HOME": str(home / ".supabase"),
        "SUPABASE_TELEMETRY_DISABLED": "1",
        "DO_NOT_TRACK": "1",
        "SUPABASE_NO_UPDATE_NOTIFIER": "1",
    }


def version_of(binary: Path) -> str:
    home = install_dir() / "home"
    home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [str(binary), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=quiet_env(home),
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def find() -> Path | None:
    """The installed CLI of the pinned version, or None."""
    binary = cli_path()
    if binary.exists() and version_of(binary) == VERSION:
        return binary
    return None


def ensure() -> Path:
    """The pinned CLI, installed with npm when missing."""
    found = find()
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise SupabaseCliUnavailable(
            f"npm is not installed, so the Supabase CLI ({PACKAGE}@{VERSION}) cannot be: install"
            " Node.js with npm (apt-get install npm), then run python -m devtools.supabase_cli"
        )
    target = install_dir()
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    print(f"bootstrap: installing the Supabase CLI (npm {PACKAGE}@{VERSION})", file=sys.stderr)
    result = subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(target),
            "--save-exact",
            "--no-audit",
            "--no-fund",
            "--loglevel",
            "error",
            f"{PACKAGE}@{VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        # npm's own cache inside ours too: a user without a writable home installs it as well.
        env={
            **os.environ,
            "npm_config_update_notifier": "false",
            "npm_config_cache": str(install_dir().parent / "npm-cache"),
        },
    )
    if result.returncode != 0:
        detail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise SupabaseCliUnavailable(f"npm install {PACKAGE}@{VERSION} failed: {detail}")
    found = find()
    if found is None:
        raise SupabaseCliUnavailable(
            f"npm installed {PACKAGE}@{VERSION}, but {cli_path()} does not report that version"
        )
    return found


def main() -> int:
    try:
        print(ensure())
    except (SupabaseCliUnavailable, OSError, subprocess.SubprocessError) as error:
        print(
            f"bootstrap: no Supabase CLI, its tests fail under CI and skip otherwise: {error}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
