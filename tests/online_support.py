"""Helpers for the online-safety tests: a migrator in a child process, sessions that hold locks,
and the facts an interrupted or contended run must still satisfy."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from alembic_lossless_unique.operations import convergence
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.settings import MigrationSettings
from app.names import ARCHIVE, CANONICAL_UNIQUE_NAME, UNIQUE_PAIR_LEDGER
from tests.support import PROJECT_ROOT, AlembicResult

APPLICATION_NAME = "alembic meta_assets_cache"
# The dedupe's statement, as pg_stat_activity shows it while it waits for a row lock.
# The dedupe's move (a plpgsql block), as pg_stat_activity shows it while it waits for a row lock.
DEDUPE_QUERY = "DO $move$%"
# How long a test waits for the migrator to reach a state the test has arranged. A guard
# against hanging, not a measurement: reaching the state sooner or later is not asserted.
STATE_WAIT = 60.0

# Per (workspace_id, phone_number_id) the newest row survives; the others are archived.
SURVIVORS = """
SELECT DISTINCT ON (workspace_id, phone_number_id) id::text
  FROM public.meta_assets_cache WHERE phone_number_id IS NOT NULL
 ORDER BY workspace_id, phone_number_id,
          updated_at DESC, last_synced_at DESC NULLS LAST, id DESC
"""
# A row the dedupe will archive: a duplicate that is not the newest of its pair.
A_LOSER = f"""
SELECT id::text FROM public.meta_assets_cache
 WHERE phone_number_id IS NOT NULL AND id::text NOT IN ({SURVIVORS})
 ORDER BY id LIMIT 1
"""


def wait_until(
    description: str,
    predicate: Callable[[], object],
    timeout: float = STATE_WAIT,
    *,
    migrator: "Migrator | None" = None,
):
    """Poll until predicate() is truthy and return its value; fail the test if it never is, or
    if `migrator` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if migrator is not None and not migrator.running():
            result = migrator.wait()
            raise AssertionError(
                f"the migrator exited ({result.returncode}) before {description}:\n" + result.output
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {description}")
        time.sleep(0.02)


class Session:
    """A psycopg2 session of the app or of an operator, outside the migrator."""

    def __init__(self, dsn: str, *, autocommit: bool = True, options: str = "") -> None:
        self.connection = psycopg2.connect(
            dsn, application_name="test session", options=options or None
        )
        self.connection.autocommit = autocommit

    def run(self, sql: str, *params) -> list[tuple]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params or None)
            return cursor.fetchall() if cursor.description else []

    def pid(self) -> int:
        return self.run("SELECT pg_backend_pid()")[0][0]

    def commit(self) -> None:
        self.connection.commit()

    def rollback(self) -> None:
        self.connection.rollback()

    def close(self) -> None:
        self.connection.close()


def libpq_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg2://", "postgresql://")


@dataclass
class Migrator:
    """`alembic ARGS` running in a child process that the test may kill."""

    process: subprocess.Popen

    def wait(self, timeout: float = 120) -> AlembicResult:
        stdout, stderr = self.process.communicate(timeout=timeout)
        return AlembicResult(self.process.returncode, stdout, stderr)

    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=30)


