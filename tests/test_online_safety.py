"""Online and fault tolerant: writers keep writing, strong locks are short and retried, a crash
anywhere converges on re-run, races are archived, and one migrator works at a time.

Every interruption is driven by a lock or snapshot that the test holds, never by a sleep."""

import threading
import time

import psycopg2
import pytest

from alembic_lossless_unique.runtime.locks import WAITING_SUFFIX
from app.names import ARCHIVE, CANONICAL_UNIQUE_NAME
from app.unique_pair import TARGET
from tests.online_support import (
    A_LOSER,
    APPLICATION_NAME,
    DEDUPE_QUERY,
    SURVIVORS,
    Session,
    assert_canonical,
    assert_rows_conserved,
    build_phase,
    crash_migrator,
    holding,
    ledger_actions,
    libpq_dsn,
    migrator_waiting_on_lock,
    start_alembic,
    wait_until,
)
from tests.support import BASELINE, failed_lines, succeed

pytestmark = pytest.mark.slow

# Longer than the 50 ms statement_timeout these tests put on the migrator's role: a wait that
# outlasts it would have been cancelled had the migrator not lifted it.
OUTLAST_STATEMENT_TIMEOUT = 0.3


@pytest.fixture
def drifted(harness):
    """A drifted table at revision 0001; returns its rows and the rows the dedupe must keep."""
    harness.build_state("drifted")
    harness.upgrade(BASELINE)
    return harness.table_rows(), {row[0] for row in harness.rows(SURVIVORS)}


def session(harness, **kwargs) -> Session:
    return Session(libpq_dsn(harness.url), **kwargs)


def old_snapshot(harness) -> Session:
    """A transaction holding a snapshot of the table: a concurrent build waits for it to end
    ("waiting for old snapshots"), though it blocks no read or write."""
    return holding(
        harness,
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "SELECT count(*) FROM public.meta_assets_cache",
    )


def migrator(harness, *args: str, env: dict[str, str] | None = None):
    return start_alembic(*args, env={"DATABASE_URL": harness.url, **(env or {})})


# 1. Writers are never stalled.


@pytest.mark.pg18
def test_writes_keep_succeeding_during_upgrade(harness):
    harness.build_state("drifted", keys=50_000)
    harness.upgrade(BASELINE)
    rows_before = harness.table_rows()
    workspace = harness.scalar("SELECT id::text FROM public.workspaces ORDER BY id LIMIT 1")
    survivor = harness.scalar(f"SELECT id FROM ({SURVIVORS}) s ORDER BY id LIMIT 1")
    stop, errors, written, during = threading.Event(), [], [], []
    upgrading = threading.Event()

    def write() -> None:
        # Supabase's API roles run with an 8 s statement_timeout: a stalled write fails.
        app = session(harness, options="-c statement_timeout=8s")
        try:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if n % 5 == 0:
                        app.run(
                            "UPDATE public.meta_assets_cache SET last_error = %s WHERE id = %s",
                            f"write {n}",
                            survivor,
                        )
                    else:
                        phone = None if n % 7 == 0 else f"writer-{n}"
                        row_id = app.run(
                            "INSERT INTO public.meta_assets_cache (workspace_id, phone_number_id)"
                            " VALUES (%s, %s) RETURNING id::text",
                            workspace,
                            phone,
                        )[0][0]
                        written.append(row_id)
                    if upgrading.is_set():
                        during.append(n)
                except Exception as error:  # any failed write fails the test
                    errors.append(f"{type(error).__name__}: {error}")
                time.sleep(0.005)
        finally:
            app.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    wait_until("the writer to start", lambda: written)
    upgrading.set()
    result = harness.cli("upgrade", "head")
    upgrading.clear()
    wait_until("a write after the upgrade", lambda: len(written) > len(during))
    stop.set()
    writer.join(timeout=30)

    succeed(result)
    assert errors == []
    assert during, "the writer wrote nothing while the upgrade ran"
    table_ids = {row[0] for row in harness.rows("SELECT id::text FROM public.meta_assets_cache")}
    assert set(written) <= table_ids  # the writer's rows are all new keys: none archived
    assert [(u.index_name, u.constraint_name, u.valid) for u in harness.pair_uniques()] == [
        (CANONICAL_UNIQUE_NAME, CANONICAL_UNIQUE_NAME, True)
    ]
    assert harness.invalid_indexes() == []
    archived = {row[0] for row in harness.rows(f"SELECT id::text FROM {ARCHIVE}")}
    assert archived and archived <= rows_before.keys()
    assert table_ids | archived == rows_before.keys() | set(written)


# 2. Strong locks are short and retried.


