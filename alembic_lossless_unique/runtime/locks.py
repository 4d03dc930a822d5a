"""Locks: one migrator at a time, and strong table locks taken briefly or not at all.

A statement that waits for an ACCESS EXCLUSIVE lock makes every later query on the table queue
behind it. So each strong-lock step runs under a short lock_timeout and, when it times out, rolls
back, waits, and tries again (GitLab's with_lock_retries), bounded by the settings. Every wait
names who it waits for: the blocking backend, how long its transaction has been open, what it
runs.
"""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar, cast

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from alembic_lossless_unique.runtime import drivers
from alembic_lossless_unique.runtime.database import AnyRow, Database
from alembic_lossless_unique.runtime.errors import MigrationAbort
from alembic_lossless_unique.runtime.settings import MigrationSettings

if TYPE_CHECKING:
    from alembic_lossless_unique.operations.target import UniqueTarget

log = logging.getLogger("alembic_lossless_unique")

T = TypeVar("T")

LOCK_NOT_AVAILABLE = "55P03"
# pg_advisory_lock(classid, objid): a fixed key shared by every migrator using this package.
MIGRATOR_LOCK_KEY = (1835361648, 1)

# The sessions that hold a lock on `table` and are not us: who a lock wait is waiting for.
_HOLDERS = """
SELECT a.pid, a.state, coalesce(a.application_name, '') AS application_name,
       pg_catalog.round(extract(epoch FROM pg_catalog.now() - a.xact_start)) AS seconds,
       pg_catalog.left(pg_catalog.regexp_replace(a.query, '\\s+', ' ', 'g'), 80) AS query
  FROM pg_catalog.pg_stat_activity a
 WHERE a.pid IN (SELECT l.pid FROM pg_catalog.pg_locks l
                  WHERE l.relation = pg_catalog.to_regclass(:table) AND l.granted
                    AND l.pid <> pg_catalog.pg_backend_pid())
 ORDER BY a.xact_start NULLS LAST
 LIMIT 3
"""


def is_lock_timeout(error: BaseException) -> bool:
    return drivers.sqlstate(error) == LOCK_NOT_AVAILABLE


def describe_holders(db: Database, table: str) -> str:
    """'pid 123 (idle in transaction for 310 s: SELECT ...)', or '' when nobody is seen."""
    try:
        rows = db.rows(_HOLDERS, {"table": table})
    except DBAPIError:
        return ""
    return "; ".join(describe_backend(row) for row in rows)


def describe_backend(row: AnyRow) -> str:
    how_long = f" for {row.seconds:.0f} s" if row.seconds is not None else ""
    who = f", {row.application_name}" if row.application_name else ""
    return f"pid {row.pid} ({row.state}{how_long}{who}: {row.query})"


def with_lock_retries(
    db: Database, purpose: str, table: str, step: Callable[[], T], *, qualified_table: str = ""
) -> T:
    """Run `step` in its own transaction (a savepoint inside a caller's transaction) under a
    short lock_timeout, retrying when it times out. `table` names the table in messages;
    `qualified_table` (defaults to `table`) finds who holds it."""
    settings = db.settings
    wait = settings.lock_retry_wait
    for attempt in range(1, settings.lock_retries + 1):
        try:
            with db.transaction():
                # lock_timeout bounds the wait; a role's shorter statement_timeout would cancel
                # it first with an error that is not retried. The steps are catalog changes or
                # bounded by the lock they hold, so nothing else needs the statement_timeout.
                db.scalar(
                    "SELECT pg_catalog.set_config('lock_timeout', :timeout, true),"
                    " pg_catalog.set_config('statement_timeout', '0', true)",
                    {"timeout": f"{max(1, round(settings.lock_timeout * 1000))}ms"},
                )
                return step()
        except DBAPIError as error:
            if not is_lock_timeout(error):
                raise
            holders = describe_holders(db, qualified_table or table)
            if attempt == settings.lock_retries:
                break
            log.warning(
                "%s: %s is busy (lock not granted within %s%s); attempt %d of %d, retrying in %s",
                purpose,
                table,
                format_seconds(settings.lock_timeout),
                f"; held by {holders}" if holders else "",
                attempt,
                settings.lock_retries,
                format_seconds(wait),
            )
            time.sleep(wait)
            wait = min(wait * 2, settings.lock_retry_max_wait)
    held_by = f" (held by {holders})" if holders else " (a long transaction holds it)"
    raise MigrationAbort(
        f"{purpose}: could not lock {table} within {format_seconds(settings.lock_timeout)}"
        f" in {settings.lock_retries} attempts{held_by}; nothing of this step was applied,"
        " re-run when the table is quieter or raise -x lock_retries / -x lock_timeout"
    )


