"""Each of the five starting states converges to the one canonical state and rolls back exactly."""

from collections import defaultdict

import pytest
from sqlalchemy.exc import ProgrammingError

from alembic_lossless_unique.ddl import dedupe
from alembic_lossless_unique.operations import convergence
from alembic_lossless_unique.reports.preflight import losers_sql
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.settings import MigrationSettings
from app.names import ARCHIVE, CANONICAL_UNIQUE_NAME
from app.unique_pair import TARGET
from devtools.starting_states import STATES
from tests.support import BASELINE

# On PostgreSQL 18 too (tests/conftest.py).
pytestmark = pytest.mark.pg18

UPSERT_WORKSPACE = "00000000-0000-0000-0000-00000000abcd"
UPSERT = f"""
INSERT INTO public.meta_assets_cache (workspace_id, phone_number_id, display_phone_number)
VALUES ('{UPSERT_WORKSPACE}', 'pn-upsert', '+1')
ON CONFLICT (workspace_id, phone_number_id)
DO UPDATE SET display_phone_number = EXCLUDED.display_phone_number || ' again', updated_at = now()
"""


def expected_survivors(rows) -> set[str]:
    """Per keyed pair, the newest row: updated_at, then last_synced_at (NULL oldest), then id."""
    groups = defaultdict(list)
    for row in rows:
        if row.phone_number_id is not None:
            groups[(row.workspace_id, row.phone_number_id)].append(row)
    return {
        str(
            max(
                group,
                key=lambda r: (r.updated_at, r.last_synced_at is not None, r.last_synced_at, r.id),
            ).id
        )
        for group in groups.values()
    }


def keyed_rows(harness):
    return harness.rows(
        "SELECT id, workspace_id, phone_number_id, updated_at, last_synced_at"
        " FROM public.meta_assets_cache"
    )


@pytest.fixture(params=STATES)
def state(request, harness):
    harness.build_state(request.param)
    return request.param


def test_upgrade_converges_and_downgrade_restores_exactly(state, harness):
    harness.upgrade(BASELINE)
    schema_before = harness.schema_dump()
    rows_before = harness.table_rows()
    null_phone_before = {str(r.id) for r in keyed_rows(harness) if r.phone_number_id is None}
    survivors = expected_survivors(keyed_rows(harness))
    policies_and_grants_before = harness.policies_and_grants()

    harness.upgrade("head")

    assert [(u.index_name, u.constraint_name, u.valid) for u in harness.pair_uniques()] == [
        (CANONICAL_UNIQUE_NAME, CANONICAL_UNIQUE_NAME, True)
    ]
    assert harness.invalid_indexes() == []
    assert (
        harness.scalar(
            "SELECT count(*) FROM (SELECT 1 FROM public.meta_assets_cache"
            " WHERE phone_number_id IS NOT NULL"
            " GROUP BY workspace_id, phone_number_id HAVING count(*) > 1) d"
        )
        == 0
    )
    assert harness.scalar("SELECT to_regclass(:name) IS NULL", name=TARGET.work)
    rows_after = harness.table_rows()
    archived = (
        harness.rows(f"SELECT id, kept_id, archived_reason, archived_at FROM {ARCHIVE}")
        if harness.scalar("SELECT to_regclass(:name) IS NOT NULL", name=ARCHIVE)
        else []  # a table that already had its constraint: nothing to do, nothing created
    )
    assert {k for k in rows_before if k in null_phone_before} <= rows_after.keys()
    for row_id in null_phone_before:
        assert rows_after[row_id] == rows_before[row_id]
    kept_keyed = {str(r.id) for r in keyed_rows(harness) if r.phone_number_id is not None}
    assert kept_keyed == survivors
    # Nothing lost, nothing invented: the table plus the archive is exactly the original rows.
    assert rows_after.keys() | {str(r.id) for r in archived} == rows_before.keys()
    assert rows_after.keys().isdisjoint({str(r.id) for r in archived})
    assert all(str(r.kept_id) in survivors and r.archived_reason for r in archived)
    assert len(archived) == len(rows_before) - len(rows_after)
    if state == "drifted":
        assert len(archived) > 0  # the generator really made duplicates to remove
    harness.check()
    harness.execute(f"INSERT INTO public.workspaces (id) VALUES ('{UPSERT_WORKSPACE}')")
    harness.execute(UPSERT)
    harness.execute(UPSERT)
    assert (
        harness.scalar(
            "SELECT count(*) FROM public.meta_assets_cache WHERE phone_number_id = 'pn-upsert'"
        )
        == 1
    )
    assert harness.policies_and_grants() == policies_and_grants_before
    harness.execute(f"DELETE FROM public.workspaces WHERE id = '{UPSERT_WORKSPACE}'")
    schema_after_upgrade = harness.schema_dump()

    harness.downgrade("-1")

    assert harness.schema_dump() == schema_before
    assert harness.table_rows() == rows_before
    assert harness.scalar("SELECT to_regclass(:name) IS NULL", name=ARCHIVE)

    harness.upgrade("head")

    assert harness.schema_dump() == schema_after_upgrade
    assert {str(r.id) for r in keyed_rows(harness) if r.phone_number_id is not None} == survivors
    assert harness.table_rows().keys() == rows_after.keys()


