"""Helpers for the offline-script tests: generate SQL with `alembic --sql`, run it with psql."""

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg2
from alembic import command

from tests.support import HEAD, PROJECT_ROOT, MigrationHarness, alembic_config


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


# Offline runs over every path a user has, and what they leave, for comparing paths.

BLOCKING = ("-x", "offline_build=blocking")
SKIPPED = "skipped"


def the_offline_scripts() -> dict[str, str]:
    """The three scripts a user applies by hand: upgrade in each form, and the downgrade."""
    return {
        "concurrent": offline_script("upgrade", "head"),
        "blocking": offline_script(*BLOCKING, "upgrade", "head"),
        "downgrade": offline_script("downgrade", f"{HEAD}:base"),
    }


def one_query(harness: MigrationHarness, script: str) -> tuple[str | None, list[str]]:
    """The whole script as one simple-protocol query, as the Supabase SQL editor sends it:
    (the error's first line or None, the NOTICEs)."""
    connection = psycopg2.connect(harness.url.replace("+psycopg2", ""))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(script)
        return None, list(connection.notices)
    except psycopg2.Error as error:
        return str(error).splitlines()[0], list(connection.notices)
    finally:
        connection.close()


@contextmanager
def other_database(harness: MigrationHarness, suffix: str) -> Iterator[MigrationHarness]:
    """A second database on the test's server, owned by the migrator like the test's own."""
    name = f"{harness.dbname}_{suffix}"
    harness.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    harness.admin(f"CREATE DATABASE {name}")
    other = MigrationHarness(harness.server, name)
    try:
        yield other
    finally:
        other.close()
        harness.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def database_url_of(harness: MigrationHarness) -> Iterator[None]:
    """In-process alembic commands against `harness`'s database."""
    before = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = harness.url
    try:
        yield
    finally:
        if before is None:
            del os.environ["DATABASE_URL"]
        else:
            os.environ["DATABASE_URL"] = before


def online(harness: MigrationHarness, direction: str, revision: str) -> None:
    with database_url_of(harness):
        getattr(command, direction)(alembic_config(), revision)


# When a run (or the building of the starting state) happened, not what it did: left out of
# the comparison.
RUN_TIME_COLUMNS = ("archived_at", "recorded_at", "repointed_at", "seq", "created_at")
SCHEMAS_COMPARED = ("public", "meta_assets_migration")
# The ledger entries of the duplicate guard, which the blocking form does not install.
GUARD_STEPS = ("guard_installed", "guard_removed")


def schema_dump(harness: MigrationHarness) -> str:
    """pg_dump -s of the app's and the migration's schemas, not the Supabase CLI's own."""
    return harness.schema_dump("--exclude-schema=supabase_migrations")


def contents(harness: MigrationHarness) -> dict:
    """Every row of every table in the compared schemas, in PostgreSQL's JSON form, without
    the columns that record when; the ledger in its order."""
    tables = harness.rows(
        "SELECT format('%I.%I', n.nspname, c.relname) AS name FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND n.nspname = ANY(:schemas) ORDER BY 1",
        schemas=list(SCHEMAS_COMPARED),
    )
    found = {}
    for table in tables:
        order = "seq" if table.name.endswith(".unique_pair_steps") else "1"
        rows = [
            row[0]
            for row in harness.rows(
                f"SELECT (to_jsonb(t) - CAST(:masked AS text[]))::text FROM {table.name} t"
                f" ORDER BY {order}",
                masked=list(RUN_TIME_COLUMNS),
            )
        ]
        if not table.name.endswith(".unique_pair_steps"):
            rows.sort()
        found[table.name] = rows
    return found


@dataclass(frozen=True)
class Snapshot:
    schema: str
    rows: dict
    version: str | None


def snapshot(harness: MigrationHarness) -> Snapshot:
    return Snapshot(schema_dump(harness), contents(harness), harness.version())


def ledger_free(found: Snapshot) -> Snapshot:
    """The snapshot without the ledger: a stopped run's re-run has more history in it."""
    rows = {name: rows for name, rows in found.rows.items() if "unique_pair_steps" not in name}
    return Snapshot(found.schema, rows, found.version)


# What `alembic upgrade head` leaves, per starting state: computed once per run of the suite.
_ONLINE_AT_HEAD: dict[str, Snapshot] = {}


def online_at_head(harness: MigrationHarness, state: str) -> Snapshot:
    """The snapshot `alembic upgrade head` leaves on `state`, made on a database of its own."""
    if state not in _ONLINE_AT_HEAD:
        with other_database(harness, "reference") as reference:
            reference.build_state(state)
            online(reference, "upgrade", "head")
            _ONLINE_AT_HEAD[state] = snapshot(reference)
    return _ONLINE_AT_HEAD[state]


def without_guard_steps(found: Snapshot) -> Snapshot:
    rows = {
        name: [row for row in rows if not any(step in row for step in GUARD_STEPS)]
        for name, rows in found.rows.items()
    }
    return Snapshot(found.schema, rows, found.version)
