"""The offline script can always be run again, and ends where the online command ends.

In every starting state, `alembic upgrade head --sql` run with psql -f (the concurrent form)
and its blocking form sent as one query (the SQL editor's way) leave the same schema (pg_dump
-s, the private schema included) and the same rows as `alembic upgrade head`; run again, they
change nothing and say so; the downgrade scripts end where `alembic downgrade base` ends. A run
stopped anywhere (between any two transactions, inside any of them, after the concurrent
build) completes when the whole script is run again.
"""

import pytest
from sqlalchemy.exc import IntegrityError

from app.names import ARCHIVE, CANONICAL_UNIQUE_NAME
from devtools.starting_states import STATES
from tests.offline_support import (
    SKIPPED,
    apply_script,
    ledger_free,
    one_query,
    online,
    online_at_head,
    other_database,
    run_psql,
    snapshot,
    the_offline_scripts,
    without_guard_steps,
)
from tests.support import BASELINE, HEAD


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    return the_offline_scripts()


@pytest.mark.parametrize("state", STATES)
def test_every_path_ends_where_online_ends_and_runs_again(state, harness, scripts):
    with other_database(harness, "online") as on, other_database(harness, "editor") as editor:
        for database in (harness, on, editor):
            database.build_state(state)

        online(on, "upgrade", "head")
        apply_script(harness, scripts["concurrent"])
        error, _ = one_query(editor, scripts["blocking"])
        assert error is None

        at_head = snapshot(on)
        assert at_head.version == HEAD
        assert snapshot(harness) == at_head
        # The blocking form does without the guard, and its ledger says so.
        assert without_guard_steps(snapshot(editor)) == without_guard_steps(snapshot(on))

        # Run again: nothing left to do, nothing changes, and the script says so.
        notices = apply_script(harness, scripts["concurrent"])
        error, editor_notices = one_query(editor, scripts["blocking"])
        assert error is None
        assert snapshot(harness) == at_head
        assert without_guard_steps(snapshot(editor)) == without_guard_steps(snapshot(on))
        for said in (notices, "".join(editor_notices)):
            assert said.count(SKIPPED) == 2, said
            assert f"skipped upgrade {BASELINE} -> {HEAD}: already applied" in said

        # And back, both ways, to where the online downgrade ends; then again.
        online(on, "downgrade", "base")
        at_base = snapshot(on)
        for database, run in ((harness, by_psql), (editor, by_one_query)):
            run(database, scripts["downgrade"])
            assert snapshot(database) == at_base
            run(database, scripts["downgrade"])
            assert snapshot(database) == at_base


def by_psql(harness, script: str) -> None:
    apply_script(harness, script)


def by_one_query(harness, script: str) -> None:
    error, _ = one_query(harness, script)
    assert error is None


def statement_ends(script: str, statement: str) -> list[int]:
    """Where each top-level `statement` (a line of its own) ends in the script."""
    ends, start = [], 0
    while (found := script.find(f"\n{statement}\n", start)) != -1:
        ends.append(found + len(statement) + 2)
        start = found + 1
    return ends


def cut(script: str, point: str) -> str:
    """The script up to a point: `before COMMIT n` (the n-th transaction left open: the session
    ends and it rolls back) or `after the build` (the concurrent build done, not promoted)."""
    if point == "after the build":
        build = script.index("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS")
        return script[: script.index(";", build) + 1] + "\n"
    number = int(point.rsplit(" ", 1)[1])
    end = statement_ends(script, "COMMIT;")[number - 1]
    return script[: end - len("COMMIT;\n")]


# The concurrent script's transactions: 1 the env's checks, 2 the baseline, then the unique
# pair's 3 checks, plan and guard, 4 the archive step, the build, 5 the promotion.
CONCURRENT_CUTS = [
    ("drifted", "before COMMIT 1"),
    ("drifted", "before COMMIT 2"),
    ("drifted", "before COMMIT 3"),
    ("drifted", "before COMMIT 4"),
    ("drifted", "after the build"),
    ("drifted", "before COMMIT 5"),
    ("both", "before COMMIT 3"),
    ("seedindex", "before COMMIT 3"),
]


@pytest.mark.parametrize(("state", "point"), CONCURRENT_CUTS)
def test_a_run_stopped_anywhere_completes_when_run_again(state, point, harness, scripts):
    harness.build_state(state)
    rows_before = harness.table_rows()

    result = run_psql(harness, cut(scripts["concurrent"], point))
    assert result.returncode == 0, result.stderr

    apply_script(harness, scripts["concurrent"])

    assert ledger_free(snapshot(harness)) == ledger_free(online_at_head(harness, state))
    archived = harness.rows(f"SELECT id FROM {ARCHIVE}") if state == "drifted" else []
    assert harness.table_rows().keys() | {str(row.id) for row in archived} == rows_before.keys()


@pytest.mark.parametrize("point", ["before COMMIT 2", "before COMMIT 3"])
def test_a_blocking_run_stopped_in_either_revision_completes_when_run_again(
    point, harness, scripts
):
    harness.build_state("drifted")

    error, _ = one_query(harness, cut(scripts["blocking"], point))
    assert error is None

    error, _ = one_query(harness, scripts["blocking"])
    assert error is None
    expected = ledger_free(online_at_head(harness, "drifted"))
    assert ledger_free(snapshot(harness)) == expected