def with_table_lock_retries(
    db: Database, target: "UniqueTarget", purpose: str, step: Callable[[], T]
) -> T:
    """with_lock_retries for a step on the target's table."""
    return with_lock_retries(
        db, purpose, target.display_table, step, qualified_table=target.qualified_table
    )


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:g} s"


@contextmanager
def one_migrator_at_a_time(connection: Connection, settings: MigrationSettings) -> Iterator[None]:
    """Hold a session advisory lock for the whole run; a second migrator waits, then finds the
    work done. Polls instead of blocking so that no open transaction of ours ever makes the other
    migrator's concurrent index build wait. Inside a caller's transaction, a transaction-level
    lock does the same without committing anything."""
    if connection.in_transaction():
        connection.execute(text("SELECT pg_catalog.pg_advisory_xact_lock(:a, :b)"), _key())
        yield
        return
    deadline = time.monotonic() + settings.migrator_wait
    name_before_waiting = None
    while not _try_migrator_lock(connection):
        if time.monotonic() >= deadline:
            raise MigrationAbort(
                "another migrator has held the migrator lock of this database for over"
                f" {settings.migrator_wait:g} s ({_lock_holder(connection)});"
                " let it finish, or raise -x migrator_wait"
            )
        if name_before_waiting is None:
            log.info(
                "another migrator is running on this database (%s); waiting for it to finish",
                _lock_holder(connection),
            )
            # A DBA looking at pg_stat_activity sees who is waiting, and why.
            name_before_waiting = _set_application_name(connection, WAITING_SUFFIX)
        time.sleep(0.2)
    if name_before_waiting is not None:
        _set_application_name(connection, "", replace_with=name_before_waiting)
    try:
        yield
    finally:
        try:
            connection.execute(text("SELECT pg_catalog.pg_advisory_unlock(:a, :b)"), _key())
            connection.commit()
        except DBAPIError:
            pass  # a broken session has released the lock already: it dies with the session


WAITING_SUFFIX = " (waiting for another migrator)"


def _lock_holder(connection: Connection) -> str:
    row = connection.execute(
        text(
            "SELECT a.pid, a.state, coalesce(a.application_name, '') AS application_name,"
            " pg_catalog.round(extract(epoch FROM pg_catalog.now() - a.backend_start)) AS seconds,"
            " pg_catalog.left(a.query, 80) AS query"
            " FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.classid = :a AND l.objid = :b AND l.granted"
            " LIMIT 1"
        ),
        _key(),
    ).first()
    connection.commit()
    return describe_backend(row) if row is not None else "its session is gone"


def _set_application_name(connection: Connection, suffix: str, replace_with: str = "") -> str:
    """Append `suffix` to application_name (or set it to `replace_with`); return the old name."""
    previous = cast(  # application_name is always set, if only to ''
        str,
        connection.execute(text("SELECT pg_catalog.current_setting('application_name')")).scalar(),
    )
    connection.execute(
        text("SELECT pg_catalog.set_config('application_name', :name, false)"),
        {"name": (replace_with or previous) + suffix},
    )
    connection.commit()
    return previous


def _try_migrator_lock(connection: Connection) -> bool:
    acquired = connection.execute(
        text("SELECT pg_catalog.pg_try_advisory_lock(:a, :b)"), _key()
    ).scalar()
    connection.commit()
    return bool(acquired)


def _key() -> dict[str, int]:
    return {"a": MIGRATOR_LOCK_KEY[0], "b": MIGRATOR_LOCK_KEY[1]}
