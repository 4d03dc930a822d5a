"""A rollback is checked up front, as the upgrade is: whatever the downgrade (online or offline)
will read, write or lock is checked read-only before anything changes, a lack is one FAILED
line saying what to grant, and preflight reports it for both directions; the rollback needs no
right the upgrade did not (the parents' rows are PostgreSQL's own foreign key check's to lock);
and preflight says how long the offline script's blocking form would hold the table's
writes."""

import json
import os
import subprocess
import sys

import pytest

from alembic_lossless_unique.ddl.plan import Plan, Step
from alembic_lossless_unique.reports import preflight
from app.names import CANONICAL_UNIQUE_NAME, TABLE
from tests.offline_support import apply_script, offline_script, run_psql, schema_dump
from tests.support import BASELINE, HEAD, MIGRATOR, PROJECT_ROOT, failed_lines, succeed


def preflight_output(harness, *arguments: str) -> str:
    """`python -m app.preflight ARGUMENTS` on the harness's database: its output."""
    result = subprocess.run(
        [sys.executable, "-m", "app.preflight", *arguments],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DATABASE_URL": harness.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def preflight_report(harness) -> dict:
    return json.loads(preflight_output(harness, "--json"))


@pytest.fixture
def other_owner(harness):
    role = f"other_owner_{harness.dbname[-8:]}"
    harness.admin(f"CREATE ROLE {role} NOLOGIN")
    yield role
    harness.admin(f"REASSIGN OWNED BY {role} TO {MIGRATOR}; DROP OWNED BY {role}; DROP ROLE {role}")


ARCHIVE = "meta_assets_migration.meta_assets_cache_archive"


def state(harness) -> tuple:
    """What the migrator may read of the database: its schema, the table, the archive."""
    return (
        schema_dump(harness),
        harness.table_rows(),
        harness.table_rows(ARCHIVE) if harness.count(ARCHIVE) else {},
        harness.version(),
    )


@pytest.fixture
def may_skip_triggers(harness):
    """The migrator may set session_replication_role (PostgreSQL 15's GRANT SET ON PARAMETER),
    under which no foreign key trigger fires either."""
    harness.admin(f"GRANT SET ON PARAMETER session_replication_role TO {MIGRATOR}")
    yield
    harness.admin(f"REVOKE SET ON PARAMETER session_replication_role FROM {MIGRATOR}")


def test_the_rollback_needs_no_rights_on_the_parents_the_upgrade_did_not_need(
    harness, other_owner, may_skip_triggers
):
    """The migrator owns meta_assets_cache but has no rights on workspaces, whose rows the
    restored rows reference: the downgrade, online and offline, restores them all the same,
    PostgreSQL's own foreign key check (run as the parent's owner) guarding them even where the
    role may skip triggers. A parent deleted since stops it with one line, changing nothing."""
    harness.build_state("drifted")
    harness.admin(f"ALTER TABLE public.workspaces OWNER TO {other_owner}")
    harness.admin(f"REVOKE ALL ON public.workspaces FROM {MIGRATOR}")
    assert [p for p in preflight_report(harness)["problems"] if "downgrade" in p] == []

    harness.upgrade("head")
    archived = {row[0] for row in harness.rows(f"SELECT id FROM {ARCHIVE}")}
    [(gone,)] = harness.rows(f"SELECT workspace_id FROM {ARCHIVE} ORDER BY id LIMIT 1")
    harness.admin(f"DELETE FROM public.workspaces WHERE id = '{gone}'")
    at_head = state(harness)

    online = harness.cli("downgrade", "-1")
    offline = run_psql(harness, offline_script("downgrade", f"{HEAD}:{BASELINE}"))

    assert online.returncode != 0
    [line] = failed_lines(online)
    assert "reference rows of public.workspaces that no longer exist" in line
    assert "meta_assets_cache_workspace_id_fkey" in line and "permission denied" not in line
    assert offline.returncode != 0 and line.removeprefix("FAILED: ") in offline.stderr
    assert state(harness) == at_head

    harness.admin(f"INSERT INTO public.workspaces (id) VALUES ('{gone}')")
    apply_script(harness, offline_script("downgrade", f"{HEAD}:{BASELINE}"))
    assert harness.version() == BASELINE
    assert archived <= {row[0] for row in harness.rows(f"SELECT id FROM {TABLE}")}
    harness.upgrade("head")
    succeed(harness.cli("downgrade", "-1"))
    assert harness.version() == BASELINE and harness.count(ARCHIVE) == 0


def test_a_child_table_the_role_may_no_longer_update_stops_the_downgrade(harness, other_owner):
    """Child rows the upgrade re-pointed must be pointed back: a child the role lost the right
    to update since stops the offline downgrade before anything changes, naming the grant."""
    harness.build_state("drifted")
    harness.execute(
        "CREATE TABLE public.asset_notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " asset_id uuid REFERENCES public.meta_assets_cache(id), note text);"
        " INSERT INTO public.asset_notes (asset_id, note)"
        " SELECT id, 'note' FROM public.meta_assets_cache"
    )
    apply_script(harness, offline_script("upgrade", "head"))
    assert harness.scalar(
        "SELECT count(*) FROM meta_assets_migration.meta_assets_cache_archive_repointed"
    )
    harness.admin(f"ALTER TABLE public.asset_notes OWNER TO {other_owner}")
    harness.admin(f"GRANT SELECT ON public.asset_notes TO {MIGRATOR}")
    at_head = state(harness)

    offline = run_psql(harness, offline_script("downgrade", f"{HEAD}:{BASELINE}"))

    assert offline.returncode != 0
    assert "may not update public.asset_notes (asset_id)" in offline.stderr
    assert f"UPDATE ON public.asset_notes TO {MIGRATOR}" in offline.stderr
    assert state(harness) == at_head


def test_preflight_estimates_the_blocking_forms_write_stall(harness):
    harness.build_state("drifted")
    report = preflight_report(harness)

    assert report["offline_blocking_seconds"] is not None
    assert report["offline_blocking_seconds"] == pytest.approx(
        report["total_bytes"] / 1e9 * preflight.BLOCKING_STALL_SECONDS_PER_GB, abs=0.05
    )
    text = preflight_output(harness)
    assert "offline script       blocking form (SQL editor): writes wait " in text
    assert "concurrent form (psql -f, supabase db push)" in text


def test_preflight_says_when_to_prefer_the_online_command():
    """The advice follows the estimate: none for a table that stalls writes for a moment, the
    online command (or the concurrent form) for one that stalls them for seconds."""
    build = Plan((Step("build", CANONICAL_UNIQUE_NAME, None, None, None, True, "no unique"),))
    small = preflight.offline_lines(build, preflight.Report(table=TABLE, total_bytes=10**7))
    large = preflight.offline_lines(build, preflight.Report(table=TABLE, total_bytes=2 * 10**9))

    assert small[0] < preflight.NOTICEABLE_STALL_SECONDS
    assert not any("prefer" in line for line in small[1])
    assert large[0] == 2 * preflight.BLOCKING_STALL_SECONDS_PER_GB
    assert "prefer `alembic upgrade head`" in large[1][-1]


@pytest.mark.parametrize("state", ["constrained", "seedindex"])
def test_preflight_says_the_offline_script_builds_nothing_where_a_unique_exists(state, harness):
    harness.build_state(state)
    report = preflight_report(harness)
    assert report["offline_blocking_seconds"] is None
    assert "builds nothing here" in report["offline"][0]
