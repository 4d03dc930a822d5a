"""A rollback is checked up front, as the upgrade is: whatever the downgrade (online or offline)
will read, write or lock is checked read-only before anything changes, a lack is one FAILED
line saying what to grant, and preflight reports it for both directions; and preflight says
how long the offline script's blocking form would hold the table's writes."""

import json
import os
import subprocess
import sys

import pytest

from alembic_lossless_unique import preflight
from alembic_lossless_unique.plan import Plan, Step
from app.names import CANONICAL_UNIQUE_NAME, TABLE
from tests.offline_support import apply_script, offline_script, run_psql, schema_dump
from tests.support import BASELINE, HEAD, MIGRATOR, PROJECT_ROOT, failed_lines


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


PARENT_GRANT = f"SELECT, UPDATE ON public.workspaces TO {MIGRATOR}"


def state(harness) -> tuple:
    """What the migrator may read of the database: its schema, the table, the archive."""
    archive = "meta_assets_migration.meta_assets_cache_archive"
    return (
        schema_dump(harness),
        harness.table_rows(),
        harness.table_rows(archive) if harness.count(archive) else {},
        harness.version(),
    )


def test_a_parent_the_role_may_not_lock_stops_the_downgrade_before_it_changes_anything(
    harness, other_owner
):
    """The migrator owns meta_assets_cache but has no rights on workspaces, whose rows the
    restored rows reference: the upgrade runs; the downgrade, online and offline, refuses up
    front with the GRANT it needs; preflight says so before the upgrade and after it."""
    harness.build_state("drifted")
    harness.admin(f"ALTER TABLE public.workspaces OWNER TO {other_owner}")
    harness.admin(f"REVOKE ALL ON public.workspaces FROM {MIGRATOR}")

    before_upgrade = [p for p in preflight_report(harness)["problems"] if "downgrade" in p]
    assert len(before_upgrade) == 1, before_upgrade
    assert before_upgrade[0].startswith("after this upgrade, the downgrade would refuse")
    assert PARENT_GRANT in before_upgrade[0]

    harness.upgrade("head")
    rows_at_head = harness.table_rows()
    at_head = state(harness)

    online = harness.cli("downgrade", "-1")
    assert online.returncode != 0
    [line] = failed_lines(online)
    assert "meta_assets_cache_workspace_id_fkey" in line and PARENT_GRANT in line
    assert "permission denied" not in online.output
    assert state(harness) == at_head

    offline = run_psql(harness, offline_script("downgrade", f"{HEAD}:{BASELINE}"))
    assert offline.returncode != 0
    assert PARENT_GRANT in offline.stderr and "permission denied" not in offline.stderr
    assert state(harness) == at_head

    after_upgrade = [p for p in preflight_report(harness)["problems"] if "downgrade" in p]
    assert [p.removeprefix("the downgrade would refuse: ") for p in after_upgrade] == [
        line.removeprefix("FAILED: ")
    ]

    harness.admin(f"GRANT {PARENT_GRANT}")
    harness.downgrade(BASELINE)
    assert harness.table_rows().keys() > rows_at_head.keys()


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
