"""The preflight report: right for each starting state, exact about what the upgrade archives,
and read only."""

import json
import os
import subprocess
import sys

import pytest

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
