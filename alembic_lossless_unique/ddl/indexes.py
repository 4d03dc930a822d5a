"""Index and constraint mechanics that never block the app's writes for longer than a lock timeout.

Concurrent builds take SHARE UPDATE EXCLUSIVE, which reads and writes pass through; they wait
for old transactions instead, so they run without statement_timeout or lock_timeout, while a
watcher reports their phase and whom they wait for. Catalog-only changes (promote, rename, drop
a constraint or an index) take ACCESS EXCLUSIVE briefly, under with_lock_retries: never a
concurrent drop, whose long invalid-but-maintained window fails racing upserts.
"""

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from sqlalchemy import Connection, text

from alembic_lossless_unique.ddl.sqltext import ident, idents, literal, qualified
from alembic_lossless_unique.operations.target import UniqueTarget
from alembic_lossless_unique.runtime import session
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.errors import MigrationAbort
from alembic_lossless_unique.runtime.locks import describe_backend, with_table_lock_retries

log = logging.getLogger("alembic_lossless_unique")


def unique_index_definition(target: UniqueTarget, name: str) -> str:
    """The target's unique index as pg_get_indexdef() would print it (the index form: as the
    user wrote it, which PostgreSQL stores the same)."""
    if target.is_index:
        return target.index_statement(name, target.qualified_table)
    return (
        f"CREATE UNIQUE INDEX {ident(name)} ON {target.qualified_table}"
        f" USING btree ({idents(target.columns)}){target.index_options}"
    )


def _with_option(definition: str, option: str) -> str:
    """pg_get_indexdef() text with `option` written after CREATE [UNIQUE] INDEX."""
    for prefix in ("CREATE UNIQUE INDEX ", "CREATE INDEX "):
        if definition.startswith(prefix):
            return f"{prefix}{option} {definition[len(prefix) :]}"
    raise MigrationAbort(f"cannot rebuild an index from an unexpected definition: {definition}")


def concurrently(definition: str) -> str:
    """pg_get_indexdef() text -> the same index, built without blocking writes."""
    return _with_option(definition, "CONCURRENTLY")


def if_not_exists(definition: str) -> str:
    """pg_get_indexdef() text -> the same index, built unless one of that name exists."""
    return _with_option(definition, "IF NOT EXISTS")


def renamed(definition: str, old: str, new: str) -> str:
    """The same index definition under another name."""
    for prefix in ("CREATE UNIQUE INDEX ", "CREATE INDEX "):
        head = prefix + ident(old) + " ON "
        if definition.startswith(head):
            return prefix + ident(new) + " ON " + definition[len(head) :]
    raise MigrationAbort(f"cannot rename an index in an unexpected definition: {definition}")


def index_is_valid(db: Database, target: UniqueTarget, name: str) -> bool | None:
    """True/False for an index of that name on the table; None when there is none."""
    return cast(
        "bool | None",
        db.scalar(
            "SELECT i.indisvalid AND i.indisready FROM pg_catalog.pg_index i"
            " JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = pg_catalog.to_regclass(:table) AND c.relname = :name",
            {"table": target.qualified_table, "name": name},
        ),
    )


def constraint_exists(db: Database, target: UniqueTarget, name: str) -> bool:
    return bool(
        db.scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint"
            " WHERE conrelid = pg_catalog.to_regclass(:table) AND conname = :name)",
            {"table": target.qualified_table, "name": name},
        )
    )


@contextmanager
def without_timeouts(db: Database) -> Iterator[None]:
    with db.session_setting("statement_timeout", "0"), db.session_setting("lock_timeout", "0"):
        yield


