"""`alembic upgrade head --sql` is a standalone script: run with psql, it converges each of the
five starting states to the online path's end state, and its downgrade script undoes it."""

import pytest

from app.names import ARCHIVE, CANONICAL_UNIQUE_NAME, UNIQUE_PAIR_LEDGER
from devtools.starting_states import STATES
from tests.offline_support import apply_script, offline_script, pair_unique_details, run_psql
from tests.support import BASELINE, HEAD, MIGRATOR
from tests.test_starting_states import expected_survivors, keyed_rows


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    return {
        "head": offline_script("upgrade", "head"),
        "0001": offline_script("upgrade", BASELINE),
        "0001:head": offline_script("upgrade", f"{BASELINE}:head"),
        "down": offline_script("downgrade", f"{HEAD}:{BASELINE}"),
    }


def version(harness) -> str | None:
    return harness.version()


def assert_converged(harness, rows_before, null_phone_before, survivors) -> None:
    assert [(u.index_name, u.constraint_name, u.valid) for u in harness.pair_uniques()] == [
        (CANONICAL_UNIQUE_NAME, CANONICAL_UNIQUE_NAME, True)
    ]
    assert harness.invalid_indexes() == []
    rows_after = harness.table_rows()
    for row_id in null_phone_before:
        assert rows_after[row_id] == rows_before[row_id]
    assert {str(r.id) for r in keyed_rows(harness) if r.phone_number_id is not None} == survivors
    archived = (
        harness.rows(f"SELECT id, kept_id, archived_reason FROM {ARCHIVE}")
        if harness.scalar("SELECT to_regclass(:name) IS NOT NULL", name=ARCHIVE)
        else []
    )
    archived_ids = {str(r.id) for r in archived}
    assert rows_after.keys() | archived_ids == rows_before.keys()
    assert rows_after.keys().isdisjoint(archived_ids)
    assert all(str(r.kept_id) in survivors and r.archived_reason for r in archived)
    assert harness.count(UNIQUE_PAIR_LEDGER, "action = 'found'") <= 1
    harness.check()
    assert version(harness) == HEAD


@pytest.mark.parametrize("state", STATES)
def test_offline_upgrade_converges_and_offline_downgrade_restores(state, harness, scripts):
    harness.build_state(state)
    uniques_before = pair_unique_details(harness)
    rows_before = harness.table_rows() if state != "empty" else {}
    null_phone_before = (
        {str(r.id) for r in keyed_rows(harness) if r.phone_number_id is None}
        if state != "empty"
        else set()
    )
    survivors = expected_survivors(keyed_rows(harness)) if state != "empty" else set()

    notices = apply_script(harness, scripts["head"])

    assert_converged(harness, rows_before, null_phone_before, survivors)
    if state == "drifted":
        assert harness.scalar(f"SELECT count(*) FROM {ARCHIVE}") > 0
        assert "archived" in notices

    apply_script(harness, scripts["down"])

    assert version(harness) == BASELINE
    assert harness.table_rows() == rows_before
    if state != "empty":
        assert pair_unique_details(harness) == uniques_before
    assert harness.scalar("SELECT to_regclass(:name) IS NULL", name=ARCHIVE)
    assert harness.scalar("SELECT to_regclass(:name) IS NULL", name=UNIQUE_PAIR_LEDGER)


@pytest.mark.parametrize("state", ["empty", "drifted", "both"])
def test_offline_round_trip_restores_the_schema_exactly(state, harness, scripts):
    harness.build_state(state)
    apply_script(harness, scripts["0001"])
    schema_before = harness.schema_dump()
    rows_before = harness.table_rows()

    apply_script(harness, scripts["0001:head"])
    assert version(harness) == HEAD
    apply_script(harness, scripts["down"])

    assert harness.schema_dump() == schema_before
    assert harness.table_rows() == rows_before


@pytest.mark.parametrize("state", ["drifted", "seedindex"])
def test_offline_upgrade_is_undone_by_the_online_downgrade(state, harness, scripts):
    """Both paths write the same archive and ledger: either downgrade undoes either upgrade."""
    harness.build_state(state)
    uniques_before = pair_unique_details(harness)
    rows_before = harness.table_rows()
    apply_script(harness, scripts["head"])
    assert harness.table_rows() != rows_before or state == "seedindex"

    harness.downgrade(BASELINE)

    assert harness.table_rows() == rows_before
    assert pair_unique_details(harness) == uniques_before


def test_online_upgrade_is_undone_by_the_offline_downgrade(harness, scripts):
    harness.build_state("both")
    harness.upgrade(BASELINE)
    schema_before = harness.schema_dump()
    rows_before = harness.table_rows()
    harness.upgrade("head")

    apply_script(harness, scripts["down"])

    assert harness.schema_dump() == schema_before
    assert harness.table_rows() == rows_before


def test_a_failing_offline_script_changes_nothing(harness, scripts):
    """ON_ERROR_STOP with a revision per transaction: a table the role may not alter stops the
    script before anything of revision 0002 is applied."""
    harness.build_state("drifted")
    apply_script(harness, scripts["0001"])
    rows_before = harness.table_rows()
    harness.admin("CREATE ROLE offline_intruder LOGIN PASSWORD 'x'")
    harness.admin(f"GRANT offline_intruder TO {MIGRATOR}")  # so that SET ROLE works
    harness.execute("GRANT CREATE, USAGE ON SCHEMA public TO offline_intruder")
    script = "SET ROLE offline_intruder;\n" + scripts["0001:head"]

    result = run_psql(harness, script)

    assert result.returncode != 0
    assert "cannot alter public.meta_assets_cache" in result.stderr
    assert harness.table_rows() == rows_before
    assert version(harness) == BASELINE
    harness.admin("DROP OWNED BY offline_intruder")
    harness.admin("DROP ROLE offline_intruder")
