"""The constraint's options, as SQLAlchemy's UniqueConstraint takes them: NULLS NOT DISTINCT,
INCLUDE and DEFERRABLE / INITIALLY, through the inventory project (tests/test_any_table.py) with
its revision 0002 and its model given the same options, run as a user runs it.

Each ends with exactly the constraint SQLAlchemy's own DDL makes for that UniqueConstraint
(pg_get_constraintdef and pg_get_indexdef compared with a twin table made by create_all), with
`alembic check` clean, and a downgrade that gives back every row and the schema as before.
"""

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from psycopg2.errors import UniqueViolation
from sqlalchemy import Column, Integer, MetaData, Table, Text, UniqueConstraint

from alembic_lossless_unique.ddl import guard
from alembic_lossless_unique.operations.ops import target_from_arguments
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.settings import MigrationSettings
from tests.offline_support import apply_script
from tests.online_support import Session, libpq_dsn
from tests.test_any_table import (
    CONSTRAINT,
    KEY,
    TABLE,
    TEMPLATE,
    Stocked,
    archived_rows,
    assert_restored,
    assert_rows_conserved,
    insert_rows,
    ledger_actions,
    newest_first,
    project,  # noqa: F401 (a fixture)
    ranking_rows,
    stocked,  # noqa: F401 (a fixture)
    table_rows,
    version,
)

# On PostgreSQL 18 too (tests/conftest.py).
pytestmark = pytest.mark.pg18

NULLS_NOT_DISTINCT = {"postgresql_nulls_not_distinct": True}
INCLUDE = {"postgresql_include": ["quantity"]}
DEFERRED = {"deferrable": True, "initially": "DEFERRED"}
ALL_OPTIONS = {**NULLS_NOT_DISTINCT, **INCLUDE, **DEFERRED}


def with_options(directory: Path, options: dict) -> None:
    """The project's revision 0002 and its model, given `options`."""
    revision = directory / "migrations" / "versions" / "0002_stock_counts_unique.py"
    text = revision.read_text()
    revision.write_text(
        text.replace('    "private_schema": "inventory_private",\n', "").replace(
            '"row_identity": ["id"],',
            '"row_identity": ["id"],\n    "private_schema": "inventory_private",\n'
            + "".join(f"    {name!r}: {value!r},\n" for name, value in options.items()),
        )
    )
    models = directory / "warehouse" / "models.py"
    model_options = "".join(f", {name}={value!r}" for name, value in options.items())
    models.write_text(
        models.read_text().replace(
            'name="stock_counts_warehouse_sku_batch_key"',
            f'name="stock_counts_warehouse_sku_batch_key"{model_options}',
        )
    )


def twin_definitions(harness, options: dict) -> tuple[str, str]:
    """What SQLAlchemy's DDL makes of the same UniqueConstraint: its constraint and index, as
    PostgreSQL prints them, on a twin table in schema `twin` (renamed to the real one)."""
    harness.execute("CREATE SCHEMA twin")
    metadata = MetaData()
    Table(
        "stock_counts",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("warehouse_id", Integer),
        Column("sku", Text),
        Column("Batch Code", Text),
        Column("quantity", Integer),
        UniqueConstraint(*KEY, name=CONSTRAINT, **options),
        schema="twin",
    )
    metadata.create_all(harness.engine)
    constraint, index = definitions(harness, "twin.stock_counts")
    return constraint, index.replace("twin.stock_counts", TABLE)


def definitions(harness, table: str) -> tuple[str, str]:
    [row] = harness.rows(
        "SELECT pg_get_constraintdef(oid), pg_get_indexdef(conindid) FROM pg_constraint"
        " WHERE conrelid = CAST(:table AS regclass) AND conname = :name",
        table=table,
        name=CONSTRAINT,
    )
    return tuple(row)


KEY_ROWS = f'SELECT warehouse_id, sku, "Batch Code" FROM {TABLE}'


