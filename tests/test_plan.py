"""`python -m alembic_lossless_unique plan`: the plan of the pending revisions, read from the
project's own env.py and revisions, read only; its hazard codes as a CI gate (--allow); and
`alembic -x expect_plan=FINGERPRINT` refusing, before changing anything, once the plan is no
longer true. The shop (a foreign project) is planned in tests/test_foreign_project.py."""

import json
import os
import sys

import pytest

from alembic_lossless_unique.reports import hazards
from app.names import CANONICAL_UNIQUE_NAME, PRIVATE_SCHEMA, TABLE
from tests.support import (
    BASELINE,
    HEAD,
    PROJECT_ROOT,
    AlembicResult,
    failed_lines,
    run_child,
    succeed,
)


def plan(harness, *args: str) -> AlembicResult:
    """`python -m alembic_lossless_unique plan ARGS` where alembic.ini is, as a user runs it."""
    return run_child(
        [sys.executable, "-m", "alembic_lossless_unique", "plan", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DATABASE_URL": harness.url},
        timeout=120,
    )


def plan_json(harness, *args: str) -> dict:
    result = plan(harness, "--json", *args)
    succeed(result)
    return json.loads(result.stdout)


def private_schema_exists(harness) -> bool:
    return bool(harness.scalar("SELECT to_regnamespace(:s) IS NOT NULL", s=PRIVATE_SCHEMA))


def test_plan_of_upgrade_head_then_of_its_downgrade(harness):
    """On a drifted table: the pending revisions, the one operation with its table, counts and
    hazards, a fingerprint; nothing written. Deployed with that fingerprint, the upgrade runs;
    the downgrade's plan then restores what it archived, in a transaction that blocks."""
    harness.build_state("drifted")
    schema_before, rows_before = harness.schema_dump(), harness.table_rows()

    found = plan_json(harness)
    text = plan(harness)

    assert harness.schema_dump() == schema_before and harness.table_rows() == rows_before
    assert not private_schema_exists(harness)
    assert found["command"] == "upgrade head"
    assert found["current_revisions"] == []
    assert found["pending_revisions"] == [BASELINE, HEAD]
    assert found["hazard_codes_version"] == hazards.HAZARD_CODES_VERSION
    [operation] = found["operations"]
    assert (operation["revision"], operation["operation"], operation["table"]) == (
        HEAD,
        "ensure_unique_constraint",
        TABLE,
    )
    assert operation["constraint"] == CANONICAL_UNIQUE_NAME
    assert operation["hazards"] == [
        "ARCHIVES_ROWS",
        "BUILDS_INDEX_CONCURRENTLY",
        "TAKES_STRONG_LOCKS",
    ]
    report = operation["preflight"]
    assert report["state"] == "drifted" and report["problems"] == []
    archived = report["rows_to_archive"]
    assert archived > 0
    fingerprint = found["fingerprint"]
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    # The same plan for a person, with the command that deploys it.
    succeed(text)
    assert f"alembic -x expect_plan={fingerprint} upgrade head" in text.stdout
    assert f"revision {HEAD}: ensure_unique_constraint {CANONICAL_UNIQUE_NAME} on {TABLE}" in (
        text.stdout
    )
    assert f"ARCHIVES_ROWS: {archived} rows from" in text.stdout

    succeed(harness.cli("-x", f"expect_plan={fingerprint}", "upgrade", "head"))
    assert harness.count(f"{PRIVATE_SCHEMA}.meta_assets_cache_archive") == archived
    # A second deploy with the same plan finds its work done, as without the fingerprint.
    again = harness.cli("-x", f"expect_plan={fingerprint}", "upgrade", "head")
    succeed(again)
    assert f"nothing to do: the database is at {HEAD}" in again.stderr

    down = plan_json(harness, "downgrade", "-1")
    assert (down["command"], down["current_revisions"], down["pending_revisions"]) == (
        "downgrade -1",
        [HEAD],
        [HEAD],
    )
    [undo] = down["operations"]
    assert (undo["revision"], undo["operation"], undo["table"]) == (
        HEAD,
        "undo_unique_constraint",
        TABLE,
    )
    assert undo["hazards"] == ["BLOCKS_WRITES", "RESTORES_ROWS"]
    assert undo["hazard_details"][1]["detail"] == f"{archived} archived rows"
    assert harness.version() == HEAD  # nothing was undone


@pytest.mark.parametrize(
    "change",
    [
        "ALTER TABLE public.meta_assets_cache ADD COLUMN note text",
        "CREATE UNIQUE INDEX hand_made ON public.meta_assets_cache (id, updated_at)",
        "CREATE TABLE public.asset_notes (id int PRIMARY KEY,"
        " asset_id uuid REFERENCES public.meta_assets_cache (id))",
    ],
    ids=["column_added", "unique_index_created", "foreign_key_into_it"],
)
def test_expect_plan_refuses_once_the_table_changed(change, harness):
    """The plan's fingerprint no longer matches: one FAILED line with both fingerprints and
    what to do, and the database exactly as it was. Unchanged, the same fingerprint is
    accepted (by the test above)."""
    harness.build_state("drifted", keys=40)
    fingerprint = plan_json(harness)["fingerprint"]
    harness.execute(change)
    now = plan_json(harness)["fingerprint"]
    schema_before, rows_before = harness.schema_dump(), harness.table_rows()

    result = harness.cli("-x", f"expect_plan={fingerprint}", "upgrade", "head")

    assert result.returncode != 0
    [line] = failed_lines(result)
    assert now != fingerprint
    assert f"it was {fingerprint}, it is now {now}" in line
    assert "python -m alembic_lossless_unique plan" in line
    assert harness.schema_dump() == schema_before and harness.table_rows() == rows_before
    assert not private_schema_exists(harness) and harness.version() is None


def test_allow_gates_ci_on_hazard_codes(harness):
    """--allow: exit 1 and a line naming each hazard it does not name; exit 0 when it names
    them all; an unknown code is refused in one line."""
    harness.build_state("drifted", keys=40)

    gated = plan(harness, "--allow", "archives_rows")

    assert gated.returncode == 1
    assert "hazard BUILDS_INDEX_CONCURRENTLY not allowed: revision" in gated.stderr
    assert "hazard TAKES_STRONG_LOCKS not allowed: revision" in gated.stderr
    assert "hazard ARCHIVES_ROWS" not in gated.stderr
    assert failed_lines(gated) == [
        "FAILED: hazards not allowed by --allow: BUILDS_INDEX_CONCURRENTLY, TAKES_STRONG_LOCKS"
    ]
    succeed(plan(harness, "--allow", "ARCHIVES_ROWS,BUILDS_INDEX_CONCURRENTLY,TAKES_STRONG_LOCKS"))
    unknown = plan(harness, "--allow", "ARCHIVES_ROWS,DELETES_EVERYTHING")
    assert unknown.returncode == 1
    [line] = failed_lines(unknown)
    assert "unknown hazard codes DELETES_EVERYTHING" in line


PLAIN_ENV = """
import os

from alembic import context
from sqlalchemy import create_engine

if context.is_offline_mode():
    context.configure(url=os.environ["DATABASE_URL"], literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with create_engine(os.environ["DATABASE_URL"]).connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
"""
PLAIN_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.create_table("plain", sa.Column("id", sa.Integer, primary_key=True))
"""


def test_an_env_without_run_migrations_is_refused_having_written_nothing(tmp_path, harness):
    """Alembic's plain template never reaches run_migrations: the plan runs it as --sql would,
    so it touches no database, and the command says in one line what it needs."""
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(PLAIN_ENV)
    (tmp_path / "versions" / "0001_plain.py").write_text(PLAIN_REVISION)
    (tmp_path / "alembic.ini").write_text(f"[alembic]\nscript_location = {tmp_path}\n")

    result = plan(harness, "-c", str(tmp_path / "alembic.ini"))

    assert result.returncode == 1 and result.stdout == ""
    [line] = failed_lines(result)
    assert "did not call alembic_lossless_unique.run_migrations" in line
    assert harness.scalar("SELECT to_regclass('public.plain') IS NULL")
    assert harness.scalar("SELECT to_regclass('public.alembic_version') IS NULL")


def test_the_reference_lists_every_hazard_code_of_this_version():
    """docs/reference.md's table is the documented list: the codes hazards.py derives, in its
    order, under its version."""
    reference = (PROJECT_ROOT / "docs" / "reference.md").read_text()
    section = reference.split(f"### Hazard codes (version {hazards.HAZARD_CODES_VERSION})")[1]
    documented = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
    assert tuple(documented) == hazards.CODES


def test_expect_plan_is_refused_offline():
    """An --sql script cannot check a plan's fingerprint: it says so rather than ignore it."""
    alembic = [sys.executable, "-m", "alembic"]
    result = run_child(
        [*alembic, "-x", f"expect_plan={'0' * 16}", "upgrade", "head", "--sql"],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        timeout=60,
    )

    assert result.returncode != 0 and "CREATE" not in result.stdout
    [line] = failed_lines(result)
    assert "a --sql script cannot check it" in line