def create_index_concurrently(
    db: Database, target: UniqueTarget, name: str, definition: str
) -> None:
    """Make sure a valid index `name` exists, building it concurrently if needed.

    A failed or killed concurrent build leaves an INVALID index behind that IF NOT EXISTS would
    silently keep, so an invalid one is dropped and built again.
    """
    valid = index_is_valid(db, target, name)
    if valid:
        return
    if valid is False:
        log.info("dropping INVALID index %s left by an interrupted build", name)
        drop_index(db, target, name)
    statement = concurrently(definition) if db.concurrent else definition
    with without_timeouts(db), watching(db, f"building {name}"):
        db.execute(statement)


def drop_index(db: Database, target: UniqueTarget, name: str) -> None:
    """DROP INDEX, not CONCURRENTLY: a catalog change under the lock timeout with retries, over
    in milliseconds once it has the lock. A concurrent drop first marks the index invalid and
    goes on maintaining it until it ends (as long as the oldest transaction on the table lasts),
    and in that window PostgreSQL (18 and older) fails ON CONFLICT upserts that race on a key
    another unique covers with unique_violation (and some with deadlocks)."""
    under_lock_retries(
        db, target, f"drop index {name}", f"DROP INDEX IF EXISTS {qualified(target.schema, name)}"
    )


def rebuild_in_transaction(db: Database, target: UniqueTarget) -> bool:
    """The downgrade_rebuild setting, decided for this table: whether the downgrade builds the
    uniques it puts back inside its own transaction (no upsert fails; the table's queries wait
    for the build) rather than concurrently (nothing waits; PostgreSQL fails some upserts that
    race on the key meanwhile). `auto`: inside the transaction while the table's heap is at
    most downgrade_rebuild_limit."""
    choice = db.settings.downgrade_rebuild
    if choice != "auto":
        return choice == "in_transaction"
    return bool(
        db.scalar(
            # A partitioned table's heap is its partitions' (a plain table has no tree).
            "SELECT coalesce((SELECT sum(pg_catalog.pg_relation_size(t.relid))"
            " FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass(:table)) AS t),"
            " pg_catalog.pg_relation_size(pg_catalog.to_regclass(:table)))"
            " <= pg_catalog.pg_size_bytes(:limit)",
            {"table": target.qualified_table, "limit": db.settings.downgrade_rebuild_limit},
        )
    )


def set_index_comment_sql(target: UniqueTarget, name: str, comment: str | None) -> str:
    value = "NULL" if comment is None else literal(comment)
    return f"COMMENT ON INDEX {qualified(target.schema, name)} IS {value}"


def promote_sql(target: UniqueTarget, index_name: str) -> str:
    """ADD CONSTRAINT ... UNIQUE USING INDEX: a catalog change, no scan; renames the index.
    The index carries INCLUDE and NULLS NOT DISTINCT; the constraint its deferral."""
    return (
        f"ALTER TABLE {target.qualified_table} ADD CONSTRAINT {ident(target.constraint_name)}"
        f" UNIQUE USING INDEX {ident(index_name)}{target.deferral}"
    )


def add_constraint_using_index_sql(
    target: UniqueTarget, constraint: str, index: str, deferral: str = ""
) -> str:
    """A unique put back as it was: `deferral` its DEFERRABLE clause, as the plan read it."""
    return (
        f"ALTER TABLE {target.qualified_table} ADD CONSTRAINT {ident(constraint)}"
        f" UNIQUE USING INDEX {ident(index)}{deferral}"
    )


def drop_target_sql(target: UniqueTarget) -> str:
    """What the upgrade built, dropped: the constraint, or the index form's index."""
    if target.is_index:
        return f"DROP INDEX IF EXISTS {qualified(target.schema, target.constraint_name)}"
    return drop_constraint_sql(target, target.constraint_name)


def drop_constraint_sql(target: UniqueTarget, name: str) -> str:
    return f"ALTER TABLE {target.qualified_table} DROP CONSTRAINT IF EXISTS {ident(name)}"


def rename_constraint_sql(target: UniqueTarget, old: str, new: str) -> str:
    return f"ALTER TABLE {target.qualified_table} RENAME CONSTRAINT {ident(old)} TO {ident(new)}"