def test_busy_table_gives_up_cleanly_and_a_rerun_converges(harness, drifted):
    rows_before, survivors = drifted
    reader = holding(harness, "LOCK TABLE public.meta_assets_cache IN ACCESS SHARE MODE")
    try:
        result = harness.cli(
            "-x", "lock_timeout=100ms", "-x", "lock_retries=2", "-x", "lock_retry_wait=50ms",
            "upgrade", "head",
        )  # fmt: skip
        assert result.returncode != 0
        assert "Traceback" not in result.output
        [failed] = failed_lines(result)
        assert "could not lock public.meta_assets_cache within 100 ms in 2 attempts" in failed
        assert harness.version() == BASELINE
        assert harness.invalid_indexes() == []
        assert_rows_conserved(harness, rows_before)
    finally:
        reader.rollback()
        reader.close()

    succeed(harness.cli("upgrade", "head"))
    assert_canonical(harness, rows_before, survivors)
    succeed(harness.cli("downgrade", "-1"))
    assert harness.table_rows() == rows_before


def test_app_queries_pass_while_the_migrator_retries(harness, drifted):
    rows_before, survivors = drifted
    reader = holding(harness, "LOCK TABLE public.meta_assets_cache IN ACCESS SHARE MODE")
    running = migrator(
        harness,
        "-x", "lock_timeout=200ms", "-x", "lock_retries=1000",
        "-x", "lock_retry_wait=50ms", "-x", "lock_retry_max_wait=50ms",
        "upgrade", "head",
    )  # fmt: skip
    try:
        wait_until(
            "the promotion to queue for its lock",
            lambda: migrator_waiting_on_lock(harness, "ALTER TABLE%"),
            migrator=running,
        )
        # Queued behind the migrator's lock request for at most one lock_timeout; a guard
        # timeout turns an unbounded wait into a failure instead of a hang.
        app = session(harness, options="-c statement_timeout=20s")
        workspace = harness.scalar("SELECT id::text FROM public.workspaces ORDER BY id LIMIT 1")
        new_id = app.run(
            "INSERT INTO public.meta_assets_cache (workspace_id, phone_number_id)"
            " VALUES (%s, 'pn-during-retries') RETURNING id::text",
            workspace,
        )[0][0]
        assert app.run("SELECT count(*) FROM public.meta_assets_cache")[0][0] > 0
        app.close()
        # The insert passed once the first attempt gave up; holding the reader until the next
        # attempt queues lets the first one name its holder before the holder leaves.
        wait_until(
            "the promotion to try again",
            lambda: migrator_waiting_on_lock(harness, "ALTER TABLE%"),
            migrator=running,
        )
    finally:
        reader.rollback()
        reader.close()
    result = running.wait()

    succeed(result)
    assert "is busy (lock not granted within 200 ms; held by pid " in result.output
    rows_before[new_id] = harness.table_rows()[new_id]
    assert_canonical(harness, rows_before, survivors | {new_id})


def test_role_statement_timeout_does_not_break_dedupe_or_build(harness, drifted):
    rows_before, survivors = drifted
    loser = harness.scalar(A_LOSER)
    snapshot = old_snapshot(harness)
    row_lock = holding(
        harness, f"SELECT 1 FROM public.meta_assets_cache WHERE id = '{loser}' FOR UPDATE"
    )
    running = migrator(harness, "upgrade", "head", env={"PGOPTIONS": "-c statement_timeout=50ms"})
    try:
        wait_until(
            "the dedupe to wait for the locked row",
            lambda: migrator_waiting_on_lock(harness, DEDUPE_QUERY),
            migrator=running,
        )
        time.sleep(OUTLAST_STATEMENT_TIMEOUT)
        row_lock.rollback()
        wait_until(
            "the build to wait for the old snapshot",
            lambda: build_phase(harness, "waiting for old snapshots"),
            migrator=running,
        )
        time.sleep(OUTLAST_STATEMENT_TIMEOUT)
    finally:
        row_lock.rollback()
        snapshot.rollback()
        row_lock.close()
        snapshot.close()
    succeed(running.wait())
    assert_canonical(harness, rows_before, survivors)


def test_role_statement_timeout_does_not_turn_lock_waits_into_errors(harness, drifted):
    rows_before, survivors = drifted
    reader = holding(harness, "LOCK TABLE public.meta_assets_cache IN ACCESS SHARE MODE")
    try:
        result = harness.cli(
            "-x", "lock_timeout=200ms", "-x", "lock_retries=2", "-x", "lock_retry_wait=50ms",
            "upgrade", "head",
            env={"PGOPTIONS": "-c statement_timeout=50ms"},
        )  # fmt: skip
    finally:
        reader.rollback()
        reader.close()
    assert result.returncode != 0
    [failed] = failed_lines(result)
    assert "could not lock public.meta_assets_cache within 200 ms in 2 attempts" in failed
    assert harness.invalid_indexes() == []
    assert_rows_conserved(harness, rows_before)
    succeed(harness.cli("upgrade", "head", env={"PGOPTIONS": "-c statement_timeout=50ms"}))
    assert_canonical(harness, rows_before, survivors)


