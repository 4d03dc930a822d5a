"""The preflight report: right for each starting state, exact about what the upgrade archives,
and read only."""

import json
import os
import shlex
import subprocess
import sys

import pytest
import sqlalchemy as sa

from alembic_lossless_unique.operations import convergence
from alembic_lossless_unique.operations.ops import target_from_index_arguments
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.settings import MigrationSettings
from alembic_lossless_unique.runtime.surroundings import subscriber_ddl_command
from app.names import ARCHIVE, CANONICAL_UNIQUE_NAME
from devtools.starting_states import STATES
from tests.support import HEAD, PROJECT_ROOT


def preflight(*args: str, url: str | None) -> subprocess.CompletedProcess:
    """`python -m app.preflight ARGS` as the demo runs it, with
    DATABASE_URL set (or not)."""
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    if url is not None:
        env["DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "app.preflight", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def report_for(harness) -> dict:
    result = preflight("--json", url=harness.url)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


EXPECTED_STEP = {
    "empty": "create public.workspaces",
    "constrained": None,
    "drifted": f"build unique index {CANONICAL_UNIQUE_NAME} concurrently",
    "seedindex": "promote index idx_meta_assets_cache_ws_phone_unique",
    "both": "drop redundant index idx_meta_assets_cache_ws_phone_unique",
}


@pytest.mark.parametrize("state", STATES)
def test_report_names_the_state_and_predicts_the_upgrade(state, harness):
    harness.build_state(state)
    schema_before = harness.schema_dump()
    rows_before = harness.table_rows() if state != "empty" else {}

    report = report_for(harness)

    # Read only: not a byte of schema or data changed.
    assert harness.schema_dump() == schema_before
    if state != "empty":
        assert harness.table_rows() == rows_before
    assert report["state"] == state
    assert report["alembic_revision"] is None
    actions = [step["action"] for step in report["steps"]]
    if EXPECTED_STEP[state] is None:
        assert [a for a in actions if not a.startswith("create meta_assets_migration")] == []
    else:
        assert any(a.startswith(EXPECTED_STEP[state]) for a in actions), actions
    assert all(step["lock"] for step in report["steps"])
    if state == "empty":
        assert report["table_exists"] is False
        return

    null_phone = harness.scalar(
        "SELECT count(*) FROM public.meta_assets_cache WHERE phone_number_id IS NULL"
    )
    assert report["null_phone_rows"] == null_phone > 0
    assert report["total_bytes"] >= report["table_bytes"] > 0
    assert report["estimated_rows"] > 0

    harness.upgrade("head")

    # The prediction is exact: the upgrade archives just the rows the report counted.
    assert harness.count(ARCHIVE) == report["rows_to_archive"]
    groups = (
        harness.scalar(f"SELECT count(DISTINCT kept_id) FROM {ARCHIVE}")
        if harness.count(ARCHIVE)
        else 0
    )
    assert groups == report["duplicate_groups"]
    if state == "drifted":
        assert report["rows_to_archive"] > 0
    after = report_for(harness)
    assert after["state"] == "constrained"
    assert after["alembic_revision"] == HEAD
    assert after["steps"] == []


def test_text_report_lists_steps_with_their_locks(harness):
    harness.build_state("drifted")
    result = preflight(url=harness.url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "starting state       drifted" in out
    assert "SHARE UPDATE EXCLUSIVE" in out
    assert "ACCESS EXCLUSIVE for a catalog change only" in out
    assert "nothing was changed" in out


def test_a_renamed_constraint_is_reported(harness):
    harness.build_state("constrained")
    harness.execute(
        "ALTER TABLE public.meta_assets_cache RENAME CONSTRAINT"
        f" {CANONICAL_UNIQUE_NAME} TO meta_assets_cache_pair_key"
    )
    report = report_for(harness)
    assert report["state"] == "renamed"
    assert report["steps"][-1]["action"].startswith("rename constraint meta_assets_cache_pair_key")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (None, "FAILED: DATABASE_URL is not set: export DATABASE_URL=postgresql://"),
        ("not a url", "FAILED: DATABASE_URL is not a valid URL"),
        ("mysql://u:p@localhost/db", "FAILED: DATABASE_URL names a 'mysql' database"),
        (
            "postgresql://u:s3cret-pw@127.0.0.1:1/db",
            "FAILED: database error: connection to server at",
        ),
    ],
)
def test_errors_are_one_line(url, message):
    result = preflight(url=url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "s3cret-pw" not in result.stderr


# The index form, from the library's own command: `--index NAME` with SQL elements.

USERS = """
CREATE TABLE public.users (id bigint PRIMARY KEY, email text, deleted_at timestamptz,
                           updated_at int NOT NULL);
INSERT INTO public.users VALUES
    -- One live key to lower(email): the older goes.
    (1, 'Ann@x.org', NULL, 1), (2, 'ann@X.org', NULL, 2),
    -- Soft-deleted: outside the predicate, never counted although it repeats the key.
    (3, 'ANN@x.org', '2020-01-01', 9),
    -- Three case variants: two go.
    (4, 'eve@x.org', NULL, 1), (5, 'EVE@x.org', NULL, 2), (6, 'EVE@X.ORG', NULL, 3),
    -- NULL keys: never a duplicate.
    (7, NULL, NULL, 1), (8, NULL, NULL, 1);
"""
USERS_INDEX = {
    "index_name": "users_email_key",
    "table_name": "users",
    "columns": [sa.text("lower(email)")],
    "postgresql_where": "deleted_at IS NULL",
    "keep_newest_by": ["updated_at"],
    "private_schema": "users_private",
}
USERS_FLAGS = [
    "--table", "users", "--index", "users_email_key", "--columns", "lower(email)",
    "--where", "deleted_at IS NULL", "--keep-newest-by", "updated_at",
    "--private-schema", "users_private",
]  # fmt: skip


def library_preflight(harness, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alembic_lossless_unique.preflight", *args],
        env={**os.environ, "DATABASE_URL": harness.url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_index_form_counts_duplicates_as_the_index_judges_them(harness):
    """lower(email) among the rows WHERE deleted_at IS NULL: 3 rows of 2 keys to archive (the
    raw emails have no duplicate; without the predicate it would be 4). Read only, in the
    index's words. The subscriber DDL command a refused run names for it prints tables the
    upgrade then uses as they are, and the upgrade archives exactly the rows counted."""
    harness.execute(USERS)
    schema_before, rows_before = harness.schema_dump(), harness.table_rows("public.users")

    result = library_preflight(harness, "--json", *USERS_FLAGS)
    text = library_preflight(harness, *USERS_FLAGS)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert harness.schema_dump() == schema_before
    assert harness.table_rows("public.users") == rows_before
    assert (report["kind"], report["state"], report["problems"]) == ("unique index", "drifted", [])
    assert (report["rows_to_archive"], report["duplicate_groups"]) == (3, 2)
    assert report["null_key_rows"] == 2
    assert report["offline_blocking_seconds"] is not None  # the index form's script builds too
    assert report["offline"][0].startswith("blocking form (SQL editor): writes wait")
    assert [step["kind"] for step in report["steps"]] == [
        "create_private_tables",
        "install_guard",
        "archive",
        "build_concurrently",
        "remove_guard",
    ]
    assert text.returncode == 0, text.stderr
    assert "as the unique index will reject it" in text.stdout
    assert "constraint" not in text.stdout

    target = target_from_index_arguments(**USERS_INDEX)
    ddl = subprocess.run(
        [sys.executable, *shlex.split(subscriber_ddl_command(target))[1:]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ddl.returncode == 0, ddl.stderr
    harness.execute(ddl.stdout)  # as a subscriber would: then the upgrade writes into them
    with harness.engine.connect() as connection:
        convergence.ensure_unique_constraint(Database(connection, MigrationSettings()), target)

    assert harness.count("users_private.users_email_key_archive") == 3
    after = json.loads(library_preflight(harness, "--json", *USERS_FLAGS).stdout)
    assert (after["state"], after["steps"]) == ("converged", [])