def rename_index_sql(target: UniqueTarget, old: str, new: str) -> str:
    return f"ALTER INDEX {qualified(target.schema, old)} RENAME TO {ident(new)}"


def under_lock_retries(db: Database, target: UniqueTarget, purpose: str, *statements: str) -> None:
    """Catalog changes that take ACCESS EXCLUSIVE: one short transaction, retried on timeout."""

    def run() -> None:
        for statement in statements:
            db.execute(statement)

    with_table_lock_retries(db, target, purpose, run)


# Progress of a long step, from a second connection: the build's phase, and whom it waits for.


@contextmanager
def watching(db: Database, doing: str) -> Iterator[None]:
    """Every progress_interval, log what the migrator's backend is doing and who blocks it."""
    if not db.concurrent:
        yield
        return
    backend_pid = db.scalar("SELECT pg_catalog.pg_backend_pid()")
    on_side_connection = session.side_connections(db.connection)
    stop = threading.Event()

    def watch(watcher: Connection) -> None:
        watcher.execution_options(isolation_level="AUTOCOMMIT")
        while not stop.wait(db.settings.progress_interval):
            log.info("%s: %s", doing, progress_line(watcher, backend_pid))

    def report() -> None:
        try:
            on_side_connection(watch)
        except Exception as error:  # progress is a courtesy: never let it break the step
            log.debug("progress unavailable: %s", error)

    watcher_thread = threading.Thread(target=report, name="progress-watcher", daemon=True)
    watcher_thread.start()
    try:
        yield
    finally:
        stop.set()
        watcher_thread.join(timeout=1)  # a watcher still waiting for a connection is let go


def progress_line(watcher: Connection, backend_pid: int) -> str:
    build = watcher.execute(_BUILD_PROGRESS, {"pid": backend_pid}).first()
    parts = []
    if build is not None:  # blocks and tuples counted belong to the scanning phases only
        scanning = build.phase.startswith(("building", "index validation"))
        parts.append(build.phase + (build.done if scanning else ""))
    waiting_for = [
        describe_backend(row) for row in watcher.execute(_BLOCKERS, {"pid": backend_pid})
    ]
    if build is not None and build.current_locker_pid:
        locker = watcher.execute(_BACKEND, {"pid": build.current_locker_pid}).first()
        if locker is not None:
            waiting_for.append(describe_backend(locker))
    if waiting_for:
        parts.append("waiting for " + "; ".join(dict.fromkeys(waiting_for)))
    return ", ".join(parts) or "running"


_BUILD_PROGRESS = text(
    "SELECT phase, current_locker_pid, CASE WHEN blocks_total > 0"
    " THEN pg_catalog.format(' (%s%% of blocks)',"
    " pg_catalog.round(100.0 * blocks_done / blocks_total))"
    " WHEN tuples_total > 0"
    " THEN pg_catalog.format(' (%s%% of tuples)',"
    " pg_catalog.round(100.0 * tuples_done / tuples_total))"
    " ELSE '' END AS done"
    " FROM pg_catalog.pg_stat_progress_create_index WHERE pid = :pid"
)

_BACKEND_COLUMNS = (
    "SELECT a.pid, a.state, coalesce(a.application_name, '') AS application_name,"
    " pg_catalog.round(extract(epoch FROM pg_catalog.now() - a.xact_start)) AS seconds,"
    " pg_catalog.left(pg_catalog.regexp_replace(a.query, '\\s+', ' ', 'g'), 80) AS query"
    " FROM pg_catalog.pg_stat_activity a"
)
_BLOCKERS = text(
    _BACKEND_COLUMNS + " WHERE a.pid = ANY (pg_catalog.pg_blocking_pids(:pid)) ORDER BY a.pid"
)
_BACKEND = text(_BACKEND_COLUMNS + " WHERE a.pid = :pid")