# 3. A crash anywhere converges on re-run.


def _rerun_converges_and_downgrades_exactly(harness, rows_before, survivors, schema_before):
    succeed(harness.cli("upgrade", "head"))
    assert_canonical(harness, rows_before, survivors)
    assert ledger_actions(harness).count("found") == 1
    harness.check()
    succeed(harness.cli("downgrade", "-1"))
    assert harness.table_rows() == rows_before
    assert harness.schema_dump() == schema_before


def test_crash_during_dedupe_converges(harness, drifted):
    rows_before, survivors = drifted
    schema_before = harness.schema_dump()
    loser = harness.scalar(A_LOSER)
    row_lock = holding(
        harness, f"SELECT 1 FROM public.meta_assets_cache WHERE id = '{loser}' FOR UPDATE"
    )
    try:
        running = migrator(harness, "upgrade", "head")
        wait_until(
            "the dedupe to wait for the locked row",
            lambda: migrator_waiting_on_lock(harness, DEDUPE_QUERY),
            migrator=running,
        )
        crash_migrator(harness, running)
    finally:
        row_lock.rollback()
        row_lock.close()
    assert harness.version() == BASELINE
    assert harness.scalar(f"SELECT count(*) FROM {ARCHIVE}") == 0  # the dedupe rolled back
    assert harness.scalar("SELECT to_regclass(:name) IS NULL", name=TARGET.work)
    assert_rows_conserved(harness, rows_before)

    _rerun_converges_and_downgrades_exactly(harness, rows_before, survivors, schema_before)


def test_crash_during_concurrent_build_converges(harness, drifted):
    rows_before, survivors = drifted
    schema_before = harness.schema_dump()
    snapshot = old_snapshot(harness)
    try:
        running = migrator(harness, "upgrade", "head")
        wait_until(
            "the build to wait for the old snapshot",
            lambda: build_phase(harness, "waiting for old snapshots"),
            migrator=running,
        )
        crash_migrator(harness, running)
    finally:
        snapshot.rollback()
        snapshot.close()
    assert harness.invalid_indexes() == [CANONICAL_UNIQUE_NAME]  # the crash left it half-built
    assert_rows_conserved(harness, rows_before)

    _rerun_converges_and_downgrades_exactly(harness, rows_before, survivors, schema_before)


def test_crash_between_build_and_promotion_converges(harness, drifted):
    rows_before, survivors = drifted
    schema_before = harness.schema_dump()
    reader = holding(harness, "LOCK TABLE public.meta_assets_cache IN ACCESS SHARE MODE")
    try:
        running = migrator(harness, "-x", "lock_timeout=10min", "upgrade", "head")
        wait_until(
            "the promotion to wait for its lock",
            lambda: migrator_waiting_on_lock(harness, "ALTER TABLE%"),
            migrator=running,
        )
        crash_migrator(harness, running)
    finally:
        reader.rollback()
        reader.close()
    assert [(u.index_name, u.constraint_name, u.valid) for u in harness.pair_uniques()] == [
        (CANONICAL_UNIQUE_NAME, None, True)
    ]
    assert_rows_conserved(harness, rows_before)

    _rerun_converges_and_downgrades_exactly(harness, rows_before, survivors, schema_before)


# 4. A duplicate that arrives during the build is archived, and the build retried.


def a_kept_row(harness):
    """A row the dedupe keeps: its key is the one a new duplicate will repeat."""
    return harness.rows(
        "SELECT id::text, workspace_id::text, phone_number_id FROM public.meta_assets_cache"
        f" WHERE id::text IN ({SURVIVORS}) ORDER BY id LIMIT 1"
    )[0]


INSERT_DUPLICATE = (
    "INSERT INTO public.meta_assets_cache (workspace_id, phone_number_id, updated_at)"
    " VALUES (%s, %s, timestamptz '2000-01-01') RETURNING id::text"
)


