"""Locks: one migrator at a time, and strong table locks taken briefly or not at all.

A statement that waits for an ACCESS EXCLUSIVE lock makes every later query on the table queue
behind it. So each strong-lock step runs under a short lock_timeout and, when it times out, rolls
back, waits, and tries again (GitLab's with_lock_retries), bounded by the settings.
"""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from alembic_lossless_unique.database import Database
from alembic_lossless_unique.errors import MigrationAbort
from alembic_lossless_unique.names import TABLE
from alembic_lossless_unique.settings import MigrationSettings

log = logging.getLogger("meta_assets")

T = TypeVar("T")

LOCK_NOT_AVAILABLE = "55P03"
# pg_advisory_lock(classid, objid): a fixed key shared by every migrator of this package.
MIGRATOR_LOCK_KEY = (1835361648, 1)  # b"mete" as int4: "meta_assets_cache migrations"


def is_lock_timeout(error: BaseException) -> bool:
    return getattr(getattr(error, "orig", None), "pgcode", None) == LOCK_NOT_AVAILABLE


def with_lock_retries(db: Database, purpose: str, step: Callable[[], T]) -> T:
    """Run `step` in its own transaction under a short lock_timeout, retrying when it times out."""
    settings = db.settings
    wait = settings.lock_retry_wait
    for attempt in range(1, settings.lock_retries + 1):
        try:
            with db.transaction():
                # lock_timeout bounds the wait; a role's shorter statement_timeout would cancel
                # it first with an error that is not retried. The steps themselves are
                # catalog-only, so nothing else needs the statement_timeout.
                db.scalar(
                    "SELECT set_config('lock_timeout', :timeout, true),"
                    " set_config('statement_timeout', '0', true)",
                    {"timeout": f"{max(1, round(settings.lock_timeout * 1000))}ms"},
                )
                return step()
        except DBAPIError as error:
            if not is_lock_timeout(error):
                raise
            if attempt == settings.lock_retries:
                break
            log.warning(
                "%s: %s is busy (lock not granted within %s); attempt %d of %d, retrying in %.1f s",
                purpose,
                TABLE,
                _format_seconds(settings.lock_timeout),
                attempt,
                settings.lock_retries,
                wait,
            )
            time.sleep(wait)
            wait = min(wait * 2, settings.lock_retry_max_wait)
    raise MigrationAbort(
        f"{purpose}: could not lock {TABLE} within {_format_seconds(settings.lock_timeout)}"
        f" in {settings.lock_retries} attempts (a long transaction holds it);"
        " nothing of this step was applied, re-run when the table is quieter"
        " or raise -x lock_retries / -x lock_timeout"
    )


def _format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:g} s"


@contextmanager
def one_migrator_at_a_time(connection: Connection, settings: MigrationSettings) -> Iterator[None]:
    """Hold a session advisory lock for the whole run; a second migrator waits, then finds the
    work done. Polls instead of blocking so that no open transaction of ours ever makes the other
    migrator's concurrent index build wait. Inside a caller's transaction, a transaction-level
    lock does the same without committing anything."""
    if connection.in_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:a, :b)"), _key())
        yield
        return
    deadline = time.monotonic() + settings.migrator_wait
    name_before_waiting = None
    while not _try_migrator_lock(connection):
        if time.monotonic() >= deadline:
            raise MigrationAbort(
                f"another migration of {TABLE} has held the migrator lock for over"
                f" {settings.migrator_wait:g} s; let it finish, or raise -x migrator_wait"
            )
        if name_before_waiting is None:
            log.info("another migrator is running on this database; waiting for it to finish")
            # A DBA looking at pg_stat_activity sees who is waiting, and why.
            name_before_waiting = _set_application_name(connection, WAITING_SUFFIX)
        time.sleep(0.2)
    if name_before_waiting is not None:
        _set_application_name(connection, "", replace_with=name_before_waiting)
    try:
        yield
    finally:
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:a, :b)"), _key())
            connection.commit()
        except DBAPIError:
            pass  # a broken session has released the lock already: it dies with the session


WAITING_SUFFIX = " (waiting for another migrator)"


def _set_application_name(connection: Connection, suffix: str, replace_with: str = "") -> str:
    """Append `suffix` to application_name (or set it to `replace_with`); return the old name."""
    previous = connection.execute(text("SELECT current_setting('application_name')")).scalar()
    connection.execute(
        text("SELECT set_config('application_name', :name, false)"),
        {"name": (replace_with or previous) + suffix},
    )
    connection.commit()
    return previous


def _try_migrator_lock(connection: Connection) -> bool:
    acquired = connection.execute(text("SELECT pg_try_advisory_lock(:a, :b)"), _key()).scalar()
    connection.commit()
    return bool(acquired)


def _key() -> dict[str, int]:
    return {"a": MIGRATOR_LOCK_KEY[0], "b": MIGRATOR_LOCK_KEY[1]}