# Planner costs that make even a small table worth parallel workers.
FORCE_PARALLEL = {
    "parallel_setup_cost": "0",
    "parallel_tuple_cost": "0",
    "min_parallel_table_scan_size": "0",
    "max_parallel_workers_per_gather": "2",
}


def test_parallel_dedupe_keeps_the_newest_row_of_each_pair(harness):
    """Production-sized tables get a parallel plan for the list of rows to archive; the small
    tables of the other tests do not. Force one here and check that nothing changes."""
    harness.build_state("drifted", keys=2000)
    harness.upgrade(BASELINE)
    with harness.engine.connect() as connection:
        for name, value in FORCE_PARALLEL.items():
            connection.exec_driver_sql(f"SET {name} = {value}")
        listing = losers_sql(Database(connection, MigrationSettings()), TARGET)
        plan = "\n".join(row[0] for row in connection.exec_driver_sql("EXPLAIN " + listing))
    assert "Parallel Hash Semi Join" in plan, plan
    rows_before = harness.table_rows()
    survivors = expected_survivors(keyed_rows(harness))
    options = " ".join(f"-c {name}={value}" for name, value in FORCE_PARALLEL.items())

    result = harness.cli("upgrade", "head", env={"PGOPTIONS": options})

    assert result.returncode == 0, result.output
    assert {str(r.id) for r in keyed_rows(harness) if r.phone_number_id is not None} == survivors
    archived = {str(row.id) for row in harness.rows(f"SELECT id FROM {ARCHIVE}")}
    assert archived | harness.table_rows().keys() == rows_before.keys()
    assert len(archived) > 0


def test_archive_is_not_readable_by_api_roles(harness):
    harness.build_state("drifted")
    harness.upgrade("head")
    assert harness.scalar(f"SELECT count(*) FROM {ARCHIVE}") > 0
    for role in ("anon", "authenticated"):
        with pytest.raises(ProgrammingError, match="permission denied"):
            harness.as_role(role, f"SELECT * FROM {ARCHIVE}")


def test_rerun_on_a_constrained_table_builds_nothing(harness):
    harness.build_state("constrained")
    harness.upgrade("head")
    oid_before = harness.scalar(f"SELECT '{CANONICAL_UNIQUE_NAME}'::regclass::oid")
    harness.downgrade("-1")
    harness.upgrade("head")
    assert harness.scalar(f"SELECT '{CANONICAL_UNIQUE_NAME}'::regclass::oid") == oid_before


def test_summary_tells_the_story(harness):
    harness.build_state("drifted")
    result = harness.cli("upgrade", "head")
    assert result.returncode == 0, result.output
    archived = harness.scalar(f"SELECT count(*) FROM {ARCHIVE}")
    groups = harness.scalar(f"SELECT count(DISTINCT kept_id) FROM {ARCHIVE}")
    for expected in (
        "state found       drifted (no unique on the key)",
        f"duplicate groups  {groups}",
        f"rows archived     {archived} (moved to {ARCHIVE})",
        f"built             unique index {CANONICAL_UNIQUE_NAME}, concurrently",
        "seconds per step: inspect",
    ):
        assert expected in result.stderr


def test_hand_named_unique_constraint_is_renamed_and_renamed_back(harness):
    harness.build_state("constrained")
    harness.execute(
        "ALTER TABLE public.meta_assets_cache RENAME CONSTRAINT"
        f" {CANONICAL_UNIQUE_NAME} TO meta_assets_cache_pair_by_hand"
    )
    harness.upgrade(BASELINE)
    schema_before = harness.schema_dump()
    harness.upgrade("head")
    assert [(u.index_name, u.constraint_name) for u in harness.pair_uniques()] == [
        (CANONICAL_UNIQUE_NAME, CANONICAL_UNIQUE_NAME)
    ]
    harness.check()
    harness.downgrade("-1")
    assert harness.schema_dump() == schema_before


def test_partial_unique_on_the_pair_is_left_alone(harness):
    harness.build_state("drifted")
    harness.execute(
        "CREATE UNIQUE INDEX meta_assets_cache_recent_pair ON public.meta_assets_cache"
        " (workspace_id, phone_number_id) WHERE updated_at > '2030-01-01'"
    )
    harness.upgrade("head")
    names = {u.index_name: u.constraint_name for u in harness.pair_uniques()}
    assert names == {
        CANONICAL_UNIQUE_NAME: CANONICAL_UNIQUE_NAME,
        "meta_assets_cache_recent_pair": None,
    }


@pytest.mark.parametrize(
    ("server_work_mem", "knob", "during_dedupe"),
    [("4MB", "96MB", "96MB"), ("128MB", "96MB", "128MB")],
    ids=["raised", "never-lowered"],
)
def test_dedupe_work_mem_lasts_one_transaction(harness, server_work_mem, knob, during_dedupe):
    harness.build_state("drifted")
    with harness.engine.connect() as connection:
        connection.exec_driver_sql(f"SET work_mem = '{server_work_mem}'")
        db = Database(connection, MigrationSettings(dedupe_work_mem=knob))
        convergence.prepare(db, TARGET)
        with db.transaction():
            db.execute(dedupe.list_sql(TARGET, knob))
            assert db.scalar("SHOW work_mem") == during_dedupe
        assert db.scalar("SHOW work_mem") == server_work_mem
