"""`alembic upgrade head --sql` is a standalone script: its downgrade script restores the schema
exactly, and either path's downgrade undoes either path's upgrade. (That it ends where the
online path ends, in every state and both directions: tests/test_offline_rerun.py.)"""

import pytest

from tests.offline_support import apply_script, offline_script, pair_unique_details, run_psql
from tests.support import BASELINE, HEAD, MIGRATOR


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
