"""Databases that release 1.0 migrated keep working with this layout.

Release 1.0 kept the revisions in `meta_assets_cache_migrations/migrations/` and shipped them
in one distribution with the library. The fixtures in tests/fixtures/released_1_0/ are
`pg_dump --no-owner` outputs (gzipped: they are data) of test databases that release's
`alembic upgrade head` migrated as the non-superuser owner, under Supabase's default
privileges, from the drifted and the both starting state: the same revision ids, version
table, archive and ledger names this layout must keep reading.
"""

import gzip
from pathlib import Path

import pytest

from app.names import ARCHIVE, UNIQUE_PAIR_LEDGER
from tests.offline_support import apply_script, pair_unique_details
from tests.support import BASELINE, HEAD, MIGRATOR

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "released_1_0"


@pytest.mark.parametrize("state", ["drifted", "both"])
def test_a_database_release_1_0_upgraded_downgrades_exactly(state, harness):
    """Restored from release 1.0's upgraded database: this layout sees it at head with nothing
    to do, and its downgrade gives back exactly the starting state (rows byte for byte, the
    uniques on the pair with their comments, the schema as pg_dump prints it) that this
    layout's own baseline leaves, and the upgrade converges again."""
    harness.build_state(state)
    harness.upgrade(BASELINE)
    rows_before = harness.table_rows()
    uniques_before = pair_unique_details(harness)
    schema_before = harness.schema_dump()
    harness.admin(f"DROP OWNED BY {MIGRATOR}")  # an empty database, owned by the migrator
    assert harness.scalar("SELECT to_regclass('public.meta_assets_cache') IS NULL")

    apply_script(harness, gzip.decompress((FIXTURES / f"{state}.sql.gz").read_bytes()).decode())

    assert harness.version() == HEAD
    if state == "drifted":
        assert harness.count(ARCHIVE) > 0
    again = harness.cli("upgrade", "head")
    assert again.returncode == 0, again.output
    assert f"nothing to do: the database is at {HEAD}" in again.stderr

    harness.downgrade("-1")

    assert harness.version() == BASELINE
    assert harness.table_rows() == rows_before
    assert pair_unique_details(harness) == uniques_before
    assert harness.scalar("SELECT to_regclass(:name) IS NULL", name=UNIQUE_PAIR_LEDGER)
    assert harness.schema_dump() == schema_before

    harness.upgrade("head")
    assert harness.version() == HEAD