def test_a_downgrade_stopped_midway_completes_when_run_again(harness, scripts):
    harness.build_state("drifted")
    apply_script(harness, scripts["concurrent"])
    with other_database(harness, "online") as on:
        on.build_state("drifted")
        online(on, "upgrade", "head")
        online(on, "downgrade", "base")
        at_base = snapshot(on)

    # The unique pair's downgrade commits, the baseline's is left open.
    result = run_psql(harness, cut(scripts["downgrade"], "before COMMIT 3"))
    assert result.returncode == 0, result.stderr
    assert harness.version() == BASELINE

    apply_script(harness, scripts["downgrade"])
    assert snapshot(harness) == at_base


def test_a_failed_concurrent_build_and_a_kept_invalid_index_are_completed(harness, scripts):
    """The build fails (a duplicate written past the guard: a replication apply worker, say)
    and leaves an INVALID index; the promotion refuses an INVALID index that IF NOT EXISTS kept
    and changes nothing; the whole script run again drops it and builds the index."""
    harness.build_state("drifted")
    script = scripts["concurrent"]
    build = script.index("-- Not schema-qualified on purpose")
    until_build, from_build = script[:build], script[build:]
    result = run_psql(harness, until_build)
    assert result.returncode == 0, result.stderr
    kept, phone = harness.rows(
        "SELECT workspace_id, phone_number_id FROM public.meta_assets_cache"
        " WHERE phone_number_id IS NOT NULL LIMIT 1"
    )[0]
    # Between the archive step and the build, the guard rejects a duplicate as the constraint
    # will.
    with pytest.raises(IntegrityError, match="meta_assets_cache_workspace_id_phone_number_id_key"):
        harness.execute(
            "INSERT INTO public.meta_assets_cache (workspace_id, phone_number_id)"
            " VALUES (:workspace, :phone)",
            workspace=kept,
            phone=phone,
        )
    harness.admin(
        "BEGIN; SET LOCAL session_replication_role = replica;"
        " INSERT INTO public.meta_assets_cache (workspace_id, phone_number_id, updated_at)"
        f" VALUES ('{kept}', '{phone}', '2020-01-01'); COMMIT"
    )

    failed = run_psql(harness, from_build)
    assert failed.returncode != 0
    assert "could not create unique index" in failed.stderr
    assert harness.invalid_indexes() == [CANONICAL_UNIQUE_NAME]

    kept_invalid = run_psql(harness, from_build)
    assert kept_invalid.returncode != 0
    assert "did not leave a valid index" in kept_invalid.stderr
    assert harness.invalid_indexes() == [CANONICAL_UNIQUE_NAME]
    assert harness.guard_exists()

    notices = apply_script(harness, script)
    assert f"dropped INVALID index {CANONICAL_UNIQUE_NAME}" in notices
    assert harness.invalid_indexes() == []
    assert not harness.guard_exists()
    assert [(u.index_name, u.valid) for u in harness.pair_uniques()] == [
        (CANONICAL_UNIQUE_NAME, True)
    ]
    assert harness.scalar(f"SELECT count(*) FROM {ARCHIVE} WHERE updated_at = '2020-01-01'") == 1


def test_a_constraint_dropped_by_hand_after_the_upgrade_is_not_built_again(harness, scripts):
    """Run again on a database at head, the script builds nothing, as `alembic upgrade head`
    does nothing there: not even where someone has since dropped the constraint by hand (the
    concurrent build then runs on a temporary stand-in)."""
    harness.build_state("drifted")
    apply_script(harness, scripts["concurrent"])
    harness.execute(f"ALTER TABLE public.meta_assets_cache DROP CONSTRAINT {CANONICAL_UNIQUE_NAME}")
    before = snapshot(harness)

    notices = apply_script(harness, scripts["concurrent"])

    assert snapshot(harness) == before
    assert notices.count(SKIPPED) == 2
    assert harness.pair_uniques() == []


def test_the_concurrent_form_sent_as_one_query_changes_nothing_then_the_blocking_form_converges(
    harness, scripts
):
    harness.build_state("drifted")
    before = snapshot(harness)

    error, _ = one_query(harness, scripts["concurrent"])

    assert error is not None and "sent as one query" in error
    assert "offline_build=blocking" in error
    assert snapshot(harness) == before
    error, _ = one_query(harness, scripts["blocking"])
    assert error is None
    expected = ledger_free(online_at_head(harness, "drifted"))
    assert ledger_free(snapshot(harness)) == expected


def test_each_form_says_at_its_top_which_it_is(scripts):
    concurrent, blocking = scripts["concurrent"], scripts["blocking"]
    assert concurrent.startswith("-- CONCURRENT form")
    assert concurrent.index("DO $one_statement_at_a_time$") < concurrent.index("BEGIN;")
    assert blocking.startswith("-- BLOCKING form")
    assert "CREATE UNIQUE INDEX CONCURRENTLY" not in blocking
    assert "offline_build=blocking" in concurrent.split("DO $")[0]
