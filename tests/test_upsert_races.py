"""No app upsert fails during a step whose before and after both serve it.

The app writes through PostgREST's `INSERT ... ON CONFLICT (workspace_id, phone_number_id) DO
UPDATE`. Sixteen real clients, in groups of four that meet at a barrier and upsert the same new
key at the same instant, run through each upgrade and downgrade of the states where a unique
serves those upserts before and after (seedindex, both); every error any of them sees is
recorded with its SQLSTATE. A long reader (a pg_dump, a report) widens the windows in which
PostgreSQL fails such upserts: a unique that is maintained but not valid beside the one that
serves them (a concurrent drop or build).
"""

import json
import os
import subprocess
import sys

import pytest

from devtools.app_traffic import Mix, errors_by_sqlstate
from tests.support import BASELINE, PROJECT_ROOT, succeed
from tests.traffic_support import (
    UNIQUE_VIOLATION,
    long_reader,
    traffic,
    unexpected_errors,
    upserts_served,
)

pytestmark = pytest.mark.slow

RACERS = Mix(upsert=16, upsert_group=4, existing_key_share=0.2)
# Longer than the migrator takes to reach the step the reader holds up.
READER_SECONDS = 2.0


def assert_every_upsert_served(running) -> None:
    outcomes = running.outcomes
    assert unexpected_errors(outcomes, serves_before=True, serves_after=True) == []
    assert upserts_served(outcomes) > 100, "the racers hardly ran"


@pytest.mark.parametrize("state", ["seedindex", "both"])
def test_no_upsert_fails_in_the_upgrade_or_the_downgrade(state, harness):
    harness.build_state(state)
    harness.upgrade(BASELINE)

    with traffic(harness, RACERS, seed=1, label="up") as up:
        succeed(harness.cli("upgrade", "head"))
    with traffic(harness, RACERS, seed=2, label="down") as down:
        result = harness.cli("downgrade", "-1")
    succeed(result)

    assert "inside the downgrade's transaction" in result.output
    assert_every_upsert_served(up)
    assert_every_upsert_served(down)


def test_no_upsert_fails_while_the_redundant_index_goes_behind_a_long_reader(harness):
    """The upgrade of `both` drops the redundant index with a plain DROP INDEX under the lock
    timeout: it waits for the reader, retrying, and never leaves the index invalid but
    maintained (as DROP INDEX CONCURRENTLY does for as long as the reader stays)."""
    harness.build_state("both")
    harness.upgrade(BASELINE)

    with (
        traffic(harness, RACERS, seed=3) as running,
        long_reader(harness, READER_SECONDS, until_waited_for="DROP INDEX%"),
    ):
        result = harness.cli("-x", "lock_retry_max_wait=1s", "upgrade", "head")

    succeed(result)
    assert_every_upsert_served(running)
    assert "drop index idx_meta_assets_cache_ws_phone_unique: public.meta_assets_cache is busy" in (
        result.output
    )


def test_no_upsert_fails_while_the_downgrade_rebuilds_in_its_transaction_behind_a_reader(
    harness,
):
    harness.build_state("both")
    harness.upgrade(BASELINE)
    succeed(harness.cli("upgrade", "head"))

    with (
        traffic(harness, RACERS, seed=4) as running,
        long_reader(harness, READER_SECONDS, until_waited_for="LOCK TABLE%"),
    ):
        result = harness.cli(
            "-x", "downgrade_rebuild=in_transaction", "-x", "lock_retry_max_wait=1s",
            "downgrade", "-1",
        )  # fmt: skip

    succeed(result)
    assert_every_upsert_served(running)


@pytest.mark.pg18  # the docs say which majors fail them: 18 and older
def test_a_concurrent_rebuild_fails_racing_upserts_as_postgresql_does(harness):
    """What downgrade_rebuild=concurrently trades for never making a query wait: PostgreSQL 18
    and older fail ON CONFLICT upserts racing on a key while a second unique on it is being
    built concurrently (maintained, not yet valid). The setting is honoured, and the tests
    above would see such failures."""
    harness.build_state("both")
    harness.upgrade(BASELINE)
    succeed(harness.cli("upgrade", "head"))

    with (
        traffic(harness, RACERS, seed=5) as running,
        long_reader(harness, READER_SECONDS, until_waited_for="CREATE UNIQUE INDEX CONCURRENTLY%"),
    ):
        result = harness.cli("-x", "downgrade_rebuild=concurrently", "downgrade", "-1")

    succeed(result)
    assert "inside the downgrade's transaction" not in result.output
    errors = errors_by_sqlstate(running.outcomes, ["upsert"])
    assert errors[UNIQUE_VIOLATION] > 0, errors


def preflight_json(harness, **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "app.preflight", "--json"],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
        env={**os.environ, "DATABASE_URL": harness.url, **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_preflight_says_what_the_app_sees_in_each_step(harness):
    harness.build_state("both")
    harness.upgrade(BASELINE)
    [drop] = [s for s in preflight_json(harness)["steps"] if s["action"].startswith("drop")]
    assert drop["action"] == "drop redundant index idx_meta_assets_cache_ws_phone_unique"
    assert drop["app_sees"].endswith("no upsert fails")
    succeed(harness.cli("upgrade", "head"))

    rebuild_inside = preflight_json(harness)["downgrade_steps"]
    concurrent = preflight_json(harness, MIGRATION_DOWNGRADE_REBUILD="concurrently")

    [final] = rebuild_inside
    assert "build the uniques the upgrade dropped" in final["action"]
    assert (
        "reads and writes wait while the build of idx_meta_assets_cache_ws_phone_unique"
        in (final["app_sees"])
    )
    assert final["app_sees"].endswith("no upsert fails")
    rebuild, final = concurrent["downgrade_steps"]
    assert rebuild["action"] == "rebuild idx_meta_assets_cache_ws_phone_unique concurrently"
    assert "23505" in rebuild["app_sees"] and "40P01" in rebuild["app_sees"]


def test_preflight_of_a_drifted_table_says_upserts_wait_for_the_index(harness):
    harness.build_state("drifted")
    steps = {step["action"].split(" ")[0]: step for step in preflight_json(harness)["steps"]}
    assert "42P10" in steps["build"]["app_sees"]
    assert "23505" in steps["install"]["app_sees"]
    assert steps["promote"]["app_sees"].endswith("no upsert fails")
