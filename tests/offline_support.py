"""Helpers for the offline-script tests: generate SQL with `alembic --sql`, run it with psql."""

import os
import shutil
import subprocess
import sys

from tests.support import PROJECT_ROOT, MigrationHarness


def offline_script(*args: str) -> str:
    """`alembic ARGS --sql`, with no DATABASE_URL: offline needs no database."""
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args, "--sql"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def psql_binary(harness: MigrationHarness) -> str:
    bundled = harness.server.bin_dir / "psql"
    return str(bundled) if bundled.exists() else (shutil.which("psql") or "psql")


def run_psql(harness: MigrationHarness, script: str) -> subprocess.CompletedProcess:
    """The script as a DBA runs it: psql -X -v ON_ERROR_STOP=1 -f FILE."""
    return subprocess.run(
        [
            psql_binary(harness),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
            harness.url.replace("+psycopg2", ""),
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
    )


def apply_script(harness: MigrationHarness, script: str) -> str:
    result = run_psql(harness, script)
    assert result.returncode == 0, result.stderr
    return result.stderr  # psql writes the scripts' NOTICEs there


PAIR_UNIQUE_DETAILS = """
SELECT c.relname AS index_name, con.conname AS constraint_name, i.indisvalid AS valid,
       pg_get_indexdef(i.indexrelid) AS definition,
       obj_description(i.indexrelid, 'pg_class') AS comment
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
 WHERE i.indrelid = 'public.meta_assets_cache'::regclass AND i.indisunique
   AND i.indnkeyatts = 2
 ORDER BY 1
"""


def pair_unique_details(harness: MigrationHarness) -> list[tuple]:
    if not harness.scalar("SELECT to_regclass('public.meta_assets_cache') IS NOT NULL"):
        return []
    return [tuple(row) for row in harness.rows(PAIR_UNIQUE_DETAILS)]
