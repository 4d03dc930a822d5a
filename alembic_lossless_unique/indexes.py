"""Index and constraint mechanics that never block the app's writes for longer than a lock timeout.

Concurrent builds and drops take SHARE UPDATE EXCLUSIVE, which reads and writes pass through;
they wait for old transactions instead, so they run without statement_timeout or lock_timeout.
Catalog-only changes (promote, rename, drop a constraint) take ACCESS EXCLUSIVE briefly, under
with_lock_retries.
"""

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from alembic_lossless_unique.catalog import index_is_valid
from alembic_lossless_unique.database import Database
from alembic_lossless_unique.errors import MigrationAbort
from alembic_lossless_unique.locks import with_lock_retries
from alembic_lossless_unique.names import PAIR, TABLE

log = logging.getLogger("meta_assets")


def unique_pair_index_definition(db: Database, name: str) -> str:
    columns = ", ".join(db.quote(column) for column in PAIR)
    return f"CREATE UNIQUE INDEX {db.quote(name)} ON {TABLE} USING btree ({columns})"


def concurrently(definition: str) -> str:
    """pg_get_indexdef() text -> the same index, built without blocking writes."""
    for prefix in ("CREATE UNIQUE INDEX ", "CREATE INDEX "):
        if definition.startswith(prefix):
            return prefix + "CONCURRENTLY " + definition[len(prefix) :]
    raise MigrationAbort(f"cannot rebuild an index from an unexpected definition: {definition}")


def _concurrently_if_possible(db: Database, definition: str) -> str:
    return concurrently(definition) if db.concurrent else definition


@contextmanager
def without_timeouts(db: Database) -> Iterator[None]:
    with db.session_setting("statement_timeout", "0"), db.session_setting("lock_timeout", "0"):
        yield


def create_index_concurrently(db: Database, name: str, definition: str) -> None:
    """Make sure a valid index `name` exists, building it concurrently if needed.

    A failed or killed concurrent build leaves an INVALID index behind that IF NOT EXISTS would
    silently keep, so an invalid one is dropped and built again.
    """
    valid = index_is_valid(db, name)
    if valid:
        return
    if valid is False:
        log.info("dropping INVALID index %s left by an interrupted build", name)
        drop_index_concurrently(db, name)
    with without_timeouts(db), build_progress(db, name):
        db.execute(_concurrently_if_possible(db, definition))


def drop_index_concurrently(db: Database, name: str) -> None:
    concurrently_keyword = "CONCURRENTLY " if db.concurrent else ""
    with without_timeouts(db):
        db.execute(f"DROP INDEX {concurrently_keyword}IF EXISTS public.{db.quote(name)}")


def set_index_comment(db: Database, name: str, comment: str | None) -> None:
    db.execute(
        f"COMMENT ON INDEX public.{db.quote(name)} IS "
        + ("NULL" if comment is None else ":comment"),
        {"comment": comment} if comment is not None else None,
    )


def promote_index_to_constraint(db: Database, index_name: str, constraint_name: str) -> None:
    """ADD CONSTRAINT ... UNIQUE USING INDEX: a catalog change, no scan; renames the index."""

    def promote() -> None:
        db.execute(
            f"ALTER TABLE {TABLE} ADD CONSTRAINT {db.quote(constraint_name)}"
            f" UNIQUE USING INDEX {db.quote(index_name)}"
        )

    with_lock_retries(db, f"promote index {index_name} to constraint {constraint_name}", promote)


def drop_constraint(db: Database, name: str) -> None:
    def drop() -> None:
        db.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS {db.quote(name)}")

    with_lock_retries(db, f"drop constraint {name}", drop)


def rename_constraint(db: Database, old: str, new: str) -> None:
    def rename() -> None:
        db.execute(f"ALTER TABLE {TABLE} RENAME CONSTRAINT {db.quote(old)} TO {db.quote(new)}")

    with_lock_retries(db, f"rename constraint {old} to {new}", rename)


@contextmanager
def build_progress(db: Database, index_name: str) -> Iterator[None]:
    """Report pg_stat_progress_create_index from a second connection while a build runs."""
    if not db.concurrent:
        yield
        return
    backend_pid = db.scalar("SELECT pg_backend_pid()")
    stop = threading.Event()

    def report() -> None:
        try:
            with db.connection.engine.connect() as watcher:
                watcher.execution_options(isolation_level="AUTOCOMMIT")
                while not stop.wait(db.settings.progress_interval):
                    row = watcher.execute(_PROGRESS, {"pid": backend_pid}).first()
                    if row is not None:
                        log.info("building %s: %s%s", index_name, row.phase, row.done)
        except Exception as error:  # progress is a courtesy: never let it break the build
            log.debug("build progress unavailable: %s", error)

    watcher_thread = threading.Thread(target=report, name="index-build-progress", daemon=True)
    watcher_thread.start()
    try:
        yield
    finally:
        stop.set()
        watcher_thread.join(timeout=5)


_PROGRESS = text(
    "SELECT phase, CASE WHEN blocks_total > 0"
    " THEN format(' (%s%% of blocks)', round(100.0 * blocks_done / blocks_total))"
    " WHEN tuples_total > 0"
    " THEN format(' (%s%% of tuples)', round(100.0 * tuples_done / tuples_total))"
    " ELSE '' END AS done"
    " FROM pg_stat_progress_create_index WHERE pid = :pid"
)