def start_alembic(*args: str, env: dict[str, str], cwd: Path = PROJECT_ROOT) -> Migrator:
    """`alembic ARGS` in a child process that the test may kill."""
    process = subprocess.Popen(
        [sys.executable, "-m", "alembic", *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    return Migrator(process)


def holding(harness, *statements: str) -> Session:
    """A session inside an open transaction that has run `statements`."""
    held = Session(libpq_dsn(harness.url), autocommit=False)
    for statement in statements:
        held.run(statement)
    return held


@contextmanager
def migrating_while_held(
    harness, lock: str, migrate: Callable[[], None], waiting_in: str = "%"
) -> Iterator[tuple[Session, list[BaseException]]]:
    """`migrate` in a thread while the app holds the row locks of `lock` (a SELECT ... FOR
    UPDATE): yields (the app's session, the list that gets the thread's failure) once the
    migrator waits on it in a statement LIKE `waiting_in`; then the app lets go, and the thread
    is joined."""
    holder = holding(harness, lock)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            migrate()
        except BaseException as error:  # the test thread reports it
            failure.append(error)

    migrator = threading.Thread(target=run, daemon=True)
    migrator.start()
    try:
        wait_until(
            "the migrator to wait for the app's row lock",
            lambda: (
                failure
                or harness.rows(
                    "SELECT 1 FROM pg_stat_activity WHERE :pid = ANY (pg_blocking_pids(pid))"
                    " AND query LIKE :waiting_in",
                    pid=holder.pid(),
                    waiting_in=waiting_in,
                )
            ),
        )
        assert not failure, failure
        yield holder, failure
    finally:
        holder.rollback()
        holder.close()
        migrator.join(timeout=120)


def migrator_backends(
    harness, condition: str = "true", application: str = APPLICATION_NAME
) -> list:
    """The migrator's server backends (its main session and any progress watcher), found by
    the application_name its env.py gives them."""
    return harness.rows(
        "SELECT pid, state, wait_event_type, wait_event, query FROM pg_stat_activity"
        f" WHERE application_name = :name AND datname = current_database() AND ({condition})",
        name=application,
    )


def migrator_waiting_on_lock(harness, query_like: str, application: str = APPLICATION_NAME) -> list:
    condition = f"wait_event_type = 'Lock' AND query ILIKE '{query_like}'"
    return migrator_backends(harness, condition, application)


def build_phase(harness, phase_like: str, application: str = APPLICATION_NAME) -> list:
    """The migrator's concurrent index build, when it is in the given phase."""
    return harness.rows(
        "SELECT p.pid, p.phase FROM pg_stat_progress_create_index p"
        " JOIN pg_stat_activity a ON a.pid = p.pid"
        " WHERE a.application_name = :name AND p.phase LIKE :phase",
        name=application,
        phase=phase_like,
    )


def crash_migrator(harness, migrator: Migrator, application: str = APPLICATION_NAME) -> None:
    """SIGKILL the client, then end its server backends as a crashed host's would end."""
    migrator.kill()
    for backend in migrator_backends(harness, application=application):
        harness.scalar("SELECT pg_terminate_backend(:pid)", pid=backend.pid)
    wait_until(
        "the killed migrator's backends to go",
        lambda: not migrator_backends(harness, application=application),
    )


# Facts every finished run must satisfy.


def ids(harness, table: str) -> list[str]:
    return [row[0] for row in harness.rows(f"SELECT id::text FROM {table}")]


def assert_canonical(harness, rows_before: dict[str, str], survivors: set[str]) -> None:
    """One valid canonical constraint, no INVALID index, and the table plus the archive hold
    exactly the original rows: survivors unchanged, every other keyed duplicate archived once."""
    assert [(u.index_name, u.constraint_name, u.valid) for u in harness.pair_uniques()] == [
        (CANONICAL_UNIQUE_NAME, CANONICAL_UNIQUE_NAME, True)
    ]
    assert harness.invalid_indexes() == []
    assert_rows_conserved(harness, rows_before)
    kept_keyed = {
        row[0]
        for row in harness.rows(
            "SELECT id::text FROM public.meta_assets_cache WHERE phone_number_id IS NOT NULL"
        )
    }
    assert kept_keyed == survivors
    rows_after = harness.table_rows()
    assert all(rows_after[row_id] == rows_before[row_id] for row_id in rows_after)


def assert_rows_conserved(harness, rows_before: dict[str, str]) -> None:
    """No row lost, none invented, none archived twice."""
    table_ids = ids(harness, "public.meta_assets_cache")
    archive_ids = (
        ids(harness, ARCHIVE) if harness.scalar("SELECT to_regclass(:n)", n=ARCHIVE) else []
    )
    assert len(archive_ids) == len(set(archive_ids))
    assert set(table_ids).isdisjoint(archive_ids)
    assert sorted(table_ids + archive_ids) == sorted(rows_before)


def ledger_actions(harness) -> list[str]:
    if not harness.scalar("SELECT to_regclass(:n)", n=UNIQUE_PAIR_LEDGER):
        return []
    return [row[0] for row in harness.rows(f"SELECT action FROM {UNIQUE_PAIR_LEDGER} ORDER BY seq")]


def converge(harness, target, settings=None) -> None:
    """The upgrade's story for `target`, on a session of the migrator's, as the operation runs
    it online."""
    with harness.engine.connect() as connection:
        db = Database(connection, settings or MigrationSettings())
        convergence.ensure_unique_constraint(db, target)


def undo_with_the_revision(harness, target, settings=None) -> None:
    """The downgrade's story for `target`, as alembic runs it: prepared online, finished in the
    transaction that would move the revision back (committed here)."""
    settings = settings or MigrationSettings()

    @contextmanager
    def online():
        with harness.engine.connect() as connection:
            yield Database(connection, settings)

    with harness.engine.connect() as autocommit:
        connection = autocommit.execution_options(isolation_level="READ COMMITTED")
        with connection.begin():
            convergence.run_undo(
                target,
                online=online,
                in_transaction=lambda: Database(connection, settings, concurrent=False),
            )