def test_a_duplicate_arriving_during_the_build_is_rejected_by_the_guard(harness, drifted):
    """From the dedupe on, the table rejects a new duplicate key as the constraint will: with
    unique_violation naming the constraint. The build succeeds the first time."""
    rows_before, survivors = drifted
    kept = a_kept_row(harness)
    snapshot = old_snapshot(harness)
    try:
        running = migrator(harness, "upgrade", "head")
        wait_until(
            "the build to wait for the old snapshot",
            lambda: build_phase(harness, "waiting for old snapshots"),
            migrator=running,
        )
        app = session(harness)
        with pytest.raises(psycopg2.errors.UniqueViolation) as rejected:
            app.run(INSERT_DUPLICATE, kept.workspace_id, kept.phone_number_id)
        app.close()
    finally:
        snapshot.rollback()
        snapshot.close()
    succeed(running.wait())

    assert rejected.value.diag.constraint_name == CANONICAL_UNIQUE_NAME
    assert ledger_actions(harness).count("built") == 1
    assert_canonical(harness, rows_before, survivors)
    assert not harness.guard_exists()


def test_a_duplicate_past_the_guard_is_archived_and_the_build_retried(harness, drifted):
    """A writer the guard does not see (a replication apply worker: session_replication_role
    = replica) inserts a duplicate between the dedupe and the build; the build fails on it, the
    duplicate is archived like any other and the build runs again."""
    rows_before, survivors = drifted
    kept = a_kept_row(harness)
    loser = harness.scalar(A_LOSER)
    # Holds the move (it waits for this row) so that the writer below can start in between.
    row_lock = holding(
        harness, f"SELECT 1 FROM public.meta_assets_cache WHERE id = '{loser}' FOR UPDATE"
    )
    replica = Session(libpq_dsn(harness.server.url_string(harness.dbname)), autocommit=False)
    try:
        running = migrator(harness, "upgrade", "head")
        wait_until(
            "the move to wait for the locked row",
            lambda: migrator_waiting_on_lock(harness, DEDUPE_QUERY),
            migrator=running,
        )
        replica.run("SET LOCAL session_replication_role = replica")
        late = replica.run(INSERT_DUPLICATE, kept.workspace_id, kept.phone_number_id)[0][0]
        row_lock.rollback()
        wait_until(
            "the build to wait for the open writer",
            lambda: build_phase(harness, "waiting for writers before build"),
            migrator=running,
        )
        replica.commit()
    finally:
        row_lock.rollback()
        row_lock.close()
        replica.rollback()
        replica.close()
    result = running.wait()

    succeed(result)
    assert "a duplicate arrived during the build" in result.output
    assert ledger_actions(harness).count("built") == 2
    assert harness.rows(f"SELECT kept_id::text FROM {ARCHIVE} WHERE id = :id", id=late) == [
        (kept.id,)
    ]
    assert_canonical(harness, {**rows_before, late: ""}, survivors)


# 5. One migrator at a time.


def test_two_migrators_started_together_do_the_work_once(harness, drifted):
    rows_before, survivors = drifted
    snapshot = old_snapshot(harness)
    try:
        both = [migrator(harness, "upgrade", "head") for _ in range(2)]
        building = wait_until(
            "one migrator to be building",
            lambda: build_phase(harness, "waiting for old snapshots"),
        )
        wait_until(
            "the other migrator to wait for the migrator lock",
            lambda: harness.rows(
                "SELECT pid FROM pg_stat_activity WHERE application_name = :name"
                f" AND pid <> {building[0].pid}",
                name=APPLICATION_NAME + WAITING_SUFFIX,
            ),
        )
    finally:
        snapshot.rollback()
        snapshot.close()
    results = [running.wait() for running in both]

    for result in results:
        succeed(result)
    assert any("another migrator is running" in result.output for result in results)
    actions = ledger_actions(harness)
    assert actions.count("found") == 1 and actions.count("built") == 1
    assert_canonical(harness, rows_before, survivors)


def test_progress_names_the_backend_the_build_waits_for(harness, drifted):
    """A DBA watching the log sees whom the concurrent build waits for: the pid, how long its
    transaction has been open, and what it runs."""
    snapshot = old_snapshot(harness)
    blocker = snapshot.pid()
    try:
        running = migrator(harness, "-x", "progress_interval=0.2", "upgrade", "head")
        wait_until(
            "the build to wait for the old snapshot",
            lambda: build_phase(harness, "waiting for old snapshots"),
            migrator=running,
        )
        time.sleep(0.6)  # a few progress intervals: the report is periodic by design
    finally:
        snapshot.rollback()
        snapshot.close()
    result = running.wait()

    succeed(result)
    [line] = [line for line in result.output.splitlines() if f"waiting for pid {blocker} " in line][
        :1
    ]
    assert "building meta_assets_cache_workspace_id_phone_number_id_key: waiting for" in line
    assert "(idle in transaction for " in line and "test session: SELECT" in line
