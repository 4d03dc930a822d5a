"""Duplicate keyed rows are moved aside, never destroyed, and can be moved back.

Per (workspace_id, phone_number_id) the kept row is the newest: greatest updated_at, then
greatest last_synced_at (NULL counts as oldest), then greatest id. The id breaks ties instead of
the reference's ctid because it is stable across dumps, restores and replicas.
Rows whose phone_number_id is NULL never conflict on the unique and are never touched.
"""

from dataclasses import dataclass

from alembic_lossless_unique.catalog import existing_roles, relation_exists, table_columns
from alembic_lossless_unique.database import Database
from alembic_lossless_unique.names import (
    API_ROLES,
    ARCHIVE,
    ROWS_TO_ARCHIVE,
    TABLE,
)

ARCHIVE_REASON = "duplicate (workspace_id, phone_number_id): a newer row was kept"


@dataclass(frozen=True)
class ArchiveResult:
    duplicate_groups: int
    rows_archived: int


# The live table's columns plus which row was kept, when and why. No primary key: the archive
# is append-only and keeps every row version it is given, and indexing random uuids would add
# a fifth to the dedupe's time.
CREATE_ARCHIVE_SQL = f"""CREATE TABLE IF NOT EXISTS {ARCHIVE} (
    LIKE {TABLE},
    kept_id uuid NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    archived_reason text NOT NULL
)"""


def create_archive(db: Database) -> None:
    db.execute(CREATE_ARCHIVE_SQL)
    # Defence in depth beside the private schema: no API role may read what was removed.
    db.execute(f"ALTER TABLE {ARCHIVE} ENABLE ROW LEVEL SECURITY")
    db.execute(f"REVOKE ALL ON TABLE {ARCHIVE} FROM PUBLIC")
    for role in existing_roles(db, API_ROLES):
        db.execute(f"REVOKE ALL ON TABLE {ARCHIVE} FROM {db.quote(role)}")


def archive_duplicates(db: Database) -> ArchiveResult:
    """Two statements in one transaction. The first lists the rows to archive: a parallel hash
    semi-join of the table with itself finds the rows that share their pair with another row, and
    only those are ranked. Parallel workers never run a statement that writes rows, so the list
    goes into a work table (CREATE TABLE AS may use them). The second deletes the listed rows and
    inserts them into the archive."""
    columns = [db.quote(column) for column in table_columns(db)]
    column_list = ", ".join(columns)
    removed_columns = ", ".join(f"c.{column}" for column in columns)
    with db.transaction():
        raise_work_mem(db)
        db.execute(f"DROP TABLE IF EXISTS {ROWS_TO_ARCHIVE}")
        db.execute(list_rows_to_archive_sql())
        row = db.execute(
            move_listed_rows_sql(column_list, removed_columns, reason=":reason")
            + " SELECT count(DISTINCT kept_id) AS groups, count(*) AS rows FROM archived",
            {"reason": ARCHIVE_REASON},
        ).one()
        db.execute(f"DROP TABLE {ROWS_TO_ARCHIVE}")
    return ArchiveResult(duplicate_groups=row.groups, rows_archived=row.rows)


def list_rows_to_archive_sql() -> str:
    """Every row but the newest of each duplicate pair, with the id of the row that stays.
    Unlogged: it lives for one transaction and is never worth a WAL record. Stored in ctid
    order, so that the move reads and dirties each heap page once, whichever side of its join
    the planner hashes; in the order of the pairs it re-read pages at random, a third of the
    dedupe's time on a table larger than shared_buffers."""
    return f"""
            CREATE UNLOGGED TABLE {ROWS_TO_ARCHIVE} AS
            WITH in_duplicate_pairs AS (
                SELECT c.ctid AS row_ctid, c.id, c.workspace_id, c.phone_number_id,
                       c.updated_at, c.last_synced_at
                  FROM {TABLE} c
                 WHERE c.phone_number_id IS NOT NULL
                   AND EXISTS (SELECT 1 FROM {TABLE} other
                                WHERE other.phone_number_id IS NOT NULL
                                  AND other.workspace_id = c.workspace_id
                                  AND other.phone_number_id = c.phone_number_id
                                  AND other.ctid <> c.ctid)
            ), ranked AS (
                SELECT row_ctid, id, updated_at, last_synced_at,
                       row_number() OVER newest_first AS position,
                       first_value(id) OVER newest_first AS kept_id
                  FROM in_duplicate_pairs
                WINDOW newest_first AS (
                    PARTITION BY workspace_id, phone_number_id
                    ORDER BY updated_at DESC, last_synced_at DESC NULLS LAST, id DESC)
            )
            SELECT row_ctid, id, updated_at, last_synced_at, kept_id
              FROM ranked
             WHERE position > 1
             ORDER BY row_ctid
    """


def move_listed_rows_sql(column_list: str, removed_columns: str, reason: str) -> str:
    """The statement's CTEs, ending in `archived` (one kept_id per archived row). Shared with
    the offline script, which fills the column lists and the reason in with format().

    Each listed row is found by its ctid (a direct heap fetch, no primary-key lookup), in ctid
    order so the deletes walk the heap forward instead of jumping to a random page per row. The
    `ctid = ANY (ARRAY(...))` condition is what gets a TID scan: with the join alone, the planner
    judged the list large enough to hash-join a scan of the whole table. The id and the ranking
    columns are checked again, so a row updated since it was listed is left alone (a later
    unique build failure retries the dedupe)."""
    return f"""
            WITH removed AS (
                DELETE FROM {TABLE} c
                 USING {ROWS_TO_ARCHIVE} r
                 WHERE c.ctid = ANY (ARRAY(SELECT row_ctid FROM {ROWS_TO_ARCHIVE}))
                   AND c.ctid = r.row_ctid
                   AND c.id = r.id
                   AND c.updated_at = r.updated_at
                   AND c.last_synced_at IS NOT DISTINCT FROM r.last_synced_at
                RETURNING {removed_columns}, r.kept_id
            ), archived AS (
                INSERT INTO {ARCHIVE} ({column_list}, kept_id, archived_reason)
                SELECT {column_list}, kept_id, {reason} FROM removed
                RETURNING kept_id
            )
    """


def raise_work_mem(db: Database) -> None:
    """For this transaction only, and never lower than what the DBA configured."""
    db.execute(
        "SELECT set_config('work_mem', :work_mem, true)"
        " WHERE pg_size_bytes(current_setting('work_mem')) < pg_size_bytes(:work_mem)",
        {"work_mem": db.settings.dedupe_work_mem},
    )


def archived_row_count(db: Database) -> int:
    if not relation_exists(db, ARCHIVE):
        return 0
    return db.scalar(f"SELECT count(*) FROM {ARCHIVE}")


def restore_archived_rows(db: Database) -> int:
    """Move every archived row back, unchanged, in one transaction."""
    if not relation_exists(db, ARCHIVE):
        return 0
    column_list = ", ".join(db.quote(column) for column in table_columns(db))
    with db.transaction():
        restored = db.scalar(
            f"""
            WITH moved AS (DELETE FROM {ARCHIVE} RETURNING {column_list})
            , restored AS (INSERT INTO {TABLE} ({column_list})
                           SELECT {column_list} FROM moved RETURNING 1)
            SELECT count(*) FROM restored
            """
        )
    return restored


def drop_archive(db: Database) -> None:
    db.execute(f"DROP TABLE IF EXISTS {ARCHIVE}")