def preflight(harness, options: dict) -> dict:
    """The preflight report (JSON) for revision 0002 with `options`, from its command line."""
    flags = {
        "postgresql_nulls_not_distinct": ["--nulls-not-distinct"],
        "postgresql_include": ["--include", ",".join(options.get("postgresql_include", []))],
        "deferrable": ["--deferrable"],
        "initially": ["--initially", str(options.get("initially"))],
    }
    command = [
        sys.executable, "-m", "alembic_lossless_unique.preflight", "--json",
        "--schema", "inventory", "--table", "stock_counts", "--columns", ",".join(KEY),
        "--constraint", CONSTRAINT, "--keep-newest-by", "revision,recorded_at",
        "--private-schema", "inventory_private",
        *(flag for name in options for flag in flags[name]),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        env={**os.environ, "DATABASE_URL": harness.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def survivors(rows: list[dict], nulls_conflict: bool) -> dict[tuple, int]:
    """Per key, the id of the row that must stay; where NULLs conflict, keys with NULLs too."""
    groups = defaultdict(list)
    for row in rows:
        key = tuple(row[c] for c in KEY)
        if nulls_conflict or None not in key:
            groups[key].append(row)
    return {key: max(group, key=newest_first)["id"] for key, group in groups.items()}


@pytest.mark.parametrize(
    "options",
    [NULLS_NOT_DISTINCT, INCLUDE, DEFERRED],
    ids=["nulls_not_distinct", "include", "deferrable_initially_deferred"],
)
def test_each_option_ends_as_sqlalchemy_would_create_it_and_downgrades_exactly(
    project,  # noqa: F811
    harness,
    stocked,  # noqa: F811
    options,
):
    """Upgrade: the constraint as create_all makes it, the row kept of each key as computed
    here (keys with NULLs among them only with NULLS NOT DISTINCT), table + archive = the rows
    before, `alembic check` clean. Downgrade: every row back, pg_dump -s as before."""
    with_options(project.directory, options)
    expected = twin_definitions(harness, options)
    harness.execute("DROP SCHEMA twin CASCADE")
    nulls_conflict = bool(options.get("postgresql_nulls_not_distinct"))
    must_stay = survivors(ranking_rows(harness), nulls_conflict)

    report = preflight(harness, options)
    with_nulls_before = sum(None in key for key in map(tuple, harness.rows(KEY_ROWS)))
    to_archive = len(stocked.rows) - len(must_stay) - (0 if nulls_conflict else with_nulls_before)
    assert (report["rows_to_archive"], report["null_key_rows"]) == (to_archive, with_nulls_before)

    project.succeed("upgrade", "head")

    assert definitions(harness, TABLE) == expected
    assert_rows_conserved(harness, stocked)
    keys = [tuple(r[c] for c in KEY) for r in ranking_rows(harness)]
    kept = {tuple(r[c] for c in KEY): r["id"] for r in ranking_rows(harness)}
    assert {key: kept[key] for key in must_stay} == must_stay
    with_nulls = [key for key in keys if None in key]
    if nulls_conflict:
        assert len(with_nulls) == len(set(with_nulls))
        assert any(None in table_row for table_row in must_stay)
    else:
        assert len(with_nulls) > len(set(with_nulls))  # NULL-key rows all stayed
    assert len(table_rows(harness)) == len(must_stay) + (0 if nulls_conflict else len(with_nulls))
    checked = project.succeed("check")
    assert "No new upgrade operations detected." in checked.output

    project.succeed("downgrade", "-1")

    assert version(harness) == "0001"
    assert_restored(harness, stocked)


def test_a_null_key_duplicate_is_refused_while_the_guard_holds_a_nulls_not_distinct_key(
    harness,
):
    """Between the dedupe and the constraint, the guard judges keys as the constraint will:
    with NULLS NOT DISTINCT a second (1, NULL) fails as the constraint would fail it; without,
    it is let in."""
    harness.execute(
        "CREATE TABLE public.pairs (id int PRIMARY KEY, a int, b text);"
        " INSERT INTO public.pairs VALUES (1, 1, NULL)"
    )
    arguments = {"constraint_name": "pairs_a_b_key", "table_name": "pairs", "columns": ["a", "b"]}
    app = Session(libpq_dsn(harness.url), autocommit=True)
    try:
        for nulls_not_distinct, refused in ((False, False), (True, True)):
            target = target_from_arguments(
                **arguments, postgresql_nulls_not_distinct=nulls_not_distinct
            )
            with harness.engine.connect() as connection:
                db = Database(connection, MigrationSettings())
                db.execute(f"CREATE SCHEMA IF NOT EXISTS {target.private_schema}")
                db.execute(f"CREATE TABLE IF NOT EXISTS {target.ledger} (seq int, action text,"
                           " detail jsonb)")  # fmt: skip
                guard.install(db, target)
                insert = "INSERT INTO public.pairs VALUES (%s, 1, NULL)"
                if refused:
                    with pytest.raises(UniqueViolation, match=r"Key \(a, b\)=\(1, null\)"):
                        app.run(insert, 3)
                else:
                    app.run(insert, 2)
                app.run("INSERT INTO public.pairs VALUES (4, 1, 'x')")
                with pytest.raises(UniqueViolation, match="pairs_a_b_key"):
                    app.run("INSERT INTO public.pairs VALUES (5, 1, 'x')")
                guard.remove(db, target)
                app.run("DELETE FROM public.pairs WHERE id IN (4, 5)")
    finally:
        app.close()


def test_an_existing_deferrable_unique_is_dropped_and_put_back_deferrable(project, harness):  # noqa: F811
    """A hand-made DEFERRABLE unique on the key does not fit a target without that option: the
    target is built beside it and it is dropped; the downgrade puts it back DEFERRABLE
    INITIALLY DEFERRED, so that pg_dump -s is as before."""
    with_options(project.directory, NULLS_NOT_DISTINCT)
    project.succeed("upgrade", "0001")
    insert_rows(harness, [(1, "s", "b", 1, None, 1, None, None, None),
                          (1, "s", None, 1, None, 1, None, None, None),
                          (1, "s", None, 1, None, 2, None, None, None)])  # fmt: skip
    harness.execute(
        f"ALTER TABLE {TABLE} ADD CONSTRAINT hand_made UNIQUE"
        ' (warehouse_id, sku, "Batch Code") DEFERRABLE INITIALLY DEFERRED'
    )
    before = Stocked(table_rows(harness), {}, set(), harness.schema_dump())

    project.succeed("upgrade", "head")

    assert "dropped_redundant" in ledger_actions(harness)
    assert len(archived_rows(harness)) == 1  # the older (1, 's', NULL)
    assert (
        harness.scalar(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = CAST(:t AS regclass)"
            " AND contype = 'u'",
            t=TABLE,
        )
        == 1
    )

    project.succeed("downgrade", "-1")

    assert_restored(harness, before)
    assert harness.scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'hand_made'"
    ).endswith("DEFERRABLE INITIALLY DEFERRED")


@pytest.mark.parametrize(
    ("index_options", "target_options", "promoted"),
    [
        (" INCLUDE (quantity) NULLS NOT DISTINCT", {**NULLS_NOT_DISTINCT, **INCLUDE}, True),
        ("", NULLS_NOT_DISTINCT, False),
        (" NULLS NOT DISTINCT", {}, False),
    ],
    ids=["fits", "lacks_nulls_not_distinct", "has_nulls_not_distinct"],
)
def test_an_index_on_the_key_becomes_the_constraint_only_if_it_has_its_options(
    project,  # noqa: F811
    harness,
    index_options,
    target_options,
    promoted,
):
    """A unique index on the key with the target's INCLUDE columns and NULLs rule becomes the
    constraint as it is; one whose NULLs rule differs is dropped once the target is built
    beside it (and the downgrade puts it back: pg_dump -s as before)."""
    with_options(project.directory, target_options)
    project.succeed("upgrade", "0001")
    harness.execute(
        f'CREATE UNIQUE INDEX found ON {TABLE} (warehouse_id, sku, "Batch Code"){index_options}'
    )
    expected = twin_definitions(harness, target_options)
    harness.execute("DROP SCHEMA twin CASCADE")
    before = Stocked(table_rows(harness), {}, set(), harness.schema_dump())

    project.succeed("upgrade", "head")

    actions = ledger_actions(harness)
    assert ("promoted" in actions, "built" in actions) == (promoted, not promoted)
    assert ("dropped_redundant" in actions) == (not promoted)
    assert definitions(harness, TABLE) == expected

    project.succeed("downgrade", "-1")

    assert_restored(harness, before)


def test_the_offline_script_makes_the_same_constraint_and_undoes_it(project, harness, stocked):  # noqa: F811
    """`alembic upgrade --sql` with every option, applied with psql: the constraint SQLAlchemy
    would create, the same rows kept as online; the downgrade script restores exactly."""
    with_options(project.directory, ALL_OPTIONS)
    expected = twin_definitions(harness, ALL_OPTIONS)
    harness.execute("DROP SCHEMA twin CASCADE")
    must_stay = survivors(ranking_rows(harness), nulls_conflict=True)
    upgrade = project.offline_script("upgrade", "0001:head")
    downgrade = project.offline_script("downgrade", "head:0001")

    apply_script(harness, upgrade)

    assert definitions(harness, TABLE) == expected
    assert_rows_conserved(harness, stocked)
    assert sorted(r["id"] for r in ranking_rows(harness)) == sorted(must_stay.values())

    apply_script(harness, downgrade)

    assert version(harness) == "0001"
    assert_restored(harness, stocked)


def test_options_a_constraint_cannot_have_are_refused_before_anything_changes(project, harness):  # noqa: F811
    """initially='DEFERRED' with deferrable=False, and an INCLUDE column that does not exist:
    one FAILED line each, nothing changed."""
    project.succeed("upgrade", "0001")
    before = harness.schema_dump()
    for options, cause in (
        ({"deferrable": False, "initially": "DEFERRED"}, "needs deferrable=True"),
        ({"postgresql_include": ["no_such_column"]}, "column no_such_column of inventory."),
    ):
        with_options(project.directory, options)
        result = project.alembic("upgrade", "head")
        assert result.returncode != 0
        failed = [line for line in result.output.splitlines() if line.startswith("FAILED")]
        assert len(failed) == 1 and cause in failed[0], result.output
        assert harness.schema_dump() == before
        restore_revision(project.directory)


def restore_revision(directory: Path) -> None:
    """Back to the template's revision 0002 and model, for the next options."""
    for relative in ("migrations/versions/0002_stock_counts_unique.py", "warehouse/models.py"):
        (directory / relative).write_text((TEMPLATE / relative).read_text())
